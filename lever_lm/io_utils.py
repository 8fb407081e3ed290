"""Atomic artifact writes: every file is written to a temp file in the same folder, then renamed."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path next to ``path``; rename it onto ``path`` only if the block succeeds.

    Temp files of the same target left by a killed writer (``.<name>.XXXXXXXX.tmp<suffix>``) are removed first:
    each artifact has a single writer (one Snakemake job), so such a file can only be a leftover."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(target, suffix)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes the file owner-only; give it the mode a plain open() would (collaborators read results)
        os.chmod(tmp, 0o666 & ~_current_umask())
        _fsync_file(tmp)  # the bytes reach the disk before the name does: a crashed node never shows a torn file
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder next to ``path``; it replaces ``path`` (a folder, or nothing) only if the block
    succeeds. Staging folders of the same target left by a killed writer are removed first."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(target, "", folders=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
        staging.chmod(0o777 & ~_current_umask())  # mkdtemp makes it owner-only
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _remove_leftovers(target: Path, suffix: str, folders: bool = False) -> None:
    import re

    # mkstemp's/mkdtemp's names: prefix, 8 characters of [a-z0-9_], suffix
    pattern = re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}\.tmp{re.escape(suffix)}")
    for entry in os.scandir(target.parent):
        if not (entry.name.startswith(f".{target.name}.") and pattern.fullmatch(entry.name)):
            continue
        with contextlib.suppress(FileNotFoundError):
            if folders and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            elif not folders and entry.is_file():
                os.unlink(entry.path)


def _fsync_file(path: Path) -> None:
    if path.is_file():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@functools.lru_cache(maxsize=1)
def _current_umask() -> int:
    """Read once: os.umask can only be read by setting it, which is process-wide."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in blocks (checkpoints can be large)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# Files larger than this are fingerprinted by (size, mtime) instead of their bytes: hashing a 3B model's weights
# in every resumable job would cost more than it protects (they are read-only inputs, replaced, never edited).
FINGERPRINT_HASH_LIMIT = 256 << 20


def json_sha256(obj: Any) -> str:
    """Hex sha256 of ``obj``'s canonical json (sorted keys, compact; unknown types as ``str``): a fingerprint of
    what decides a job's results."""
    import hashlib

    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def path_fingerprint(path: str | os.PathLike, hash_limit: int = FINGERPRINT_HASH_LIMIT) -> str:
    """sha256 of a file's bytes, or of a directory's files (relative names and bytes, in sorted order); a file
    over ``hash_limit`` bytes enters by size and mtime. What resume files are keyed on."""
    import hashlib

    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root}: input not found")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(root) if file != root else ''}\0".encode())
        if stat.st_size > hash_limit:
            digest.update(f"size={stat.st_size} mtime_ns={stat.st_mtime_ns}".encode())
        else:
            digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def inputs_fingerprint(inputs: Any) -> dict[str, Any]:
    """``{name: path_fingerprint}`` of named inputs (a mapping of names to a path or a list of paths); None stays
    None. Keyed by role, not path, so the same bytes give the same fingerprint in any working directory."""
    out: dict[str, Any] = {}
    for name in sorted(inputs):
        value = inputs[name]
        if value is None:
            out[name] = None
        elif isinstance(value, (str, os.PathLike)):
            out[name] = path_fingerprint(value)
        else:
            out[name] = [path_fingerprint(item) for item in value]
    return out


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike) -> Any:
    """Read a json file; a malformed file raises ValueError naming the file and position."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as err:
        from lever_lm.errors import InputError

        # some messages end in "at" already ("Unterminated string starting at")
        where = f"line {err.lineno}, column {err.colno}"
        detail = f"{err.msg} {where}" if err.msg.endswith(" at") else f"{err.msg} at {where}"
        raise InputError(f"{path}: malformed json ({detail})") from None
    except UnicodeDecodeError as err:
        from lever_lm.errors import InputError

        raise InputError(f"{path}: not UTF-8 text, so not a json file (byte {err.start})") from None


def save_npy(path: str | os.PathLike, array: Any) -> None:
    import numpy as np

    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, np.asarray(array), allow_pickle=False)


def write_parquet(path: str | os.PathLike, frame: Any) -> None:
    with atomic_path(path, suffix=".parquet") as tmp:
        frame.to_parquet(tmp, index=False)


def append_jsonl(handle: Any, record: Any) -> None:
    """Append one record as a line, then flush and fsync so a killed job loses at most this line."""
    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def cut_torn_tail(path: str | os.PathLike) -> None:
    """Drop a partial last line (a killed writer) so that the next append starts on a fresh line."""
    with open(path, "r+b") as fh:
        data = fh.read()
        keep = data.rfind(b"\n") + 1
        if keep != len(data):
            fh.truncate(keep)


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """Read complete json lines; a torn last line (a killed writer) is ignored, any other bad line raises."""
    records = []
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            is_torn_tail = lineno == len(lines)  # no trailing newline: the writer died mid-line
            if is_torn_tail:
                break
            raise ValueError(f"{path}:{lineno}: malformed json line") from None
    return records
