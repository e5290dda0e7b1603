"""Network sizes small enough to train in tests, as config values and as CLI arguments."""

TINY_NETWORKS = {"latent": 8, "fmap_base": 64, "fmap_max": 16, "mixed_precision": "no"}


def cli_args(**options: object) -> list[str]:
    """`--kebab-name value` pairs for `progressive train`, in the given order."""
    args: list[str] = []
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def train_tiny_run(root, max_res: int = 16):
    """A run trained for 56 images: stages 4 and 8 done, 16 half faded in (alpha 0.5)."""
    from progressive.config.presets import make_config
    from progressive.train.trainer import train

    cfg = make_config(
        "demo", max_res=max_res, synthetic_count=32, fade_kimg=0.016, stable_kimg=0.016,
        total_kimg=0.056, batch=8, tick_kimg=0.016, snapshot_kimg=1, grid_size=2, workers=0,
        **TINY_NETWORKS,
    )
    train(cfg, root / "run", progress=False)
    return root / "run"


def write_synthetic(path, count: int, max_res: int):
    """A built-in synthetic dataset of `count` images at `path`, up to `max_res`."""
    from datasets_prep import make_source, write_dataset

    write_dataset(make_source("synthetic", str(count)), path, max_res, workers=0, progress=False)
    return path
