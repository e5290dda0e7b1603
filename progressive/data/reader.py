"""Reading LMDB datasets: an image Dataset, a resumable infinite sampler, and a DataLoader maker.

The dataset format is defined in `progressive.data.format`. Shards are opened lazily in
whichever process reads them (a DataLoader worker, a rank), never inherited across a fork.
"""

from __future__ import annotations

import bisect
import multiprocessing
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import lmdb
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler
from torchvision.io import decode_jpeg, decode_png
from tqdm import tqdm

from progressive.core.errors import UserError
from progressive.core.files import first_line
from progressive.core.images import header_size
from progressive.data.format import check_shard, image_key, png_intact, read_meta, unseal
from progressive.data.masks import MASKS_NAME, unpack

# With lock=False LMDB does not track readers, but the limit still applies to open transactions.
_MAX_READERS = 1024

# torchvision 0.29 warns on every decode call that its decoders will move to another package.
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding capabilities of TorchVision",
    category=DeprecationWarning,
)

# LMDB refuses to open one environment twice in a process, so shards are shared by every
# dataset object of the process (one per resolution, say), keyed by path. Each entry remembers
# the pid that opened it (a forked DataLoader worker inherits the handle and the "already open"
# mark, and must close and reopen it; with lock=False closing touches nothing shared) and the
# data file's identity (a dataset re-created in place must be reopened).
_ENVS: dict[str, tuple[int, tuple[int, int], lmdb.Environment]] = {}


def _file_identity(path: Path) -> tuple[int, int]:
    try:
        st = os.stat(path / "data.mdb")
    except OSError:
        return (-1, -1)
    return (st.st_ino, st.st_mtime_ns)


def _open_shard(path: Path, identity: tuple[int, int]) -> lmdb.Environment:
    # LMDB knows an environment by its real path: one dataset reached by two spellings
    # (d/../d, a symlink) must share one handle.
    key = os.path.realpath(path)
    cached = _ENVS.get(key)
    if cached is not None:
        pid, ident, env = cached
        if pid == os.getpid() and ident == identity:
            return env
        env.close()  # in a forked child this unmaps the child's copy only
        del _ENVS[key]
    try:
        env = lmdb.open(
            key, readonly=True, lock=False, readahead=False, meminit=False,
            max_readers=_MAX_READERS, subdir=True,
        )
    except lmdb.Error as e:
        raise UserError(
            f"cannot open shard {path} ({first_line(e)}); "
            "re-create the dataset with tools/make_lmdb.py"
        ) from None
    _ENVS[key] = (os.getpid(), identity, env)
    return env


