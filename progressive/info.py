"""Text summaries of a dataset directory and of a checkpoint."""

from __future__ import annotations

from pathlib import Path


def dataset_summary(path: Path) -> str:
    """A human-readable summary of the dataset at `path`."""
    raise NotImplementedError


def checkpoint_summary(path: Path) -> str:
    """A human-readable summary of a run folder or snapshot."""
    raise NotImplementedError
