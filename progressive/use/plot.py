"""`progressive info RUN --plot FILE.png`: a run's progress against images shown.

Panels: SWD per level (held-out, stage-end evaluations) and the generator as initialised;
held-out reconstruction error beside the mean-image baseline; the training losses per tick;
the mean energy of held-out real images, samples and the out-of-distribution reference; and a
histogram of those three energies at the latest evaluation. Stage boundaries (where each
resolution starts fading in) are dotted vertical lines on every panel against images shown.
"""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure

from progressive.config.schedule import Schedule
from progressive.core.errors import UserError
from progressive.core.files import read_jsonl
from progressive.metrics.stage import read_evaluations
from progressive.run.folder import STATS_NAME, resolve_snapshot
from progressive.run.loading import read_state

LOSSES = ("rec_per_pixel", "kl", "latent_nll", "energy_real", "energy_fake")


def plot_run(run: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Draw the run's progress (see the module doc) to the PNG `out`, atomically."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--plot {out}: the file name must end in .png")
    if not out.parent.is_dir():
        raise UserError(f"--plot {out}: folder {out.parent} does not exist")
    snapshot = resolve_snapshot(run)
    run_dir, cfg = snapshot.parent, read_state(snapshot)["config"]
    evals, stats = read_evaluations(run_dir), read_jsonl(run_dir / STATS_NAME)
    if not evals and not stats:
        raise UserError(f"{run_dir} has no stats.jsonl or evaluations.jsonl to plot yet")
    schedule = Schedule.from_config(cfg)

    fig = Figure(figsize=(16, 8.5))  # drawn by Agg without pyplot's global state
    axes = fig.subplots(2, 3)
    (ax_swd, ax_rec, ax_loss), (ax_e, ax_hist, ax_text) = axes
    shown_max = max([e["images_shown"] for e in evals] + [s["images_shown"] for s in stats] + [1])

    def stages(ax) -> None:
        for start, res in zip(schedule.starts[1:], schedule.resolutions[1:], strict=True):
            if start <= shown_max:
                ax.axvline(start / 1000, color="grey", linestyle=":", linewidth=0.8)
                ax.text(start / 1000, 0.98, f" {res}px", transform=ax.get_xaxis_transform(),
                        fontsize=7, color="grey", ha="left", va="top")
        ax.set_xlabel("thousands of real images shown")

    with_swd = [e for e in evals if e.get("swd") is not None]
    levels = sorted({lvl for e in with_swd for lvl in e["swd_levels"]}, reverse=True)
    for lvl in levels:
        pts = [(e["kimg"], e["swd_per_level"][e["swd_levels"].index(lvl)])
               for e in with_swd if lvl in e["swd_levels"]]
        ax_swd.plot(*zip(*pts, strict=True), marker="o", markersize=3, label=f"{lvl} px level")
    if with_swd:
        ax_swd.plot([e["kimg"] for e in with_swd], [e["swd"] for e in with_swd], "k-o",
                    markersize=4, label="mean")
        ax_swd.plot([e["kimg"] for e in with_swd], [e["swd_at_init"] for e in with_swd], "k:x",
                    label="initial generator, same resolution")
        ax_swd.set_yscale("log")
        ax_swd.legend(fontsize=7)
    ax_swd.set_title("SWD x1e3, held-out vs samples (at each stage's resolution)")
    stages(ax_swd)

    if evals:
        k = [e["kimg"] for e in evals]
        ax_rec.plot(k, [e["recon"] for e in evals], "o-", label="held-out reconstruction")
        ax_rec.plot(k, [e["recon_baseline"] for e in evals], "x:", label="mean-image baseline")
        ax_rec.legend(fontsize=7)
    ax_rec.set_title("held-out reconstruction error (MSE per image, [-1, 1])")
    stages(ax_rec)

    if stats:
        k = [s["kimg"] for s in stats]
        for name in LOSSES:
            if all(name in s for s in stats):
                ax_loss.plot(k, [s[name] for s in stats], label=name, linewidth=1)
        ax_loss.set_yscale("symlog", linthresh=1.0)
        ax_loss.legend(fontsize=7)
    ax_loss.set_title("training losses (per tick; linear below 1, log above)")
    stages(ax_loss)

    colours = {"real": "tab:green", "generated": "tab:orange", "ood": "tab:red"}
    names = {"real": "held-out real", "generated": "samples",
             "ood": evals[-1].get("ood_reference", "OOD") if evals else "OOD"}
    if evals:
        k = [e["kimg"] for e in evals]
        key = {"real": "energy_real", "generated": "energy_generated", "ood": "energy_ood"}
        for kind, field in key.items():
            ax_e.plot(k, [e[field] for e in evals], "o-", color=colours[kind], label=names[kind])
        ax_e.legend(fontsize=7)
        last = evals[-1]
        for kind in ("real", "generated", "ood"):
            ax_hist.hist(last["energies"][kind], bins=30, alpha=0.5, color=colours[kind],
                         label=names[kind])
        ax_hist.legend(fontsize=7)
        ax_hist.set_title(f"energies at {last['kimg']:g} kimg ({last['res']} px, "
                          f"{last['n']} images each)")
        ax_hist.set_xlabel("energy (low = data-like)")
    ax_e.set_title("mean energy (low = data-like)")
    stages(ax_e)

    ax_text.axis("off")
    lines = [f"run {run_dir.name}", f"preset {cfg.preset}, max {cfg.schedule.max_res} px"]
    for e in evals:
        swd = f"SWD {e['swd']:.1f} (init {e['swd_at_init']:.1f})" if e.get("swd") else "SWD -"
        lines.append(f"{e['kimg']:>7g} kimg {e['res']:>4} px  {swd}  "
                     f"recon {e['recon_ratio']:.2f}x")
    ax_text.text(0, 1, "\n".join(lines[:28]), va="top", family="monospace", fontsize=7)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, out)
    return out