class ImageDataset(Dataset):
    """The images of the dataset at `root` at resolution `res`, as uint8 tensors (3, res, res)."""

    def __init__(self, root: str | os.PathLike, res: int, check_shards: bool = True):
        self.root = Path(root)
        self.meta = read_meta(self.root)
        self.resolutions: list[int] = self.meta["resolutions"]
        self.max_res: int = int(self.meta["max_res"])
        if res not in self.resolutions:
            have = f"{min(self.resolutions)}..{max(self.resolutions)}"
            raise UserError(
                f"dataset {self.root} has resolutions {have}; --res {res} is not among them"
            )
        self.res = int(res)
        self.encoding: str = self.meta["encoding"][self.res]
        self.channels = int(self.meta["channels"])
        if self.channels not in (1, 3):
            raise UserError(f"{self.root}/meta.json: channels {self.channels} is not 1 or 3")
        self.version = int(self.meta["version"])
        self.shards: list[dict] = self.meta["shards"]
        for shard in self.shards if check_shards else ():
            # before any shard is mapped: reading a page past a short file's end is a SIGBUS
            check_shard(self.root, shard, len(self.resolutions), self.version)
        self._firsts = [s["first"] for s in self.shards]
        self._paths = [self.root / s["path"] for s in self.shards]
        self._identities = [_file_identity(p) for p in self._paths]
        # Incomplete data: one observation mask per image, returned with it by __getitem__.
        self.has_masks = "masks" in self.meta
        self._masks_path = self.root / MASKS_NAME
        self._masks_identity = _file_identity(self._masks_path)

    def __len__(self) -> int:
        return self.meta["count"]

    def __getitem__(self, index: int | list[int]) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """One image (3, res, res), or for a list of indices a batch (N, 3, res, res); for a
        dataset with masks, (images, masks) with masks uint8 (N, 1, res, res), 1 = observed."""
        indices = list(index) if isinstance(index, list | tuple) else [index]
        images = self.batch(indices)
        if self.has_masks:
            masks = self.masks(indices)
            return (images, masks) if isinstance(index, list | tuple) else (images[0], masks[0])
        return images if isinstance(index, list | tuple) else images[0]

    def masks(self, indices: list[int]) -> torch.Tensor:
        """The observation masks of `indices`, uint8 (N, 1, res, res); all ones without masks."""
        res = self.res
        if not self.has_masks:
            return torch.ones(len(indices), 1, res, res, dtype=torch.uint8)
        out = np.empty((len(indices), 1, res, res), dtype=np.uint8)
        env = _open_shard(self._masks_path, self._masks_identity)
        with env.begin(buffers=False) as txn:
            for i, index in enumerate(indices):
                value = txn.get(image_key(res, int(index)))
                if value is None or len(value) != (res * res + 7) // 8:
                    raise UserError(
                        f"{self._masks_path} has no valid mask for image {index} at {res}px; "
                        "re-create the dataset with tools/make_lmdb.py"
                    )
                out[i, 0] = unpack(value, res)
        return torch.from_numpy(out)

    def batch(self, indices: list[int]) -> torch.Tensor:
        """The images at `indices` as one uint8 tensor (N, 3, res, res).

        One read transaction per shard, and the batch is assembled with numpy, which copies
        single-threaded: torch's intra-op threads made assembly 20x slower on a busy machine.
        In a DataLoader worker the batch is built in shared memory, so it reaches the main
        process without another copy."""
        values = self._read(indices)
        res, c, n = self.res, self.channels, len(values)
        out = torch.empty(n, 3, res, res, dtype=torch.uint8)
        if torch.utils.data.get_worker_info() is not None:
            out.share_memory_()
        dst = out.numpy()
        if self.encoding == "raw":
            for index, v in zip(indices, values, strict=True):
                if len(v) != res * res * c:
                    raise self._damaged(index, f"{len(v)} bytes, expected {res}x{res}x{c}")
            hwc = np.frombuffer(b"".join(values), dtype=np.uint8)
            # numpy's HWC -> CHW copy of uint8 is ~5x faster than torch's permute().contiguous()
            np.copyto(dst, hwc.reshape(n, res, res, c).transpose(0, 3, 1, 2))  # c=1 broadcasts
        else:
            for i, (index, v) in enumerate(zip(indices, values, strict=True)):
                dst[i] = self._decode(v, index).numpy()
        return out

    def _read(self, indices: list[int]) -> list[bytes]:
        """The images at `indices` as stored (encoded), one read transaction per shard, each
        verified against its checksum (version 2) before anything decodes it."""
        txns: dict[int, lmdb.Transaction] = {}
        out = []
        try:
            for index in indices:
                index = int(index)
                if not 0 <= index < len(self):
                    raise IndexError(f"index {index} out of range for {len(self)} images")
                shard = self._shard_of(index)
                key = image_key(self.res, index)
                try:
                    txn = txns.get(shard)
                    if txn is None:
                        env = _open_shard(self._paths[shard], self._identities[shard])
                        txn = txns[shard] = env.begin(buffers=False)
                    value = txn.get(key)
                except lmdb.Error as e:  # a damaged page of the shard's index
                    raise self._damaged(index, str(e).strip().splitlines()[0]) from None
                if value is None:
                    raise self._damaged(index, "missing")
                if self.version >= 2:
                    value = unseal(key, value)
                    if value is None:
                        raise self._damaged(index, "checksum mismatch")
                elif self.encoding == "png" and not png_intact(value):
                    raise self._damaged(index, "PNG chunk checksum mismatch")
                out.append(value)
        finally:
            for txn in txns.values():
                txn.abort()
        return out

    def _damaged(self, index: int, reason: str) -> UserError:
        return UserError(
            f"{self._where(index)} is damaged ({reason}); re-create the dataset with "
            f"tools/make_lmdb.py or restore the shard; `progressive info {self.root} --verify` "
            "checks every record"
        )

    def _shard_of(self, index: int) -> int:
        return bisect.bisect_right(self._firsts, index) - 1

    def _where(self, index: int) -> str:
        """Where image `index` is stored, for error messages."""
        key = image_key(self.res, int(index)).decode()
        return f"shard {self._paths[self._shard_of(int(index))]}, key {key}"

    def _decode(self, value: bytes, index: int) -> torch.Tensor:
        """Decode the PNG or JPEG value of image `index`, its size checked in its header
        first: a record that decodes to more than it should is refused, not decoded."""
        res = self.res
        size = header_size(value)
        if size is None or size != (res, res):
            found = "no readable header" if size is None else f"header says {size[0]}x{size[1]}"
            raise self._damaged(index, f"{found}, expected {res}x{res}")
        data = torch.frombuffer(bytearray(value), dtype=torch.uint8)
        try:
            # UNCHANGED is ~15% faster than asking for RGB; convert the rare other layouts below
            image = (decode_png if self.encoding == "png" else decode_jpeg)(data)
        except RuntimeError as e:
            raise self._damaged(index, first_line(e)) from None
        if image.shape[0] in (1, 2):  # gray, gray + alpha
            image = image[:1].expand(3, -1, -1)
        elif image.shape[0] == 4:  # RGBA
            image = image[:3]
        if image.shape != (3, res, res) or image.dtype != torch.uint8:
            raise self._damaged(
                index, f"decoded {tuple(image.shape)} {image.dtype}, expected (3, {res}, {res})"
            )
        return image


