"""Typed configuration: presets resolve as release 0.1.0's did, saved configurations of every
release read as they were trained, and --config / --set reach any field."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from progressive.cli.main import main
from progressive.config.keys import parse_value, replace
from progressive.config.migrate import migrate
from progressive.config.presets import PRESETS, make_config
from progressive.config.sections import Config
from progressive.config.sizing import builtin_cap
from progressive.core.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_CONFIG = FIXTURES / "run-0.1" / "config.json"
RESOLVED_0_1 = json.loads((FIXTURES / "presets-0.1.json").read_text())


def _effective(cfg: Config) -> dict:
    """The configuration as training uses it: the averages' half-lives paired with the
    generator's where they name none."""
    d = cfg.to_dict()
    d["optim"] |= {"energy_ema_kimg": cfg.optim.half_lives()["energy"],
                   "inference_ema_kimg": cfg.optim.half_lives()["inference"]}
    return json.loads(json.dumps(d))


@pytest.mark.parametrize("key", sorted(RESOLVED_0_1))
def test_every_preset_and_the_sizing_rule_resolve_as_in_release_0_1(key):
    if key.startswith("auto-"):
        _, device, res = key.split("-")
        new = make_config(None, {"schedule.max_res": int(res)}, device=device)
    else:
        new = make_config(key)
    old = migrate(RESOLVED_0_1[key])
    # the one change since: a preset's built-in dataset holds at most 1 GiB of pixels
    count = builtin_cap(old.data.synthetic_count, old.schedule.max_res)
    assert _effective(new) == _effective(replace(old, {"data.synthetic_count": count}))


def test_python_default_is_the_command_line_default():
    assert make_config().preset == "auto" == make_config(None).preset


def test_the_32px_recipe_is_a_preset():
    cfg = make_config("recipe32")
    assert cfg.networks.pca_path and cfg.loss.energy_r1 == 0.1
    assert set(cfg.optim.lr_generator.values()) == {16e-3}
    assert set(cfg.optim.lr_energy.values()) == {2e-3} and cfg.schedule.max_res == 32


def test_old_release_config_reads_with_the_defaults_it_trained_with():
    saved = json.loads(FIXTURE_CONFIG.read_text())
    cfg = migrate(saved)
    assert cfg.networks.latent == 4 and cfg.schedule.max_res == 8 and cfg.networks.fmap_min == 4
    for key in ("fmap_min", "energy_ema_kimg"):
        del saved[key]
    del saved["loss"]["marginal_kl"]
    older = migrate(saved)  # saved before these existed: trained without them
    assert older.networks.fmap_min == 1 and older.optim.half_lives()["energy"] == 0.0
    assert older.loss.marginal_kl == 0.0
    assert migrate(cfg.to_dict()) == cfg


@pytest.mark.parametrize("key,neutral", [
    ("energy_every", 1), ("inference_width", 1), ("inference_hidden", None),
    ("energy_noise", 0.0), ("upsample", "nearest"),
])
def test_retired_settings_at_their_neutral_value_are_read(key, neutral):
    saved = json.loads(FIXTURE_CONFIG.read_text()) | {key: neutral}
    assert migrate(saved) == migrate(json.loads(FIXTURE_CONFIG.read_text()))


@pytest.mark.parametrize("key,value", [("energy_every", 2), ("inference_hidden", 128),
                                       ("code_center", 10.0), ("energy_recenter", 0.1),
                                       ("energy_center", 1.0), ("inference_width", 2)])
def test_a_run_trained_with_a_retired_setting_is_refused_in_one_line(key, value):
    saved = json.loads(FIXTURE_CONFIG.read_text())
    (saved["loss"] if key in saved["loss"] else saved)[key] = value
    with pytest.raises(UserError, match=rf"^{key} {value!r}: a retired setting \(last in "
                                        r"progressive 0\.1\.0\)") as e:
        migrate(saved)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("key,text,expected", [
    ("loss.energy_r1", "0.1", 0.1),
    ("loss.langevin_steps", "5", 5),
    ("networks.pca_path", "true", True),
    ("schedule.total_kimg", "null", None),
    ("optim.betas", "0.5,0.999", (0.5, 0.999)),
    ("run.log_with", "tensorboard", "tensorboard"),
])
def test_set_parses_each_kind_of_field(key, text, expected):
    assert parse_value(key, text) == expected


def test_set_parses_per_resolution_tables():
    table = parse_value("optim.lr_generator", "16e-3,64:2e-3")
    assert table[32] == 16e-3 and table[64] == 2e-3 and len(table) == 9
    assert set(parse_value("schedule.batch", "8").values()) == {8}


@pytest.mark.parametrize("key,text,words", [
    ("loss.nope", "1", "loss.nope is not a configuration field"),
    ("nope.x", "1", "nope.x is not a configuration field"),
    ("loss.energy_r1", "abc", "loss.energy_r1=abc: not a value"),
    ("loss.energy_r1", "-1", "loss.energy_r1 -1.0: must be 0 or more"),
    ("networks.pca_path", "maybe", "networks.pca_path=maybe"),
    ("run.mixed_precision", "fp8", "run.mixed_precision 'fp8': must be one of"),
    ("optim.lr_generator", "1e-3,48:2e-3", "no resolution 48"),
    ("loss.langevin_steps", "2.5", "loss.langevin_steps=2.5"),
])
def test_bad_set_values_are_one_line_errors_naming_the_field(key, text, words):
    with pytest.raises(UserError) as e:
        parse_value(key, text)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_validation_lives_in_the_sections():
    cfg = make_config("demo")
    for values, words in [({"schedule.start_res": 64}, "schedule.start_res 64"),
                          ({"schedule.max_res": 48}, "schedule.max_res 48"),
                          ({"networks.fmap_min": 128}, "networks.fmap_min 128"),
                          ({"data.holdout": 0.9}, "data.holdout 0.9"),
                          ({"networks.architecture": "reference"}, "do not grow")]:
        with pytest.raises(UserError, match=words):
            replace(cfg, values)


