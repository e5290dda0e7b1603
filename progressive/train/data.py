"""The built-in synthetic dataset, and the checks a dataset passes before training reads it."""

from __future__ import annotations

import os
from pathlib import Path

from progressive.config.sections import Config
from progressive.config.sizing import builtin_encoding
from progressive.core.errors import UserError
from progressive.data.format import META_NAME, read_meta
from progressive.data.synthetic import SyntheticSource
from progressive.data.writer import write_dataset
from progressive.metrics import stage as evaluation
from progressive.train import pca_path


def render_builtin_dataset(path: Path, max_res: int, count: int) -> None:
    """Render the built-in synthetic dataset once; later runs reuse it. Raw pixels up to
    256 px, JPEG above (`sizing.builtin_encoding`), so 1024 px stays small and quick."""
    if not (path / META_NAME).exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_dataset(
            SyntheticSource(str(count)), str(path), max_res,
            encoding=builtin_encoding(max_res), overwrite=True,
        )


def check_dataset(path: str | os.PathLike, max_res: int, holdout: float = 0.0) -> dict:
    """Validate that the dataset exists, has every resolution training needs, and is large
    enough to hold out `holdout` of its images for evaluation."""
    meta = read_meta(path)
    if meta["max_res"] < max_res:
        raise UserError(
            f"--max-res {max_res} is above the dataset's max_res {meta['max_res']} "
            f"({path}); lower --max-res or rebuild the dataset"
        )
    evaluation.check_holdout(meta["count"], holdout, f"dataset {path}")
    return meta


def dataset_max_res(path: str | os.PathLike) -> int:
    """The largest resolution the dataset at `path` stores."""
    return int(read_meta(path)["max_res"])


def check_data(cfg: Config) -> None:
    """Everything about the run's data that can be checked before anything is written."""
    data = cfg.data
    if data.path is not None:
        meta = check_dataset(data.path, cfg.schedule.max_res, data.holdout)
        count, has_masks, where = meta["count"], "masks" in meta, f"dataset {data.path}"
    else:
        where = "the built-in dataset"
        evaluation.check_holdout(data.synthetic_count, data.holdout, where)
        count, has_masks = data.synthetic_count, False
    if cfg.networks.pca_path:
        pca_path.check_data(cfg, count, has_masks, where)
