"""The on-disk dataset format, shared by the writer (`dataset_writer`) and the reader (`data`).

A dataset is a directory holding `meta.json` (written last, atomically) and LMDB shards
`shard-NNNNN.lmdb/`. Keys are ASCII `"{res}/{index:08d}"` with the global image index; values
are PNG or JPEG bytes, or raw uint8 HWC pixels.

Version 2 seals every value: the encoded image is followed by 4 bytes, the CRC32 of key and
image (little-endian), so a damaged or misplaced record is caught before it is decoded; and
each shard entry of meta.json records the size of its `data.mdb` (`bytes`), checked before the
shard is mapped. Version 1 datasets (no seals, no sizes) still read: their shards are checked
against the size their own LMDB header implies, PNG records against the PNG chunk CRCs, raw
records by length; JPEG records only by decoding.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

from progressive.core.errors import UserError

FORMAT = "progressive-lmdb"
VERSION = 2
READABLE_VERSIONS = (1, 2)
SEAL_BYTES = 4  # version 2: CRC32 of key + image after every value
META_NAME = "meta.json"
REJECTED_NAME = "rejected.jsonl"
ENCODINGS = ("raw", "png", "jpeg")


def shard_name(i: int) -> str:
    """Directory name of shard `i`."""
    return f"shard-{i:05d}.lmdb"


def image_key(res: int, index: int) -> bytes:
    """LMDB key of the image with global `index` at resolution `res`."""
    return f"{res}/{index:08d}".encode("ascii")


def seal(key: bytes, payload: bytes) -> bytes:
    """The stored value of `payload` under `key` (version 2): payload + CRC32(key + payload)."""
    return payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(key)))


def unseal(key: bytes, value: bytes) -> bytes | None:
    """The payload of a sealed value, or None when the value does not match its seal."""
    if len(value) < SEAL_BYTES:
        return None
    payload = value[:-SEAL_BYTES]
    (stored,) = struct.unpack("<I", value[-SEAL_BYTES:])
    return payload if zlib.crc32(payload, zlib.crc32(key)) == stored else None


def png_intact(data: bytes) -> bool:
    """Whether PNG bytes have the PNG signature, chunks that fit and match their CRCs, and an
    IEND: the check that keeps damaged version-1 records away from libpng, which can crash
    the process (not raise) on a corrupted image stream."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return False
    pos, end = 8, len(data)
    while pos + 12 <= end:
        (length,) = struct.unpack_from(">I", data, pos)
        kind_end = pos + 8
        body_end = kind_end + length
        if body_end + 4 > end:
            return False
        (crc,) = struct.unpack_from(">I", data, body_end)
        if zlib.crc32(data[pos + 4 : body_end]) != crc:
            return False
        if data[pos + 4 : kind_end] == b"IEND":
            return True
        pos = body_end + 4
    return False


# LMDB's meta pages (pages 0 and 1 of data.mdb, 64-bit layout): magic and version after the
# 16-byte page header, the page size in the free-list database's first field, the main
# database's entry count, then the last page used and the transaction id.
_LMDB_MAGIC = 0xBEEFC0DE
_META_OFFSETS = {"magic": 16, "psize": 40, "entries": 120, "last_pgno": 136, "txnid": 144}