def _dry_run(tmp_path, *args):
    result = CliRunner().invoke(main, ["train", "--dry-run", "--calibration-seconds", "0",
                                       "--outdir", str(tmp_path), *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["config"]


def test_a_runs_config_json_reproduces_its_configuration(tmp_path, monkeypatch):
    """The 0.1.0 run's config.json, and the new form of it, as --config."""
    from progressive.train.data import render_builtin_dataset

    monkeypatch.chdir(tmp_path)  # where the run's relative data path leads
    render_builtin_dataset(tmp_path / "runs" / "_builtin" / "synthetic-8px-100", 8, 100)
    cfg = migrate(json.loads(FIXTURE_CONFIG.read_text()))
    assert _dry_run(tmp_path, "--config", str(FIXTURE_CONFIG)) == json.loads(
        json.dumps(cfg.to_dict()))
    new = tmp_path / "config.json"
    new.write_text(json.dumps(cfg.to_dict()))
    assert _dry_run(tmp_path, "--config", str(new)) == json.loads(json.dumps(cfg.to_dict()))


def test_precedence_preset_file_options_set(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("preset: demo\nloss:\n  energy_r1: 0.5\nnetworks:\n  latent: 32\n"
                         "run:\n  seed: 3\n")
    got = _dry_run(tmp_path, "--config", str(yaml_file), "--latent", "16",
                   "--set", "networks.latent=24", "--set", "optim.lr_energy=1e-4,16:5e-4")
    assert got["preset"] == "demo" and got["schedule"]["max_res"] == 32  # the preset's
    assert got["loss"]["energy_r1"] == 0.5 and got["run"]["seed"] == 3  # the file's
    assert got["networks"]["latent"] == 24  # --set over --latent over the file
    assert got["optim"]["lr_energy"]["16"] == 5e-4 and got["optim"]["lr_energy"]["8"] == 1e-4
    assert got["optim"]["lr_generator"]["16"] == 2e-3  # the preset's


def test_lr_sets_every_network_and_set_one(tmp_path):
    got = _dry_run(tmp_path, "--max-res", "16", "--lr", "3e-3",
                   "--set", "optim.lr_generator=16e-3,16:2e-3")
    assert got["optim"]["lr_energy"]["8"] == got["optim"]["lr_inference"]["16"] == 3e-3
    assert got["optim"]["lr_generator"]["8"] == 16e-3 and got["optim"]["lr_generator"]["16"] == 2e-3


@pytest.mark.parametrize("args,words", [
    (["--set", "loss.bogus=1"], "loss.bogus is not a configuration field"),
    (["--set", "loss.energy_r1=x"], "loss.energy_r1=x"),
    (["--set", "loss.energy_r1"], "section.field=value"),
])
def test_bad_set_on_the_command_line_is_one_line(tmp_path, args, words):
    result = CliRunner().invoke(main, ["train", "--dry-run", "--outdir", str(tmp_path), *args])
    assert result.exit_code in (1, 2) and words in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("res", ["2048", "48", "2", "x"])
def test_bad_max_res_is_a_usage_error(tmp_path, res):
    result = CliRunner().invoke(main, ["train", "--dry-run", "--max-res", res])
    assert result.exit_code == 2
    assert f"--max-res {res}: a power of two from 4 to 1024" in result.output


def test_help_shows_every_default():
    out = CliRunner().invoke(main, ["train", "--help"]).output
    assert "checkpoints]" in out and "--set SECTION.FIELD=VALUE" in out
    assert "--generator-lr" not in out and "--energy-r1" not in out
    assert all(p in PRESETS or p == "auto" for p in ("demo", "recipe32", "auto"))


def test_every_field_and_preset_is_documented():
    import dataclasses

    from progressive.config.sections import SECTIONS

    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    for name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f"`{name}.{f.name}`" in doc, f"{name}.{f.name}"
    for preset in PRESETS:
        assert f"`{preset}`" in doc, preset


@pytest.mark.parametrize("args, says", [
    (["--pca-path"], "use --set networks.pca_path=VALUE"),
    (["--energy-r1", "0.1"], "use --set loss.energy_r1=VALUE"),
    (["--generator-lr", "1e-3"], "use --set optim.lr_generator=VALUE"),
    (["--out", "runs"], "use --outdir"),
    (["--energy-center", "1"], "--energy-center was retired"),
])
def test_an_option_that_moved_to_the_configuration_says_where(tmp_path, args, says):
    result = CliRunner().invoke(main, ["train", *args, "--outdir", str(tmp_path), "--dry-run"])
    assert result.exit_code == 2
    assert says in result.output and "Traceback" not in result.output
    assert not list(tmp_path.iterdir())  # nothing was started


def test_an_option_that_never_was_gets_clicks_own_message():
    result = CliRunner().invoke(main, ["train", "--bogus"])
    assert result.exit_code == 2 and "No such option" in result.output
