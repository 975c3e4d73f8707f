"""`masklam quickstart`: MaskLAM's effect end to end on one task, sized for the machine at hand.

    masklam quickstart                  # cpu preset: cheetah-run, `laom` distractors, minutes on 2 cores
    masklam quickstart --preset gpu     # larger data, encoders, latents, 25 evaluation episodes
    masklam quickstart --seeds 0 1 2    # the science run of benchmarks/quickstart_science.py

It is one `masklam experiment` with an embedded config: collect a distracted dataset with the shipped
expert and its distractor-free twin (same seeds), train LAPO and MaskLAM on the distracted data and
LAPO on the clean data (the upper bound), with identical settings except the masked loss, probe
them, train latent BC and decoders for two label budgets, evaluate online in- and out-of-distribution,
print the table and write `runs/quickstart/results.csv` and `runs/quickstart/report.html`.
Every stage is cached: a second run reuses what is done, an interrupted one resumes.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tyro

from masklam.errors import MasklamError

# What a preset fixes; everything not here takes the stage's own defaults. `methods` beyond the core
# three (lapo, masklam, lapo-clean) are the ones that fit the preset's time budget.
# Frame stack 3 for every LAM (LAOM's value; MaskLAM's paper uses 1): expert actions change every frame,
# so from (o_t, o_{t+1}) alone the agent's velocity and its action are confounded; with o_{t-2..t} the
# IDM sees the velocity. Measured here (cheetah-run, 40 x 250 frames, 1500 steps): distractor-free LAPO's
# held-out probe NMSE 0.53 with frame stack 3, while with frame stack 1 even MaskLAM stayed at 0.86.
# MaskLAM reconstructs the masked frame M*o_{t+1} at every pixel (`mask_target`; background black) rather
# than weighting the error by M (the paper's loss): at this scale the weighted loss is met by painting the
# single-coloured cheetah's colour everywhere, which needs no latent (probe NMSE 0.86 after 1000 and 3000
# steps, vs LAPO 0.89). `mask_target` only affects MaskLAM; LAPO ignores the mask options. Latent 16: a
# narrow latent makes LAPO choose between the background and the agent (docs/quickstart-science.md).
# Many short trajectories (80 x 125 frames rather than 40 x 250: the same frames, twice the backgrounds and
# starts): MaskLAM's IDM otherwise fits its training trajectories (probe NMSE train 0.63 vs held-out 0.77 at
# seed 1; with 80 x 125, 0.60 vs 0.66), and the held-out probe gets 8 trajectories instead of 4. Label
# budgets count trajectories, so 4 and 16 short ones hold the frames that 2 and 8 long ones did.
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": dict(
        methods=["lapo", "masklam", "lapo-clean"],
        latent_dims=[16],
        labels=[4, 16],
        collect=dict(episodes=80, steps=125, seed=0, workers=2, action_noise=0.3, shadows=False, reflections=False),
        pretrain=dict(preset="cpu-small", steps=1000, batch_size=64, lr=3e-4, encoder_scale=1, frame_stack=3,
                      mask_target=True),
        bc=dict(steps=250, batch_size=64, lr=3e-4, encoder_scale=1, frame_stack=3),
        idm=dict(steps=250, batch_size=64, lr=3e-4),
        decode=dict(steps=300, batch_size=256),
        eval=dict(episodes=4, workers=2),
    ),
    "gpu": dict(
        methods=["lapo", "masklam", "lapo-clean", "laom", "laom-sup", "bc", "idm"],
        latent_dims=[1024],
        labels=[4, 16, 64],
        collect=dict(episodes=800, steps=125, seed=0, workers=14, action_noise=0.3, shadows=False, reflections=False),
        pretrain=dict(preset="cpu-small", steps=6000, batch_size=256, lr=3e-4, encoder_scale=4, head_dim=1024,
                      frame_stack=3, mask_target=True),
        bc=dict(steps=4000, batch_size=256, lr=3e-4, encoder_scale=4, frame_stack=3),
        idm=dict(steps=3000, batch_size=256, lr=3e-4, encoder_scale=4),
        decode=dict(steps=2500, batch_size=512),
        eval=dict(episodes=25, workers=14),
    ),
    # the same code path at a size the test suite affords
    "toy": dict(
        methods=["lapo", "masklam", "lapo-clean"],
        latent_dims=[16],
        labels=[1, 2],
        collect=dict(episodes=4, steps=24, seed=0, workers=1, action_noise=0.3, shadows=False, reflections=False),
        pretrain=dict(preset="cpu-small", steps=6, batch_size=8, head_dim=32, log_every=3, ckpt_every=3,
                      recon_samples=2, heldout=0.25, mask_target=True),
        bc=dict(steps=4, batch_size=8, frame_stack=1, hidden=32, heldout=0.25),
        idm=dict(steps=4, batch_size=8, hidden=32),
        decode=dict(steps=20, batch_size=16, hidden=32, heldout=0.25),
        eval=dict(episodes=2, workers=0),
        env=dict(max_episode_steps=12),
    ),
}

MW_EVAL_STEPS = 200
"""Evaluation episode length on Meta-World: the scripted experts succeed within ~50-105 steps (README)."""


@dataclasses.dataclass
class QuickstartConfig:
    """Run the quickstart: MaskLAM vs LAPO (and the distractor-free upper bound) end to end."""

    preset: Literal["cpu", "gpu", "toy"] = "cpu"
    """cpu: under 20 minutes on 2 cores (16.7 measured, bf16 autocast); gpu: one H100 in about 20 minutes;
    toy: seconds, for tests."""
    task: str = "cheetah-run"
    """dm_control task with a shipped expert, or a Meta-World task (mw-push, ...: its scripted expert; collected
    without multisampling too, evaluated on 200-step episodes)."""
    distractors: str = "laom"
    """distractor preset of the distracted dataset and of evaluation."""
    seeds: tuple[int, ...] = (0,)
    """training seeds (the data are collected once, with the preset's collection seed)."""
    out: Path = Path("runs/quickstart")
    """run directory: results.csv, report.html, and every stage under stages/."""
    device: str = "auto"
    """auto (cuda if available), cpu, cuda."""
    progress: bool = True
    """progress bars."""

    def __post_init__(self) -> None:
        if not self.seeds:
            raise MasklamError("--seeds needs at least one seed")


def experiment_config(cfg: QuickstartConfig):
    """The ExperimentConfig the quickstart runs."""
    from masklam.downstream.experiment import ExperimentConfig

    from masklam.envs import suite_of

    p = PRESETS[cfg.preset]
    collect = {**p["collect"], "distractors": cfg.distractors, "policy": "expert"}
    env = dict(p.get("env", {}))
    if suite_of(cfg.task) == "metaworld":
        collect["multisample"] = False  # Meta-World's scene: ~2x faster to render (README, Distracting Meta-World)
        env.setdefault("max_episode_steps", MW_EVAL_STEPS)
    device = cfg.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return ExperimentConfig(
        out=cfg.out, tasks=[cfg.task], methods=list(p["methods"]), latent_dims=list(p["latent_dims"]),
        labels=list(p["labels"]), seeds=list(cfg.seeds), splits=["id", "ood"],
        data={cfg.task: {"collect": collect, "collect_clean": {**collect, "distractors": "none"}}},
        pretrain=dict(p["pretrain"]), bc=dict(p["bc"]), idm=dict(p["idm"]), decode=dict(p["decode"]),
        eval=dict(p["eval"]), env=env, device=device, progress=cfg.progress)


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per method, means over seeds (and label budgets): probe NMSE, ID/OOD return and normalised return."""
    out: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        m = out.setdefault(r["method"], {})
        if r["probe_nmse"] not in (None, "") and r["split"] == "id":
            m.setdefault(f"probe_nmse/seed{r['seed']}", []).append(float(r["probe_nmse"]))
        m.setdefault(f"return_{r['split']}", []).append(float(r["return"]))
        m.setdefault(f"normalized_{r['split']}", []).append(float(r["normalized_return"]))
        if r.get("success") not in (None, ""):
            m.setdefault(f"success_{r['split']}", []).append(float(r["success"]))
    summary: dict[str, dict[str, float]] = {}
    for method, vals in out.items():
        s = {k: float(np.mean(v)) for k, v in vals.items()}
        probes = [v for k, v in s.items() if k.startswith("probe_nmse/")]
        if probes:
            s["probe_nmse"], s["probe_nmse_std"] = float(np.mean(probes)), float(np.std(probes))
        summary[method] = s
    return summary


def gap_closed(summary: dict[str, dict[str, float]], key: str, lower_is_better: bool) -> float:
    """(LAPO - MaskLAM) / (LAPO - LAPO distractor-free) in `key`: the share of the distractors' damage undone."""
    try:
        lapo, mask, clean = (summary[m][key] for m in ("lapo", "masklam", "lapo-clean"))
    except KeyError:
        return math.nan
    gap = (lapo - clean) if lower_is_better else (clean - lapo)
    if not gap > 0:  # no gap to close: the upper bound is not better than LAPO (or a value is missing)
        return math.nan
    return ((lapo - mask) if lower_is_better else (mask - lapo)) / gap


def format_gaps(summary: dict[str, dict[str, float]]) -> str:
    """MaskLAM's `gap_closed` in probe NMSE and in normalised return (ID), as percentages or why there is none."""
    def pct(x: float) -> str:
        return "n/a (the upper bound is not above LAPO)" if math.isnan(x) else f"{100 * x:.0f}%"

    return (f"{pct(gap_closed(summary, 'probe_nmse', True))} in probe NMSE, "
            f"{pct(gap_closed(summary, 'normalized_id', False))} in normalised return (ID)")


def format_table(summary: dict[str, dict[str, float]]) -> str:
    """The results table the quickstart prints (means over seeds and label budgets)."""
    def f(x: float | None, nd: int = 3) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"

    head = f"{'method':<14}{'probe NMSE':>16}{'return ID':>11}{'norm ID':>9}{'return OOD':>12}{'norm OOD':>10}"
    lines = [head, "-" * len(head)]
    order = ["lapo-clean", "lapo", "masklam", "laom", "laom-sup", "bc", "idm", "bc-full", "bc-full-clean"]
    for m in sorted(summary, key=lambda k: order.index(k) if k in order else len(order)):
        s = summary[m]
        probe = f"{f(s.get('probe_nmse'))} ± {f(s.get('probe_nmse_std'), 2)}" if "probe_nmse" in s else "-"
        lines.append(f"{m:<14}{probe:>16}{f(s.get('return_id'), 0):>11}{f(s.get('normalized_id'), 2):>9}"
                     f"{f(s.get('return_ood'), 0):>12}{f(s.get('normalized_ood'), 2):>10}")
    won = [m for m in summary if "success_id" in summary[m] or "success_ood" in summary[m]]
    if won:
        lines.append("")
        lines.append("success rate ID / OOD: " + ", ".join(
            f"{m} {f(summary[m].get('success_id'), 2)} / {f(summary[m].get('success_ood'), 2)}" for m in won))
    lapo, mask = summary.get("lapo", {}), summary.get("masklam", {})
    if "probe_nmse" in lapo and "probe_nmse" in mask and mask["probe_nmse"] > 0:
        lines.append("")
        lines.append(f"MaskLAM vs LAPO, held-out probe NMSE: {lapo['probe_nmse'] / mask['probe_nmse']:.2f}x lower")
        lines.append(f"gap to the distractor-free upper bound closed by MaskLAM: {format_gaps(summary)}")
    return "\n".join(lines)


def run(cfg: QuickstartConfig) -> dict[str, Any]:
    """Run (or resume) the quickstart; returns {'rows', 'summary', 'table', 'seconds'}."""
    from masklam.downstream.experiment import run_experiment

    t0 = time.time()
    exp = experiment_config(cfg)
    print(f"quickstart ({cfg.preset}): {cfg.task}, distractors {cfg.distractors}, methods {', '.join(exp.methods)}, "
          f"seeds {list(cfg.seeds)}, label budgets {exp.labels} -> {cfg.out}")
    rows = run_experiment(exp, render=True)
    summary = summarize(rows)
    table = format_table(summary)
    seconds = time.time() - t0
    result = {"preset": cfg.preset, "seconds": seconds, "summary": summary,
              "gap_closed_probe": gap_closed(summary, "probe_nmse", True),
              "gap_closed_return_id": gap_closed(summary, "normalized_id", False)}
    (cfg.out / "quickstart.json").write_text(json.dumps(result, indent=1) + "\n")
    (cfg.out / "table.txt").write_text(table + "\n")
    print("\n" + table)
    print(f"\n{cfg.out / 'results.csv'}, {cfg.out / 'report.html'} ({seconds / 60:.1f} min)")
    return {**result, "rows": rows, "table": table}


def main(argv: list[str]) -> int:
    run(tyro.cli(QuickstartConfig, args=argv))
    return 0
