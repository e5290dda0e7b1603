"""The benchmark scripts the docs quote still run against today's package."""

import importlib
import json
from pathlib import Path

from click.testing import CliRunner

ROOT_DIR = Path(__file__).resolve().parent.parent


def _script(monkeypatch, name: str):
    monkeypatch.syspath_prepend(str(ROOT_DIR / "bench"))
    return importlib.import_module(name)


def test_loss_balance_runs_and_writes_its_rows(monkeypatch, tmp_path):
    bench = _script(monkeypatch, "bench_loss_balance")
    out = tmp_path / "balance.json"
    result = CliRunner().invoke(
        bench.main, ["--max-res", "8", "--batch", "2", "--repeats", "1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["rows"]
    assert [(r["res"], r["rec_scaling"]) for r in rows] == [
        (4, "fixed"), (4, "sum"), (8, "fixed"), (8, "sum")
    ]
    assert all(r["grad_energy"] > 0 and r["grad_rec"] > 0 for r in rows)
