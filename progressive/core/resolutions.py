"""Which resolutions exist: powers of two from 4 to 1024, the one rule shared by the dataset
format, the networks, the presets and the schedule."""

from __future__ import annotations

from progressive.core.errors import UserError

MIN_RES = 4
MAX_RES = 1024


def check_resolution(res: int, what: str = "--max-res", max_res: int = MAX_RES) -> int:
    """`res`, or a one-line error unless it is a power of two from 4 to `max_res`."""
    if not isinstance(res, int) or res < MIN_RES or res > max_res or res & (res - 1):
        raise UserError(f"{what} {res} is not a power of two from {MIN_RES} to {max_res}")
    return res


def resolutions(max_res: int, start_res: int = MIN_RES) -> list[int]:
    """Every power of two from `start_res` to `max_res`: [start_res, 2 start_res, ..., max_res]."""
    check_resolution(max_res, "max_res")
    check_resolution(start_res, "start_res", max_res)
    return [start_res << i for i in range((max_res // start_res).bit_length())]


ALL_RES = resolutions(MAX_RES)

PCA_PATH_MAX_RES = 64  # the principal-component path's resolution is min(max_res, this)
