"""Text summaries of a dataset directory and of a checkpoint."""

from __future__ import annotations

from pathlib import Path


def dataset_summary(path: Path) -> str:
    """A human-readable summary of the dataset at `path`: images, resolutions, shards, source."""
    import json

    from progressive.dataset_format import FORMAT, REJECTED_NAME, read_meta

    path = Path(path)
    meta = read_meta(path)
    rows: list[tuple[str, str]] = [
        ("format", f"{FORMAT} version {meta['version']}"),
        ("images", f"{meta['count']:,}"),
        ("resolutions", ", ".join(str(r) for r in meta["resolutions"])),
        ("encoding", _ranges(meta["encoding"])),
        ("channels", str(meta["channels"])),
    ]
    shard_sizes = [_tree_size(path / s["path"]) for s in meta["shards"]]
    sizes = ", ".join(_size(n) for n in shard_sizes[:8]) + (", ..." if len(shard_sizes) > 8 else "")
    rows.append(("shards", f"{len(shard_sizes)} ({sizes})" if shard_sizes else "0"))
    rows.append(("on disk", _size(_tree_size(path))))
    source = meta.get("source")
    if isinstance(source, dict):
        kind = source.get("kind", "?")
        rest = {k: v for k, v in source.items() if k not in ("kind", "input")}
        text = f"{kind}, input {source.get('input', '?')}"
        text += "".join(f", {k} {v}" for k, v in rest.items())
        rows.append(("source", _short(text)))
    elif source is not None:
        rows.append(("source", _short(source)))
    if "split" in meta:
        rows.append(("split", _short(meta["split"])))
    rejected_file = path / REJECTED_NAME
    listed = None
    if rejected_file.exists():
        with open(rejected_file, errors="replace") as f:
            listed = sum(1 for line in f if line.strip())
    rejected = meta.get("rejected", listed)
    if isinstance(rejected, list):
        rejected = len(rejected)
    if rejected is not None:
        where = f" (listed in {REJECTED_NAME})" if listed else ""
        rows.append(("rejected", f"{rejected}{where}"))
    if "created" in meta:
        rows.append(("created", str(meta["created"])))
    shown = {"format", "version", "count", "max_res", "resolutions", "encoding", "channels",
             "shards", "source", "split", "rejected", "created"}
    for key, value in meta.items():  # whatever else the writer recorded (crop, resize, ...)
        if key not in shown:
            text = json.dumps(value) if isinstance(value, dict | list) else str(value)
            rows.append((key.replace("_", " "), _short(text)))
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"dataset {path}"] + [f"  {k:<{width}}  {v}" for k, v in rows])


def _ranges(encoding: dict[int, str]) -> str:
    """{4: raw, 8: raw, 16: png} -> "raw 4..8, png 16"."""
    groups: list[list] = []
    for res in sorted(encoding):
        if groups and groups[-1][0] == encoding[res]:
            groups[-1][2] = res
        else:
            groups.append([encoding[res], res, res])
    return ", ".join(f"{e} {a}" if a == b else f"{e} {a}..{b}" for e, a, b in groups)


def _tree_size(path: Path) -> int:
    """Bytes in the files under `path`."""
    files = [path] if path.is_file() else (p for p in path.rglob("*") if p.is_file())
    return sum(p.stat().st_size for p in files)


def _size(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def _short(value: object, limit: int = 200) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def checkpoint_summary(path: Path) -> str:
    """A human-readable summary of a run folder or snapshot."""
    raise NotImplementedError
