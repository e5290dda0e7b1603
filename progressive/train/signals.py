"""SIGTERM, what a scheduler sends some seconds before it kills a job: noted when it comes,
acted on at the next step boundary, where the run takes a snapshot and stops."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import torch
import torch.distributed as dist

from progressive.core.errors import UserError


class StopOnSignal:
    """Between `install` and `restore`, SIGTERM sets a flag instead of ending the process.
    With several processes, `agreed` asks every rank at once, so all stop after the same step.
    (DataLoader workers keep PyTorch's handler: a signal sent to the whole process group ends
    them, and the run with them, as before.)"""

    def __init__(self, world: int):
        self.received: str | None = None
        self._previous = None
        # The flags travel on the CPU through a gloo group: asking costs no GPU sync.
        self._group = dist.new_group(backend="gloo") if world > 1 else None

    def install(self) -> None:
        """Catch SIGTERM from here on (the main thread only can)."""
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._note)

    def restore(self) -> None:
        """SIGTERM as it was before `install`."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _note(self, signum: int, frame) -> None:
        self.received = signal.Signals(signum).name

    def agreed(self) -> bool:
        """Whether any rank has received the signal (every rank calls this together)."""
        if self._group is None:
            return self.received is not None
        flag = torch.tensor([0 if self.received is None else 1], dtype=torch.int32)
        dist.all_reduce(flag, group=self._group)
        self.received = self.received or ("SIGTERM" if int(flag) else None)
        return bool(int(flag))


def stopped(received: str, images_shown: int, snapshot: Path | None) -> UserError:
    """The one line a run stopped by a signal ends with."""
    where = f"the snapshot {snapshot} holds it" if snapshot else "no snapshot could be taken"
    return UserError(
        f"training stopped by {received} at {images_shown:,} images; {where}; continue with "
        "progressive train --resume auto and the same --name and --outdir"
    )
