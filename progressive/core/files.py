"""Files on disk: atomic writes, fsync, sizes, and the one-line reason of an exception.

Every write that matters goes to a temporary sibling first and is renamed over its target, so
a crash leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from progressive.core.errors import UserError


def temporary_path(path: str | os.PathLike) -> Path:
    """A hidden sibling name, unique to this process, to write to before renaming over `path`.

    The suffix is kept, so libraries that pick a format from the extension still can."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def check_suffix(path: str | os.PathLike, allowed: tuple[str, ...], option: str) -> Path:
    """`path` as a Path, or a one-line error naming `option` unless its extension is allowed."""
    path = Path(path)
    if path.suffix.lower() not in allowed:
        raise UserError(f"{option} {path}: unknown extension; use one of {', '.join(allowed)}")
    return path


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file, or a directory (its entries: a rename in it is then durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed over `path` (whose folder is
    created). With `durable` the file and the rename are fsynced, so they survive a power cut.
    On failure the temporary file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        if durable:
            fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        fsync_path(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str, durable: bool = False) -> None:
    """Write `text` to `path` atomically (see `atomic_write`)."""
    with atomic_write(path, durable) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON (indented, one trailing newline) to `path` atomically and durably."""
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n", durable=True)


def tree_size(path: str | os.PathLike) -> int:
    """Bytes in the file at `path`, or in the files under it."""
    path = Path(path)
    files = [path] if path.is_file() else (p for p in path.rglob("*") if p.is_file())
    return sum(p.stat().st_size for p in files)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def append_jsonl(path: str | os.PathLike, record: dict, durable: bool = False) -> None:
    """Append `record` as one JSON line to `path`; `durable` also syncs it to the disk."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        if durable:
            f.flush()
            os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON-lines file, oldest first; unreadable lines (a torn last line)
    skipped; no file, no records."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
