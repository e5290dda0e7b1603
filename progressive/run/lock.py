"""One writer per run folder, and no rank outliving its launcher or its peers.

`RunLock` is an advisory lock (flock) on `<run>/lock`, held by the main process of a training
run for as long as it runs; the kernel drops it when the process ends, however it ends, so a
killed run never leaves a stale lock. The file names the holder, for the error message of the
next one to try.

`Watchdog` is a thread in every rank of a launched run: it stops the rank within seconds when
the launcher that started it is gone (its parent changed) or when another rank stopped
beating (a counter each rank raises every second in the launcher's key-value store).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

from progressive.core.errors import UserError

LOCK_NAME = "lock"


# flock belongs to the open file, which a forked child (a loader worker, say) shares: a child
# that outlived its parent would keep the run locked. Children close their copy at once.
_HELD: set[int] = set()


def _close_in_child() -> None:
    for fd in _HELD:
        try:
            os.close(fd)  # not LOCK_UN: that would release the parent's lock too
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class RunLock:
    """The exclusive lock of one run folder (see the module docstring)."""

    def __init__(self, run_dir: Path, fd: int):
        self.run_dir, self._fd = run_dir, fd

    @classmethod
    def acquire(cls, run_dir: str | os.PathLike) -> RunLock:
        """Take the lock of `run_dir` or raise a `UserError` naming the process holding it."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise UserError(
                f"run folder {run_dir} is in use by {holder}; wait for that run to end or stop "
                "it, or train under another --name"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[:8]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        _HELD.add(fd)
        return cls(run_dir, fd)

    def release(self) -> None:
        if self._fd >= 0:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            _HELD.discard(self._fd)
            os.close(self._fd)
            self._fd = -1


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return f"pid {info['pid']} on {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it is still writing its details)"


class Watchdog:
    """Stops this process when its launcher or another rank is gone (see the module docstring).

    Started only under a launcher (torchrun / accelerate launch set TORCHELASTIC_RUN_ID)."""

    def __init__(self, rank: int, world_size: int, stale_s: float = 15.0, period_s: float = 1.0):
        self.rank, self.world_size = rank, world_size
        self.stale_s, self.period_s = stale_s, period_s
        self.parent = os.getppid()
        self._stop = threading.Event()
        self._store = None
        self._prefix = f"progressive/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}"
        self._thread = threading.Thread(target=self._loop, name="watchdog", daemon=True)

    @classmethod
    def start_if_launched(cls, rank: int, world_size: int) -> Watchdog | None:
        if "TORCHELASTIC_RUN_ID" not in os.environ:
            return None
        dog = cls(rank, world_size)
        dog._thread.start()
        return dog

    def done(self) -> None:
        """This rank ended normally: peers stop watching it, and this thread ends."""
        if self._store is not None:
            try:
                self._store.set(f"{self._prefix}/done/{self.rank}", "1")
            except Exception:  # the store may already be gone at the very end
                pass
        self._stop.set()

    def _connect(self):
        if self.world_size < 2:
            return None

        host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
        if not host or not port:
            return None
        return dist.TCPStore(host, int(port), is_master=False, wait_for_workers=False,
                             timeout=timedelta(seconds=10))

    def _loop(self) -> None:
        last_seen: dict[int, tuple[int, float]] = {}
        try:
            self._store = self._connect()
        except Exception as e:
            self._fail(f"cannot reach the launcher's store ({type(e).__name__})")
        while not self._stop.wait(self.period_s):
            if os.getppid() != self.parent:
                self._fail(f"the launcher (pid {self.parent}) is gone")
            if self._store is None:
                continue
            try:
                self._store.add(f"{self._prefix}/beat/{self.rank}", 1)
                now = time.monotonic()
                for r in range(self.world_size):
                    if r == self.rank:
                        continue
                    beats = self._store.add(f"{self._prefix}/beat/{r}", 0)
                    if r not in last_seen or last_seen[r][0] != beats:
                        last_seen[r] = (beats, now)
                    elif now - last_seen[r][1] > self.stale_s:
                        if self._store.check([f"{self._prefix}/done/{r}"]):
                            continue
                        self._fail(f"rank {r} stopped ({self.stale_s:.0f} s without a beat)")
            except Exception as e:
                if self._stop.is_set():
                    return
                self._fail(f"the launcher's store is gone ({type(e).__name__})")

    def _fail(self, why: str) -> None:
        # Hard exit: the main thread may be blocked in a collective that never returns.
        # Snapshots are published by rename, so nothing half written is left visible.
        print(f"Error: rank {self.rank}: {why}; stopping. Continue with --resume auto.",
              file=sys.stderr, flush=True)
        os._exit(1)
