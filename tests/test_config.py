"""Configurations: saved ones of earlier releases read as they were trained."""

import json
from pathlib import Path

import pytest

from progressive.config.presets import normalize
from progressive.core.errors import UserError

FIXTURE_CONFIG = Path(__file__).parent / "fixtures" / "run-0.1" / "config.json"


@pytest.mark.parametrize("key,neutral", [
    ("energy_every", 1), ("inference_width", 1), ("inference_hidden", None),
    ("energy_noise", 0.0), ("upsample", "nearest"),
])
def test_retired_settings_at_their_neutral_value_are_read(key, neutral):
    saved = json.loads(FIXTURE_CONFIG.read_text()) | {key: neutral}
    assert key not in normalize(saved)


@pytest.mark.parametrize("key", ["energy_center", "energy_recenter", "code_center",
                                 "energy_blocks"])
def test_retired_loss_weights_at_zero_are_read(key):
    saved = json.loads(FIXTURE_CONFIG.read_text())
    saved["loss"][key] = 0.0
    assert key not in normalize(saved)["loss"]


@pytest.mark.parametrize("key,value", [("energy_every", 2), ("inference_hidden", 128),
                                       ("code_center", 10.0), ("energy_recenter", 0.1)])
def test_a_run_trained_with_a_retired_setting_is_refused_in_one_line(key, value):
    saved = json.loads(FIXTURE_CONFIG.read_text())
    (saved["loss"] if key in saved["loss"] else saved)[key] = value
    with pytest.raises(UserError, match=rf"^{key} {value!r}: a retired setting \(last in "
                                        r"progressive 0\.1\.0\)") as e:
        normalize(saved)
    assert "\n" not in str(e.value)
