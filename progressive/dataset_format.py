"""The on-disk dataset format, shared by the writer (`dataset_writer`) and the reader (`data`).

A dataset is a directory holding `meta.json` (written last, atomically) and LMDB shards
`shard-NNNNN.lmdb/`. Keys are ASCII `"{res}/{index:08d}"` with the global image index; values
are PNG or JPEG bytes, or raw uint8 HWC pixels.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from progressive.errors import UserError

FORMAT = "progressive-lmdb"
VERSION = 1
META_NAME = "meta.json"
REJECTED_NAME = "rejected.jsonl"
ENCODINGS = ("raw", "png", "jpeg")


def shard_name(i: int) -> str:
    """Directory name of shard `i`."""
    return f"shard-{i:05d}.lmdb"


def image_key(res: int, index: int) -> bytes:
    """LMDB key of the image with global `index` at resolution `res`."""
    return f"{res}/{index:08d}".encode("ascii")


def read_meta(root: str | os.PathLike) -> dict:
    """Read and validate `meta.json` of the dataset at `root`; one-line errors on any problem."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"dataset {root} does not exist; create it with tools/make_lmdb.py")
    if not root.is_dir():
        raise UserError(f"dataset {root} is not a directory; pass the folder made by make_lmdb.py")
    meta_path = root / META_NAME
    if not meta_path.exists():
        if any(root.glob("shard-*.lmdb")):
            raise UserError(
                f"dataset {root} has no {META_NAME}: its conversion did not finish; "
                "re-run tools/make_lmdb.py with --overwrite"
            )
        raise UserError(
            f"{root} is not a dataset (no {META_NAME}); create it with tools/make_lmdb.py"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{meta_path} is not valid JSON ({e}); re-run tools/make_lmdb.py") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{meta_path} is not a {FORMAT} dataset description")
    if meta.get("version") != VERSION:
        raise UserError(
            f"{meta_path} has format version {meta.get('version')!r}; this release reads "
            f"version {VERSION}: re-create the dataset with this release's tools/make_lmdb.py"
        )
    required = ("count", "max_res", "resolutions", "encoding", "channels", "shards")
    missing = [k for k in required if k not in meta]
    if missing:
        raise UserError(f"{meta_path} lacks {', '.join(missing)}; re-run tools/make_lmdb.py")
    try:
        count = int(meta["count"])
        resolutions = [int(r) for r in meta["resolutions"]]
        encoding = {int(k): str(v) for k, v in meta["encoding"].items()}
        shards = [
            {"path": str(s["path"]), "first": int(s["first"]), "count": int(s["count"])}
            for s in meta["shards"]
        ]
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise UserError(f"{meta_path} is malformed ({e}); re-run tools/make_lmdb.py") from None
    if set(encoding) != set(resolutions) or any(v not in ENCODINGS for v in encoding.values()):
        raise UserError(f"{meta_path}: 'encoding' must give raw, png or jpeg for every resolution")
    first = 0
    for s in shards:
        if s["first"] != first:
            raise UserError(
                f"{meta_path}: shard {s['path']} starts at {s['first']}, expected {first}"
            )
        first += s["count"]
    if first != count:
        raise UserError(f"{meta_path}: shards hold {first} images but count is {count}")
    meta.update(count=count, resolutions=resolutions, encoding=encoding, shards=shards)
    return meta