class InfiniteSampler(Sampler[int]):
    """An endless, seeded stream of indices, each epoch split evenly over `world_size` ranks.

    Epoch `e` is a permutation of range(size) drawn from a generator seeded with (seed, e);
    rank `r` takes positions r, r + W, r + 2W, ... of its first (size // W) * W entries, so all
    ranks have the same epoch length and never share an index within an epoch. `position` is
    the number of indices this rank has drawn; a sampler built with `start=k` continues exactly
    as an uninterrupted one would after k indices. Iterating advances `position`.
    """

    def __init__(
        self, size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
        shuffle: bool = True, start: int = 0,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is not in 0..{world_size - 1}")
        if size < world_size:
            raise UserError(
                f"the dataset has {size} images, fewer than the {world_size} processes; "
                "use a larger dataset or fewer processes"
            )
        if start < 0:
            raise UserError(f"sampler start {start} is negative")
        self.size, self.rank, self.world_size = int(size), int(rank), int(world_size)
        self.seed, self.shuffle, self.position = int(seed), bool(shuffle), int(start)
        self.epoch_length = self.size // self.world_size

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's indices in `epoch`, in order."""
        used = self.epoch_length * self.world_size
        if self.shuffle:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (1 << 63))
            order = torch.randperm(self.size, generator=g)
        else:
            order = torch.arange(self.size)
        return order[self.rank : used : self.world_size].tolist()

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.position, self.epoch_length)
        while True:
            for index in self.epoch_indices(epoch)[offset:]:
                self.position += 1
                yield index
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:
        # DataLoader asks for a length; the stream is endless, so report the largest int.
        return 2**62


def _worker_init(_: int) -> None:
    # Workers decode one image at a time; intra-op threads only contend with each other.
    torch.set_num_threads(1)


def make_loader(
    dataset: Dataset, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
    start: int = 0, workers: int = 0, drop_last: bool = True, pin_memory: bool = False,
    prefetch_factor: int = 4,
) -> DataLoader:
    """An endless DataLoader of uint8 batches (N, 3, res, res) for one rank.

    `start` is the number of images this rank has already consumed (not batches): the stream
    continues exactly where an uninterrupted run would be. Build a new loader at every stage
    change rather than relying on iterator state, since workers prefetch ahead.
    """
    sampler = InfiniteSampler(
        len(dataset), rank=rank, world_size=world_size, seed=seed, shuffle=True, start=start
    )
    # The dataset reads whole batches (ImageDataset.batch), so the loader hands it lists of
    # indices and does no collation of its own.
    batches = BatchSampler(sampler, batch_size, drop_last=drop_last)
    extra: dict = {}
    if workers > 0:
        # fork starts workers in ~0.05 s against seconds for spawn; shards are reopened per pid
        if "fork" in multiprocessing.get_all_start_methods():
            extra["multiprocessing_context"] = "fork"
        extra.update(prefetch_factor=prefetch_factor, worker_init_fn=_worker_init)
    return DataLoader(
        dataset, batch_size=None, sampler=batches, num_workers=workers, pin_memory=pin_memory,
        persistent_workers=False, **extra,
    )


def verify_dataset(root: str | os.PathLike, progress: bool = True, chunk: int = 256) -> dict:
    """Read and check every record of the dataset at `root` the way training reads it: shard
    sizes and headers, then each record's checksum (version 2) and decoding. Returns
    {"records": records checked, "problems": one line per damaged shard or record, saying what
    is wrong (not what to do)}."""
    meta = read_meta(root)
    resolutions = meta["resolutions"]
    problems: list[str] = []
    whole = []
    for shard in meta["shards"]:
        try:
            check_shard(Path(root), shard, len(resolutions), int(meta["version"]))
            whole.append(shard)
        except UserError as e:
            problems.append(str(e).split("; ")[0])
    checked = 0
    total = sum(s["count"] for s in whole) * len(resolutions)
    with tqdm(total=total, unit="rec", disable=not progress, desc="verifying") as bar:
        for res in resolutions:
            ds = ImageDataset(root, res, check_shards=False)  # checked above, one by one
            for shard in whole:
                for start in range(shard["first"], shard["first"] + shard["count"], chunk):
                    indices = list(range(start, min(start + chunk, shard["first"] +
                                                    shard["count"])))
                    try:
                        ds.batch(indices)
                    except UserError:  # find which records of the chunk are damaged
                        for index in indices:
                            try:
                                ds.batch([index])
                            except UserError as e:
                                problems.append(str(e).split("; ")[0])
                    checked += len(indices)
                    bar.update(len(indices))
    return {"records": checked, "problems": problems}

