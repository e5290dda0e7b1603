"""Faults a long run meets: a full disk, a scheduler's SIGTERM, snapshots piling up, a
dataset of another resolution on resume."""

import errno

import pytest
import torch
from tiny import TINY_NETWORKS, write_synthetic

from progressive.config.presets import make_config
from progressive.core.errors import UserError
from progressive.model.networks import build_networks
from progressive.run import checkpoint as ckpt


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("data") / "synthetic", 24, 8)


def _networks_and_optimizers(cfg: dict):
    nets = build_networks(cfg)
    opts = {n: torch.optim.Adam(nets[n].parameters()) for n in ("generator", "energy",
                                                                 "inference")}
    return nets, opts


def test_a_full_disk_during_a_snapshot_is_one_line_and_leaves_the_last_one(tmp_path,
                                                                           monkeypatch):
    cfg = make_config("demo", **TINY_NETWORKS, max_res=8)
    nets, opts = _networks_and_optimizers(cfg)
    first = ckpt.save_snapshot(tmp_path, 8, cfg, nets, opts)
    real_save = ckpt.save_file

    def fills_the_disk(tensors, path):
        if "energy" in str(path):
            path.write_bytes(b"half a file")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(tensors, path)

    monkeypatch.setattr(ckpt, "save_file", fills_the_disk)
    with pytest.raises(UserError) as caught:
        ckpt.save_snapshot(tmp_path, 16, cfg, nets, opts)
    message = str(caught.value)
    assert str(tmp_path) in message and "MiB" in message and "\n" not in message
    assert "--resume auto" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]  # nothing partial
    ckpt.check_snapshot(first)


def test_other_write_errors_still_leave_nothing_partial(tmp_path, monkeypatch):
    cfg = make_config("demo", **TINY_NETWORKS, max_res=8)
    nets, opts = _networks_and_optimizers(cfg)

    def broken(tensors, path):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(ckpt, "save_file", broken)
    with pytest.raises(OSError):
        ckpt.save_snapshot(tmp_path, 16, cfg, nets, opts)
    assert list(tmp_path.iterdir()) == []
