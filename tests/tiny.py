"""Network sizes small enough to train in tests, as config values and as CLI arguments."""

TINY_NETWORKS = {"latent": 8, "fmap_base": 64, "fmap_max": 16, "mixed_precision": "no"}


def _flat_fields() -> dict[str, str]:
    """Every configuration field by its own name (`latent`: `networks.latent`), `data` for
    `data.path`; field names are unique across sections."""
    import dataclasses

    from progressive.config.sections import SECTIONS

    names = {f.name: f"{s}.{f.name}" for s, cls in SECTIONS.items()
             for f in dataclasses.fields(cls)}
    return names | {"data": "data.path"}


def config(preset="demo", device=None, **flat):
    """`make_config` with fields by their own names; `batch` and `lr` may be one number, `lr`
    a dict of some networks' rates, `loss` a dict of loss weights."""
    from progressive.config.presets import make_config
    from progressive.config.sections import every_res

    names = _flat_fields()
    values = {f"loss.{k}": v for k, v in (flat.pop("loss", None) or {}).items()}
    if isinstance(flat.get("batch"), int):
        flat["batch"] = every_res(flat["batch"])
    lr = flat.pop("lr", None)
    if lr is not None:
        rates = lr if isinstance(lr, dict) else dict.fromkeys(("generator", "energy",
                                                               "inference"), lr)
        for network, rate in rates.items():
            values[f"optim.lr_{network}"] = rate if isinstance(rate, dict) else every_res(rate)
    for key, value in flat.items():
        values[names[key]] = value
    return make_config(preset, values, device=device)


def cli_args(**options: object) -> list[str]:
    """`--kebab-name value` pairs for `progressive train`, in the given order."""
    args: list[str] = []
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def train_tiny_run(root, max_res: int = 16):
    """A run trained for 56 images: stages 4 and 8 done, 16 half faded in (alpha 0.5)."""
    from progressive.train.loop import train

    cfg = config(
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


def networks_of(cfg):
    """The networks a configuration builds (`build_networks` on its parts)."""
    from progressive.model.networks import build_networks

    return build_networks(cfg.networks, cfg.schedule.max_res, cfg.optim.half_lives())
