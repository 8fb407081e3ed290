"""Headless Chromium for tests: open a page, collect console errors, the rendered text and whether images loaded.

Talks to Debian's ``/usr/bin/chromium`` over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages separated by NUL bytes, read by the browser on fd 3 and written on fd 4), so it needs nothing beyond the
standard library: no websocket client, no driver, no download.

``render_in_chromium(path)`` loads a local HTML file, waits until every frame has finished loading and the DOM has
settled, and returns a :class:`RenderResult` with the console errors (``console.error``/``assert`` calls, uncaught
exceptions, and browser log entries of level error such as failed resource loads), the main frame's text and HTML,
and one :class:`View` snapshot (text, images, tables of every frame, iframes included) per step. A step is a
JavaScript expression evaluated in the page (e.g. a click), after which the page is allowed to settle again.
``render_snakemake_report(path)`` uses this to open every result of a ``snakemake --report`` page through the
report's own result buttons, one view per result.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--hide-scrollbars",
    "--window-size=1280,1024",
    "--remote-debugging-pipe",
)

# evaluated in an isolated world of every frame: sees the DOM, not the page's scripts
SNAPSHOT_JS = """(() => {
  const cut = (s) => (s.length > 120 ? s.slice(0, 120) + "..." : s);
  return {
    url: cut(location.href),
    ready: document.readyState,
    text: document.body ? document.body.innerText : "",
    iframes: document.querySelectorAll("iframe, frame").length,
    tables: document.querySelectorAll("table").length,
    bold: [...document.querySelectorAll("strong, b")].map((el) => el.textContent.trim()),
    images: [...document.images].map((img) => ({
      src: cut(img.currentSrc || img.src || ""),
      complete: img.complete,
      width: img.naturalWidth,
      height: img.naturalHeight,
    })),
  };
})()"""


def chromium_available() -> bool:
    return Path(CHROMIUM).exists()


@dataclass(frozen=True)
class ImageInfo:
    frame_url: str
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
    step_result: Any
    text: str
    images: tuple[ImageInfo, ...]
    tables: int
    bold_texts: tuple[str, ...]
    frame_urls: tuple[str, ...]


@dataclass
class RenderResult:
    console_errors: list[str]
    dom_text: str  # main frame's body text once loaded
    dom_html: str  # main frame's rendered DOM (outerHTML) once loaded
    views: list[View] = field(default_factory=list)
    stderr: str = ""  # the browser's own stderr, for diagnosing a failed start

    def broken_images(self) -> list[tuple[str, ImageInfo]]:
        """Every image, in any view, that did not load (naturalWidth 0 or not complete)."""
        return [(view.label, img) for view in self.views for img in view.images if not img.loaded]


class ChromiumError(RuntimeError):
    pass


class _Browser:
    """One Chromium process driven over --remote-debugging-pipe."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self.stderr_file = tempfile.TemporaryFile()
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the child's ends go to fds >= 10 first, so bash (dash allows only fds 0-9) can move them onto 3 and 4
        child_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
        child_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)
        script = f'exec "$0" "$@" 3<&{child_r} 4>&{child_w} {child_r}<&- {child_w}>&-'
        argv = ["/bin/bash", "-c", script, CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"]
        try:
            self.proc = subprocess.Popen(
                argv,
                pass_fds=(child_r, child_w),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self.stderr_file,
                start_new_session=True,  # its own process group: the renderers can be ended with it
            )
        finally:
            os.close(child_r)
            os.close(child_w)
        self.messages: queue.Queue = queue.Queue()
        self._next_id = 0
        self.events: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self.messages.put(None)
                return
            buffer += chunk
            *complete, buffer = buffer.split(b"\0")
            for raw in complete:
                if raw:
                    self.messages.put(json.loads(raw))

    def stderr(self) -> str:
        self.stderr_file.seek(0)
        return self.stderr_file.read().decode("utf-8", "replace")[-4000:]

    def _next_message(self, deadline: float) -> dict:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("chromium did not answer in time")
        try:
            message = self.messages.get(timeout=remaining)
        except queue.Empty:
            raise TimeoutError("chromium did not answer in time") from None
        if message is None:
            raise ChromiumError(f"chromium closed the DevTools pipe; its stderr:\n{self.stderr()}")
        return message

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._next_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise ChromiumError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def pump(self, seconds: float) -> None:
        """Collect events for ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                self.events.append(self._next_message(deadline))
            except TimeoutError:
                return

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.send("Browser.close", timeout=5)
                except (ChromiumError, TimeoutError, OSError):
                    pass
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=10)
        finally:
            for fd in (self._to_browser, self._from_browser):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.stderr_file.close()
            shutil.rmtree(self.profile, ignore_errors=True)


def _console_error(event: dict) -> str | None:
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        args = [a.get("value", a.get("description", "")) for a in params.get("args", [])]
        return "console." + params["type"] + ": " + " ".join(str(a) for a in args)
    if method == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails", {})
        exception = details.get("exception", {})
        return "uncaught: " + str(exception.get("description") or details.get("text"))
    if method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
        entry = params["entry"]
        return f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip()
    return None


class _Page:
    def __init__(self, browser: _Browser):
        self.browser = browser
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.sessions = [self.session]
        self._worlds: dict[tuple[str, str], int] = {}
        self._seen_events = 0
        for method in ("Page.enable", "Runtime.enable", "Log.enable"):
            self.send(method)
        # out-of-process iframes get their own sessions; watch their consoles as well
        self.send("Target.setAutoAttach", {"autoAttach": True, "waitForDebuggerOnStart": False, "flatten": True})

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        result = self.browser.send(method, params, session or self.session)
        self._drain()
        return result

    def _drain(self) -> None:
        for event in self.browser.events[self._seen_events:]:
            if event.get("method") == "Target.attachedToTarget":
                child = event["params"]["sessionId"]
                self.sessions.append(child)
                for method in ("Runtime.enable", "Log.enable", "Runtime.runIfWaitingForDebugger"):
                    try:
                        self.browser.send(method, session=child)
                    except ChromiumError:
                        pass
        self._seen_events = len(self.browser.events)

    def console_errors(self) -> list[str]:
        errors = []
        for event in self.browser.events:
            if event.get("sessionId") in self.sessions and (text := _console_error(event)):
                errors.append(text)
        return errors

    def wait_for_event(self, method: str, deadline: float) -> None:
        start = len(self.browser.events)
        while not any(e.get("method") == method for e in self.browser.events[start:]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} before the deadline")
            self.browser.pump(0.05)
        self._drain()

    def evaluate(self, expression: str, context_id: int | None = None) -> Any:
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        if context_id is not None:
            params["contextId"] = context_id
        result = self.send("Runtime.evaluate", params)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise ChromiumError(f"script failed: {details.get('exception', {}).get('description') or details}")
        return result.get("result", {}).get("value")

    def _frames(self) -> list[tuple[dict, int]]:
        """(frame, number of child frames) for every frame of the page's tree."""
        out = []

        def walk(node: dict) -> None:
            children = node.get("childFrames", [])
            out.append((node["frame"], len(children)))
            for child in children:
                walk(child)

        walk(self.send("Page.getFrameTree")["frameTree"])
        return out

    def _snapshot_frame(self, frame: dict) -> dict | None:
        key = (frame["id"], frame.get("loaderId", ""))
        for _ in range(2):
            if key not in self._worlds:
                try:
                    world = self.send("Page.createIsolatedWorld", {"frameId": frame["id"], "worldName": "render-check"})
                except ChromiumError:
                    return None
                self._worlds[key] = world["executionContextId"]
            try:
                return self.evaluate(SNAPSHOT_JS, self._worlds[key])
            except ChromiumError:
                del self._worlds[key]  # the frame navigated away: make a new world
        return None

    def snapshot(self) -> tuple[list[dict], bool]:
        """Snapshots of all frames, and whether the page looks settled (all loaded, every iframe has a frame)."""
        snaps, settled = [], True
        for frame, children in self._frames():
            snap = self._snapshot_frame(frame)
            if snap is None:
                settled = False
                continue
            snaps.append(snap)
            settled &= snap["ready"] == "complete"
            settled &= snap["iframes"] <= children
            settled &= all(img["complete"] for img in snap["images"])
        return snaps, settled

    def settle(self, deadline: float, quiet: float = 0.3) -> list[dict]:
        """Poll until the page is settled and unchanged for ``quiet`` seconds."""
        last, since = None, time.monotonic()
        while True:
            snaps, settled = self.snapshot()
            signature = json.dumps(snaps, sort_keys=True)
            now = time.monotonic()
            if signature != last or not settled:
                last, since = signature, now
            elif now - since >= quiet:
                return snaps
            if now > deadline:
                raise TimeoutError(f"the page did not settle; last state: {signature[:2000]}")
            self.browser.pump(0.05)
            self._drain()


def _view(label: str, step_result: Any, snaps: list[dict]) -> View:
    images = tuple(
        ImageInfo(s["url"], img["src"], img["complete"], img["width"], img["height"])
        for s in snaps for img in s["images"]
    )
    return View(
        label=label,
        step_result=step_result,
        text="\n".join(s["text"] for s in snaps),
        images=images,
        tables=sum(s["tables"] for s in snaps),
        bold_texts=tuple(b for s in snaps for b in s["bold"]),
        frame_urls=tuple(s["url"] for s in snaps),
    )


def render_in_chromium(
    html_path: str | os.PathLike,
    steps: Sequence[tuple[str, str]] = (),
    ready: str = "true",
    timeout: float = 90.0,
) -> RenderResult:
    """Open ``html_path`` in headless Chromium; run each (label, JavaScript) step and snapshot the page after it.

    ``ready`` is a JavaScript expression polled (in the page) after the load event until it is truthy, for pages
    that build their content with scripts. The first view, labelled "loaded", is the page before any step.
    Raises ChromiumError/TimeoutError when the browser fails or the page never settles.
    """
    deadline = time.monotonic() + timeout
    browser = _Browser(timeout=timeout)
    try:
        page = _Page(browser)
        page.send("Page.navigate", {"url": Path(html_path).resolve().as_uri()})
        page.wait_for_event("Page.loadEventFired", deadline)
        while not page.evaluate(f"Boolean({ready})"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{html_path}: {ready!r} never became true")
            browser.pump(0.1)
        snaps = page.settle(deadline)
        dom_html = page.evaluate("document.documentElement.outerHTML")
        views = [_view("loaded", None, snaps)]
        for label, script in steps:
            value = page.evaluate(script)
            views.append(_view(label, value, page.settle(deadline)))
        browser.pump(0.2)  # late console messages
        page._drain()
        return RenderResult(
            console_errors=page.console_errors(),
            dom_text=snaps[0]["text"] if snaps else "",
            dom_html=dom_html,
            views=views,
            stderr=browser.stderr(),
        )
    except (ChromiumError, TimeoutError) as err:
        raise type(err)(f"{err}\nchromium stderr:\n{browser.stderr()}") from None
    finally:
        browser.close()


# the report's own result button logic (Snakemake 9 html_reporter): returns the button element of a result; its
# onClick shows the result (images inline, HTML in an iframe); results without a viewer are download links.
_SHOW_RESULT_JS = """(() => {
  const path = %s;
  const button = new ButtonViewManager(app).handleSelectedResult(path);
  if (button && button.props && typeof button.props.onClick === "function") {
    button.props.onClick();
    return "shown";
  }
  return "download";
})()"""


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
    return render_in_chromium(report_html, steps, ready="document.querySelector('#app') && "
                              "document.querySelector('#app').childElementCount > 0", timeout=timeout)
