"""The README's preset table says what the presets in the code hold."""

import re
from pathlib import Path

from tiny import config

from progressive.config.presets import PRESETS

README = Path(__file__).resolve().parent.parent / "README.md"


def _rows() -> dict[str, list[str]]:
    text = README.read_text()
    table = text.split("## Presets", 1)[1].split("\n\n", 2)[1]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0].strip("`")] = cells
    return rows


def _numbers(text: str) -> list[float]:
    """Numbers outside parentheses (those name resolutions)."""
    outside = re.sub(r"\([^)]*\)", "", text)
    return [float(n) for n in re.findall(r"\d+(?:\.\d+)?(?:e-?\d+)?", outside)]


def test_every_preset_has_a_row_that_matches_the_code():
    rows = _rows()
    assert set(rows) == set(PRESETS)
    for name, (_, res, latent, widths, batch, lr, betas, kimg, _) in rows.items():
        cfg = config(name)
        s = cfg.schedule
        resolutions = [r for r in s.batch if s.start_res <= r <= s.max_res]
        assert res == f"{cfg.schedule.start_res}→{cfg.schedule.max_res}", name
        assert int(latent) == cfg.networks.latent, name
        net = cfg.networks
        assert [int(w) for w in widths.split("/")] == [net.fmap_base, net.fmap_max], name
        assert _numbers(batch)[0] == cfg.schedule.batch[cfg.schedule.start_res], name
        assert set(_numbers(batch)) == {cfg.schedule.batch[r] for r in resolutions}, name
        lrs = {t[r] for t in cfg.optim.lr_tables().values() for r in resolutions}
        assert set(_numbers(lr)) == lrs, name
        assert tuple(float(b) for b in betas.split(",")) == cfg.optim.betas, name
        assert [float(k) for k in kimg.split("/")] == [s.fade_kimg, s.stable_kimg], name
