"""`progressive info DATASET` and `dataset_summary`."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from test_data import write_dataset

from progressive.cli.main import main
from progressive.use.info import dataset_summary

# torchvision 0.29 announces on every decode that its decoders are moving elsewhere
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


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


def test_info_verify_reads_every_record_and_names_the_damaged_ones(tmp_path):
    import os

    from test_data import _flip

    from progressive.data.reader import ImageDataset

    root = tmp_path / "d"
    write_dataset(root, count=6, max_res=8, encoding={4: "raw", 8: "png"}, shard_counts=[3, 3])
    ok = CliRunner().invoke(main, ["info", str(root), "--verify"])
    assert ok.exit_code == 0, ok.output
    assert "verified" in ok.output and "12 records" in ok.output
    for index in (1, 4):
        stored = ImageDataset(root, 8)._read([index])[0]
        _flip(root, index // 3, stored, offset=len(stored) // 2)
    bad = CliRunner().invoke(main, ["info", str(root), "--verify"])
    assert bad.exit_code == 1
    errors = [line for line in bad.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "key 8/00000001" in errors[0] and "1 more" in errors[0]
    assert "damaged: shard" in bad.output and "key 8/00000004" in bad.output
    # Without --verify only the shards' sizes and headers are checked: a short shard shows.
    os.truncate(root / "shard-00001.lmdb" / "data.mdb", 4096 * 2)
    short = CliRunner().invoke(main, ["info", str(root)])
    assert short.exit_code == 1 and "shard-00001.lmdb" in short.output
    assert "cut short" in short.output
