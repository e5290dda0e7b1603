"""Network sizes small enough to train in tests, as config values and as CLI arguments."""

TINY_NETWORKS = {"latent": 8, "fmap_base": 64, "fmap_max": 16, "mixed_precision": "no"}


def cli_args(**options: object) -> list[str]:
    """`--kebab-name value` pairs for `progressive train`, in the given order."""
    args: list[str] = []
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args
