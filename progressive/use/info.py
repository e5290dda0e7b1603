"""Text summaries of a dataset directory and of a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError, safe_open

from progressive.config.schedule import Schedule
from progressive.core.errors import UserError
from progressive.core.files import tree_size
from progressive.data.format import FORMAT, REJECTED_NAME, check_shard, read_meta
from progressive.metrics.stage import read_evaluations, summary_line
from progressive.model.networks import network_names
from progressive.run.folder import list_snapshots, metric_files, resolve_snapshot
from progressive.run.loading import read_state


def dataset_summary(path: Path) -> str:
    """A human-readable summary of the dataset at `path`: images, resolutions, shards, source."""
    path = Path(path)
    meta = read_meta(path)
    checks = ("per-record CRC32, shard sizes" if meta["version"] >= 2 else
              "none stored (older format: shard headers, PNG chunk CRCs, decoding)")
    rows: list[tuple[str, str]] = [
        ("format", f"{FORMAT} version {meta['version']}"),
        ("checksums", checks),
        ("images", f"{meta['count']:,}"),
        ("resolutions", ", ".join(str(r) for r in meta["resolutions"])),
        ("encoding", _ranges(meta["encoding"])),
        ("channels", str(meta["channels"])),
    ]
    shard_sizes = [tree_size(path / s["path"]) for s in meta["shards"]]
    sizes = ", ".join(_size(n) for n in shard_sizes[:8]) + (", ..." if len(shard_sizes) > 8 else "")
    rows.append(("shards", f"{len(shard_sizes)} ({sizes})" if shard_sizes else "0"))
    rows.append(("on disk", _size(tree_size(path))))
    source = meta.get("source")
    if isinstance(source, dict):
        kind = source.get("kind", "?")
        rest = {k: v for k, v in source.items() if k not in ("kind", "input")}
        text = f"{kind}, input {source.get('input', '?')}"
        text += "".join(f", {k} {v}" for k, v in rest.items())
        rows.append(("source", _short(text)))
    elif source is not None:
        rows.append(("source", _short(source)))
    if "split" in meta:
        rows.append(("split", _short(meta["split"])))
    masks = meta.get("masks")
    if isinstance(masks, dict):
        share = masks.get("observed_share", {})
        seen = ", ".join(f"{r}px {v:.0%}" for r, v in share.items() if isinstance(v, float))
        rows.append(("masks", _short(f"{masks.get('kind', '?')} (seed {masks.get('seed', '-')}); "
                                     f"observed {seen}")))
    rejected_file = path / REJECTED_NAME
    listed = None
    if rejected_file.exists():
        with open(rejected_file, errors="replace") as f:
            listed = sum(1 for line in f if line.strip())
    rejected = meta.get("rejected", listed)
    if isinstance(rejected, list):
        rejected = len(rejected)
    if rejected is not None:
        where = f" (listed in {REJECTED_NAME})" if listed else ""
        rows.append(("rejected", f"{rejected}{where}"))
    if "created" in meta:
        rows.append(("created", str(meta["created"])))
    shown = {"format", "version", "count", "max_res", "resolutions", "encoding", "channels",
             "shards", "source", "split", "rejected", "created", "masks"}
    for key, value in meta.items():  # whatever else the writer recorded (crop, resize, ...)
        if key not in shown:
            text = json.dumps(value) if isinstance(value, dict | list) else str(value)
            rows.append((key.replace("_", " "), _short(text)))
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"dataset {path}"] + [f"  {k:<{width}}  {v}" for k, v in rows])


def shard_problems(path: Path) -> list[str]:
    """One line per shard of the dataset at `path` whose size or header is wrong (cheap: two
    pages per shard are read)."""
    meta = read_meta(path)
    problems = []
    for shard in meta["shards"]:
        try:
            check_shard(Path(path), shard, len(meta["resolutions"]), int(meta["version"]))
        except UserError as e:
            problems.append(str(e))
    return problems


def _ranges(encoding: dict[int, str]) -> str:
    """{4: raw, 8: raw, 16: png} -> "raw 4..8, png 16"."""
    groups: list[list] = []
    for res in sorted(encoding):
        if groups and groups[-1][0] == encoding[res]:
            groups[-1][2] = res
        else:
            groups.append([encoding[res], res, res])
    return ", ".join(f"{e} {a}" if a == b else f"{e} {a}..{b}" for e, a, b in groups)


def _size(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def _short(value: object, limit: int = 200) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def checkpoint_summary(path: Path) -> str:
    """A human-readable summary of a run folder or snapshot: where training stands (stage,
    resolution, alpha, images shown), the configuration, parameter counts and recorded metrics.

    Reads only `state.json` and the safetensors headers, so it is quick at any model size.
    """
    snapshot = resolve_snapshot(path)
    state = read_state(snapshot)
    cfg, shown = state["config"], state["images_shown"]
    schedule = Schedule.from_config(cfg)
    phase = schedule.at(shown)
    counts = {}
    names = network_names(cfg.optim.half_lives())
    for name in names:
        file = snapshot / f"{name}.safetensors"
        try:
            with safe_open(str(file), framework="pt") as f:
                counts[name] = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
        except (OSError, SafetensorError) as e:
            raise UserError(f"{file} cannot be read ({e}); use another snapshot") from None
    run_dir = snapshot.parent
    snaps = list_snapshots(run_dir)
    stages = len(schedule.resolutions)
    kind = "fade-in" if phase.fading else "stable"
    lines = [
        f"checkpoint {snapshot}",
        f"  run folder     {run_dir} ({len(snaps)} snapshot(s))",
        f"  images shown   {shown:,} ({shown / 1000:g} kimg)",
        f"  stage          {phase.stage + 1} of {stages}, {kind}",
        f"  resolution     {phase.res}x{phase.res} (max {cfg.schedule.max_res})",
        f"  alpha          {phase.alpha:.4g}",
        f"  trained        {', '.join(str(r) for r in schedule.resolutions if r <= phase.res)}",
        "  parameters",
        *(f"    {name:14s} {counts[name]:,}" for name in names),
        "  configuration",
    ]
    lines.append(f"    {'preset':26s} {cfg.preset}")
    for section, fields in cfg.to_dict().items():
        for key, value in fields.items() if isinstance(fields, dict) else ():
            if isinstance(value, dict):  # a per-resolution table
                value = {r: value[r] for r in schedule.resolutions}
            lines.append(f"    {section + '.' + key:26s} {_short(value)}")
    for metric_file in metric_files(run_dir):
        try:
            last = json.loads(metric_file.read_text().strip().splitlines()[-1])
            lines.append(f"  {metric_file.stem:17s} {last['value']:.5g} at {last['res']}px, "
                         f"{last['images_shown']:,} images shown")
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            lines.append(f"  {metric_file.stem:17s} unreadable")

    evals = read_evaluations(run_dir)
    if evals:
        lines.append(f"  evaluations    {len(evals)}; latest: {summary_line(evals[-1])}")
    return "\n".join(lines)


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