def lmdb_header(data_file: Path) -> dict | None:
    """Page size, entry count and the bytes used of an LMDB data file, read from its newest
    meta page with plain reads (nothing is mapped); None if the header is not LMDB's."""
    try:
        with open(data_file, "rb") as f:
            head = f.read(2 * 65536)
    except OSError:
        return None
    metas = []
    for offset in (0, None):
        if offset is None:  # the second meta page starts one page in
            if not metas:
                return None
            offset = metas[0]["psize"]
        o = _META_OFFSETS
        if offset + o["txnid"] + 8 > len(head):
            continue
        if struct.unpack_from("<I", head, offset + o["magic"])[0] != _LMDB_MAGIC:
            continue
        meta = {
            "psize": struct.unpack_from("<I", head, offset + o["psize"])[0],
            "entries": struct.unpack_from("<Q", head, offset + o["entries"])[0],
            "last_pgno": struct.unpack_from("<Q", head, offset + o["last_pgno"])[0],
            "txnid": struct.unpack_from("<Q", head, offset + o["txnid"])[0],
        }
        if meta["psize"] < 512 or meta["psize"] & (meta["psize"] - 1):
            continue
        metas.append(meta)
    if not metas:
        return None
    newest = max(metas, key=lambda m: m["txnid"])
    newest["used_bytes"] = (newest["last_pgno"] + 1) * newest["psize"]
    return newest


def check_shard(root: Path, shard: dict, n_resolutions: int, version: int) -> None:
    """Raise a one-line error unless shard `shard` of the dataset at `root` is whole: its data
    file has the size meta.json records (version 2) and at least the size its own header
    needs, and it holds one record per image and resolution. Reads two pages, maps nothing:
    a shard cut short would otherwise crash the process (SIGBUS) when a missing page is read."""
    path = Path(root) / shard["path"]
    data = path / "data.mdb"
    fix = "re-create the dataset with tools/make_lmdb.py or restore the shard from a copy"
    try:
        size = os.stat(data).st_size
    except OSError:
        raise UserError(f"shard {path} is missing (no data.mdb); {fix}") from None
    expected = shard.get("bytes")
    if version >= 2 and expected is not None and size != expected:
        raise UserError(
            f"shard {path} has {size:,} bytes but meta.json records {expected:,}: it was cut "
            f"short or changed; {fix}"
        )
    header = lmdb_header(data)
    if header is None:
        raise UserError(f"shard {path} has no valid LMDB header; {fix}")
    if size < header["used_bytes"]:
        raise UserError(
            f"shard {path} has {size:,} bytes but its pages need {header['used_bytes']:,}: "
            f"it was cut short; {fix}"
        )
    want = shard["count"] * n_resolutions
    if header["entries"] != want:
        raise UserError(
            f"shard {path} holds {header['entries']:,} records but meta.json promises {want:,} "
            f"({shard['count']} images x {n_resolutions} resolutions); {fix}"
        )


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
    if meta.get("version") not in READABLE_VERSIONS:
        readable = ", ".join(str(v) for v in READABLE_VERSIONS)
        raise UserError(
            f"{meta_path} has format version {meta.get('version')!r}; this release reads "
            f"versions {readable}: re-create the dataset with this release's tools/make_lmdb.py"
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
            {"path": str(s["path"]), "first": int(s["first"]), "count": int(s["count"]),
             **({"bytes": int(s["bytes"])} if "bytes" in s else {})}
            for s in meta["shards"]
        ]
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise UserError(f"{meta_path} is malformed ({e}); re-run tools/make_lmdb.py") from None
    if set(encoding) != set(resolutions) or any(v not in ENCODINGS for v in encoding.values()):
        raise UserError(f"{meta_path}: 'encoding' must give raw, png or jpeg for every resolution")
    first = 0
    for s in shards:
        if Path(s["path"]).name != s["path"] or not s["path"].endswith(".lmdb"):
            raise UserError(f"{meta_path}: shard path {s['path']!r} is not a shard folder name")
        if meta["version"] >= 2 and "bytes" not in s:
            raise UserError(f"{meta_path}: shard {s['path']} lacks its size ('bytes')")
        if s["first"] != first:
            raise UserError(
                f"{meta_path}: shard {s['path']} starts at {s['first']}, expected {first}"
            )
        first += s["count"]
    if first != count:
        raise UserError(f"{meta_path}: shards hold {first} images but count is {count}")
    meta.update(count=count, resolutions=resolutions, encoding=encoding, shards=shards)
    return meta
