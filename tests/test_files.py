import json
from pathlib import Path

import pytest

import progressive.core.files as files


def test_json_is_written_atomically_and_its_rename_made_durable(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(files, "fsync_path", lambda p: synced.append(Path(p)))
    (tmp_path / "meta.json").write_text("old")
    files.write_json_atomic(tmp_path / "meta.json", {"count": 3})
    assert json.loads((tmp_path / "meta.json").read_text()) == {"count": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]  # no temporary left
    assert synced[0].parent == tmp_path and synced[0].name != "meta.json"  # the data, first
    assert synced[-1] == tmp_path  # then the rename, in its directory


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "scores.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), files.atomic_write(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv"]


def test_temporary_path_keeps_the_suffix_for_format_detection(tmp_path):
    tmp = files.temporary_path(tmp_path / "walk.gif")
    assert tmp.parent == tmp_path and tmp.suffix == ".gif" and tmp.name.startswith(".")


def test_first_line_of_an_exception():
    assert files.first_line(ValueError("bad header\nmore detail")) == "bad header"
    assert files.first_line(OSError()) == "OSError"
