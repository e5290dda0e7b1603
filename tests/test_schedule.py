"""The growth schedule is a pure function of images shown."""

import pytest
from tiny import config

from progressive.config.presets import PRESETS
from progressive.config.schedule import Schedule
from progressive.core.errors import UserError


def schedule(**kw):
    kw = {"max_res": 32, "start_res": 4, "fade_kimg": 1.0, "stable_kimg": 2.0} | kw
    cfg = config("demo", **kw)
    return Schedule.from_config(cfg)


def test_boundaries_of_every_stage():
    s = schedule()
    assert s.resolutions == [4, 8, 16, 32]
    # Stage 0: stable only (2k). Later stages: 1k fade then 2k stable.
    assert s.starts == [0, 2000, 5000, 8000]
    assert s.end_of_last_stage == 11000
    assert s.at(0).res == 4 and s.at(0).alpha == 1.0 and not s.at(0).fading
    assert s.at(1999).res == 4
    first = s.at(2000)
    assert (first.res, first.alpha, first.fading, first.stage) == (8, 0.0, True, 1)
    assert s.at(2500).alpha == pytest.approx(0.5)
    assert s.at(2999).fading and s.at(3000).alpha == 1.0 and not s.at(3000).fading
    assert s.at(4999).res == 8 and s.at(5000).res == 16 and s.at(5000).alpha == 0.0
    assert s.at(10**9).res == 32 and s.at(10**9).stage_end is None
    assert s.at(2400).stage_start == 2000 and s.at(2400).stage_end == 5000


def test_alpha_is_monotone_and_linear_in_fade():
    s = schedule()
    alphas = [s.at(n).alpha for n in range(2000, 3001, 100)]
    assert alphas == pytest.approx([i / 10 for i in range(11)])


def test_per_resolution_batch_and_lr_follow_tables():
    cfg = config("celebahq1024")
    s = Schedule.from_config(cfg)
    assert len(s.resolutions) == 9
    for n in (0, s.starts[5] + 1, s.starts[8] + 1):
        phase = s.at(n)
        assert phase.batch == cfg.schedule.batch[phase.res]
        assert phase.lr["generator"] == cfg.optim.lr_generator[phase.res]
    assert s.at(s.starts[8]).batch < s.at(0).batch


def test_start_res_skips_lower_stages():
    s = schedule(start_res=16)
    assert s.resolutions == [16, 32]
    assert s.at(0).res == 16 and s.at(2000).res == 32 and s.at(2000).alpha == 0.0


@pytest.mark.parametrize("bad", [3, 6, 2048, 0])
def test_bad_resolution_is_one_line_error(bad):
    with pytest.raises(UserError, match="power of two"):
        config("demo", max_res=bad)


def test_every_preset_resolves():
    for name in PRESETS:
        cfg = config(name)
        assert Schedule.from_config(cfg).resolutions[-1] == cfg.schedule.max_res
