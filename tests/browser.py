"""Headless Chromium for tests, through Selenium: open a page, collect console errors, text and image states.

Selenium drives Debian's ``/usr/bin/chromium`` through Debian's ``/usr/bin/chromedriver``, both given explicitly,
so Selenium Manager never runs (nothing is downloaded). ``browser_missing()`` says why the browser test cannot run
here (``None`` when it can), for a clear skip.

``render_in_chromium(path, steps)`` loads a local HTML file, waits until the page and all its frames are loaded and
unchanged, and returns a :class:`RenderResult`: the console errors (the browser log's SEVERE entries, read with
``driver.get_log("browser")``: ``console.error``, uncaught exceptions, failed resource loads), the main frame's
text, and one :class:`View` (text, images, tables, bold texts of every frame, iframes included) per step. A step is
JavaScript run in the page (e.g. a click), after which the page settles again. ``render_snakemake_report(path)``
shows every result of a ``snakemake --report`` page through the report's own result buttons, one view per result.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1024",
)

# one frame's state: what a view records, and whether it has finished loading
SNAPSHOT_JS = """return {
  ready: document.readyState,
  text: document.body ? document.body.innerText : "",
  tables: document.querySelectorAll("table").length,
  bold: [...document.querySelectorAll("strong, b")].map((el) => el.textContent.trim()),
  images: [...document.images].map((img) => [(img.currentSrc || img.src || "").slice(0, 200), img.complete,
                                              img.naturalWidth, img.naturalHeight]),
};"""


def browser_missing() -> str | None:
    """Why the browser test cannot run here, or None when it can."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            return f"{path} is absent (Debian package {package})"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the dev extra)"
    return None


@dataclass(frozen=True)
class ImageInfo:
    src: str
    complete: bool
    natural_width: int
    natural_height: int

    @property
    def loaded(self) -> bool:
        return self.complete and self.natural_width > 0 and self.natural_height > 0


@dataclass(frozen=True)
class View:
    """The page after one step: text, images, tables and bold texts of all its frames together."""

    label: str
    text: str
    images: tuple[ImageInfo, ...]
    tables: int
    bold_texts: tuple[str, ...]


@dataclass
class RenderResult:
    console_errors: list[str]
    dom_text: str  # main frame's body text once loaded
    views: list[View] = field(default_factory=list)

    def broken_images(self) -> list[tuple[str, ImageInfo]]:
        """Every image, in any view, that did not load (naturalWidth 0 or not complete)."""
        return [(view.label, img) for view in self.views for img in view.images if not img.loaded]


def _snapshot(driver) -> tuple[list[dict], bool]:
    """Snapshots of the current frame and, depth first, of its iframes; and whether all of them have loaded."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    snap = driver.execute_script(SNAPSHOT_JS)
    snaps, settled = [snap], snap["ready"] == "complete" and all(img[1] for img in snap["images"])
    for index in range(len(driver.find_elements(By.CSS_SELECTOR, "iframe, frame"))):
        try:
            driver.switch_to.frame(driver.find_elements(By.CSS_SELECTOR, "iframe, frame")[index])
        except (WebDriverException, IndexError):  # a frame that is gone or not there yet
            settled = False
            continue
        try:
            inner, inner_settled = _snapshot(driver)
            snaps, settled = snaps + inner, settled and inner_settled
        except WebDriverException:  # it navigated away meanwhile
            settled = False
        finally:
            driver.switch_to.parent_frame()
    return snaps, settled


def _settle(driver, deadline: float, quiet: float = 0.3) -> list[dict]:
    """Poll until every frame has loaded and nothing changed for ``quiet`` seconds."""
    last, since = None, time.monotonic()
    while True:
        snaps, settled = _snapshot(driver)
        signature, now = json.dumps(snaps, sort_keys=True), time.monotonic()
        if signature != last or not settled:
            last, since = signature, now
        elif now - since >= quiet:
            return snaps
        if now > deadline:
            raise TimeoutError(f"the page did not settle; last state: {signature[:2000]}")
        time.sleep(0.05)


def _view(label: str, snaps: list[dict]) -> View:
    return View(
        label=label,
        text="\n".join(s["text"] for s in snaps),
        images=tuple(ImageInfo(*img) for s in snaps for img in s["images"]),
        tables=sum(s["tables"] for s in snaps),
        bold_texts=tuple(b for s in snaps for b in s["bold"]),
    )


def render_in_chromium(
    html_path: str | os.PathLike, steps: Sequence[tuple[str, str]] = (), ready: str = "true", timeout: float = 90.0
) -> RenderResult:
    """Open ``html_path`` in headless Chromium; run each (label, JavaScript) step and snapshot the page after it.

    ``ready`` is a JavaScript expression polled after loading until it is truthy, for pages that build their content
    with scripts. The first view, labelled "loaded", is the page before any step. Raises TimeoutError when the page
    never settles, and Selenium's WebDriverException when the browser fails.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    deadline = time.monotonic() + timeout
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        try:
            driver.set_page_load_timeout(timeout)
            driver.set_script_timeout(timeout)
            driver.get(Path(html_path).resolve().as_uri())
            while not driver.execute_script(f"return Boolean({ready});"):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{html_path}: {ready!r} never became true")
                time.sleep(0.1)
            snaps = _settle(driver, deadline)
            views = [_view("loaded", snaps)]
            for label, script in steps:
                driver.execute_script(script)
                views.append(_view(label, _settle(driver, deadline)))
            time.sleep(0.2)  # late console messages
            errors = [
                f"{entry['source']}: {entry['message']}"
                for entry in driver.get_log("browser")
                if entry["level"] == "SEVERE"
            ]
            return RenderResult(console_errors=errors, dom_text=snaps[0]["text"], views=views)
        finally:
            driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


# the report's own result button logic (Snakemake 9 html_reporter): returns the button element of a result; its
# onClick shows the result (images inline, HTML in an iframe); results without a viewer are download links.
_SHOW_RESULT_JS = """const button = new ButtonViewManager(app).handleSelectedResult(%s);
if (button && button.props && typeof button.props.onClick === "function") {
  button.props.onClick();
  return "shown";
}
return "download";"""


def render_snakemake_report(report_html: str | os.PathLike, timeout: float = 120.0) -> RenderResult:
    """Open a ``snakemake --report`` page and show each of its results, as the result's eye button does.

    Views are labelled with the result's file name; results the report only offers as downloads (e.g. .md,
    .csv) get no view. The first view ("loaded") is the report's start page.
    """
    # the result list is embedded in the page as `var results = {...};`; read it from the file
    text = Path(report_html).read_text(encoding="utf-8")
    marker = "var results = "
    start = text.index(marker, text.index('<script id="results">')) + len(marker)
    results, _ = json.JSONDecoder().raw_decode(text, start)
    viewable = {"image/png", "image/jpeg", "image/svg+xml", "text/html", "application/pdf"}
    steps = [
        (entry["name"], _SHOW_RESULT_JS % json.dumps(path))
        for path, entry in results.items()
        if entry.get("mime_type") in viewable
    ]
    # ready once React has rendered the app into #app
    return render_in_chromium(
        report_html,
        steps,
        ready="document.querySelector('#app') && document.querySelector('#app').childElementCount > 0",
        timeout=timeout,
    )
