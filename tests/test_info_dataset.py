"""`progressive info DATASET` and `dataset_summary`."""

from __future__ import annotations

import json

from click.testing import CliRunner
from test_data import write_dataset

from progressive.cli import main
from progressive.info import dataset_summary


def test_info_prints_a_dataset_summary(tmp_path):
    root = tmp_path / "faces"
    enc = {4: "raw", 8: "raw", 16: "png", 32: "jpeg"}
    write_dataset(
        root, count=7, max_res=32, encoding=enc, shard_counts=[3, 4],
        extra_meta={"split": "train", "rejected": 2},
    )
    (root / "rejected.jsonl").write_text(
        json.dumps({"path": "a.jpg", "reason": "truncated"}) + "\n"
        + json.dumps({"path": "b.txt", "reason": "not an image"}) + "\n"
    )
    result = CliRunner().invoke(main, ["info", str(root)])
    assert result.exit_code == 0, result.output
    out = result.output
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert str(root) in out.splitlines()[0]
    assert lines["images"].split()[-1] == "7"
    assert lines["resolutions"].endswith("4, 8, 16, 32")
    assert "raw 4..8, png 16, jpeg 32" in lines["encoding"]
    assert lines["shards"].split()[1] == "2"
    assert "folder, input /nowhere/images" in lines["source"]
    assert lines["split"].split()[-1] == "train"
    assert "2 (listed in rejected.jsonl)" in lines["rejected"]
    assert "2024-01-01" in lines["created"]
    assert "center" in lines["crop"]
    # bytes on disk: the sum of the files, so it grows with the shards
    disk = lines["on"]
    size, unit = disk.split()[-2:]
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    scale = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9}[unit]
    assert abs(float(size) * scale - total) <= 0.1 * total


def test_summary_counts_rejected_file_without_meta_field(tmp_path):
    root = tmp_path / "d"
    write_dataset(root, count=2, max_res=4)
    assert not any(line.split()[0] == "rejected" for line in dataset_summary(root).splitlines())
    (root / "rejected.jsonl").write_text('{"path": "x", "reason": "y"}\n' * 3)
    assert "rejected     3 (listed in rejected.jsonl)" in dataset_summary(root)


def test_info_on_unfinished_dataset_is_one_line_error(tmp_path):
    root = tmp_path / "d"
    write_dataset(root, count=2, max_res=4)
    (root / "meta.json").unlink()
    result = CliRunner().invoke(main, ["info", str(root)])
    assert result.exit_code == 1
    err = result.output.strip()
    assert err.startswith("Error: ") and "re-run" in err and "\n" not in err
    (root / "meta.json").write_text("[1, 2")
    result = CliRunner().invoke(main, ["info", str(root)])
    assert result.exit_code == 1 and "not valid JSON" in result.output
