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
import time
from pathlib import Path
from typing import Any, Literal

from masklam.args import parse
from masklam.errors import MasklamError
from masklam.train.config import RECIPES as PRETRAIN_RECIPES

# What a preset fixes; everything not here takes the stage's own defaults. `methods` beyond the core
# three (lapo, masklam, lapo-clean) are the ones that fit the preset's time budget.
# Frame stack 3 for every LAM (LAOM's value; MaskLAM's paper uses 1): expert actions change every frame,
# so from (o_t, o_{t+1}) alone the agent's velocity and its action are confounded; with o_{t-2..t} the
# IDM sees the velocity. Measured here (cheetah-run, 40 x 250 frames, 1500 updates): distractor-free LAPO's
# held-out probe NMSE 0.53 with frame stack 3, while with frame stack 1 even MaskLAM stayed at 0.86.
# The default recipe `mask-target`: MaskLAM reconstructs the masked frame M*o_{t+1} at every pixel (background
# black) rather than weighting the error by M (the paper's loss; the authors' full recipe, 1.17x over 3 seeds
# against 1.57x for this one, is `--recipe paper`): at this scale the weighted loss is met by painting the
# single-coloured cheetah's colour everywhere, which needs no latent (probe NMSE 0.86 after 1000 and 3000
# updates, vs LAPO 0.89). `mask_target` only affects MaskLAM; LAPO ignores the mask options. Latent 16: a
# narrow latent makes LAPO choose between the background and the agent (docs/quickstart-science.md).
# Many short trajectories (80 x 125 frames rather than 40 x 250: the same frames, twice the backgrounds and
# starts): MaskLAM's IDM otherwise fits its training trajectories (probe NMSE train 0.63 vs held-out 0.77 at
# seed 1; with 80 x 125, 0.60 vs 0.66), and the held-out probe gets 8 trajectories instead of 4. Label
# budgets count trajectories, so 4 and 16 short ones hold the frames that 2 and 8 long ones did.
# Decoders: MaskLAM's 3-layer head trained 2500 updates (LAOM's count); with 300 the distractor-free latent
# policy stood still online (return 3; trained: 136-225). The BC normalisers get 1000 updates (250: 73).
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": dict(
        methods=["lapo", "masklam", "lapo-clean"],
        latent_dims=[16],
        labels=[4, 16],
        collect=dict(episodes=80, steps=125, seed=0, workers=2, action_noise=0.3, shadows=False, reflections=False),
        pretrain=dict(preset="cpu-small", updates=1000, frame_stack=3),
        bc=dict(updates=250, batch_size=64, lr=3e-4, encoder_scale=1, frame_stack=3),
        bc_full=dict(updates=1000),
        idm=dict(updates=250, batch_size=64, lr=3e-4),
        decode=dict(updates=2500, batch_size=256, layers=3),
        eval=dict(episodes=6, workers=2),
    ),
    "gpu": dict(
        methods=["lapo", "masklam", "lapo-clean", "laom", "laom-sup", "bc", "idm"],
        latent_dims=[1024],
        labels=[4, 16, 64],
        collect=dict(episodes=800, steps=125, seed=0, workers=14, action_noise=0.3, shadows=False, reflections=False),
        pretrain=dict(preset="h100", frame_stack=3),
        bc=dict(updates=4000, batch_size=256, lr=3e-4, encoder_scale=4, frame_stack=3),
        idm=dict(updates=3000, batch_size=256, lr=3e-4, encoder_scale=4),
        decode=dict(updates=2500, batch_size=512, layers=3),
        eval=dict(episodes=25, workers=14),
    ),
    # the same code path at a size the test suite affords
    "toy": dict(
        methods=["lapo", "masklam", "lapo-clean"],
        latent_dims=[16],
        labels=[1, 2],
        collect=dict(episodes=4, steps=24, seed=0, workers=1, action_noise=0.3, shadows=False, reflections=False),
        pretrain=dict(preset="cpu-small", updates=6, batch_size=8, log_every=3, ckpt_every=3, recon_samples=2,
                      heldout=0.25),
        bc=dict(updates=4, batch_size=8, frame_stack=1, hidden=32, heldout=0.25),
        idm=dict(updates=4, batch_size=8, hidden=32),
        decode=dict(updates=20, batch_size=16, hidden=32, heldout=0.25, layers=3),
        eval=dict(episodes=2, workers=0),
        env=dict(max_episode_steps=12),
    ),
}

MW_EVAL_STEPS = 200
"""Evaluation episode length on Meta-World: the scripted experts succeed within ~50-105 steps (README)."""


MASK_TARGET: dict[str, Any] = dict(mask_target=True)
"""Our variant of MaskLAM's loss: reconstruct M*o_{t+1} at every pixel (LAPO ignores it)."""
# How the LAMs learn (PretrainConfig fields on top of the preset's), by name: `mask-target` is our variant on
# the papers' text, and each of masklam.train.config's RECIPES (`paper`: the paper as written; `authors`: MaskLAM's
# authors' code for every pixel LAM) comes alone and with our variant on top (`authors+mask-target`). Measured
# against each other in docs/quickstart-science.md and docs/results.md.
RECIPES: dict[str, dict[str, Any]] = {"mask-target": MASK_TARGET}
for _name in (name for name in PRETRAIN_RECIPES if name != "default"):
    RECIPES[_name] = dict(recipe=_name)
    RECIPES[f"{_name}+mask-target"] = dict(recipe=_name, **MASK_TARGET)
Recipe = Literal[tuple(RECIPES)]  # type: ignore[valid-type]


def downstream_recipe(recipe: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(BC options, decoder options) of a quickstart recipe: the authors' latent BC and decoder with their
    pretraining, else the preset's own."""
    from masklam.downstream.bc import AUTHORS_LATENT_BC
    from masklam.downstream.decode import AUTHORS_DECODER

    if RECIPES[recipe].get("recipe") == "authors":
        return dict(AUTHORS_LATENT_BC), dict(AUTHORS_DECODER)
    return {}, {}


@dataclasses.dataclass
class QuickstartConfig:
    """Run the quickstart: MaskLAM vs LAPO (and the distractor-free upper bound) end to end."""

    preset: Literal["cpu", "gpu", "toy"] = "cpu"
    """cpu: under 20 minutes on 2 cores (16.3 measured, bf16 autocast); gpu: one H100 in about 20 minutes (LAMs
    with pretrain's h100 preset); toy: seconds, for tests."""
    task: str = "cheetah-run"
    """dm_control task with a shipped expert, or a Meta-World task (mw-push, ...: its scripted expert; collected
    without multisampling too, evaluated on 200-step episodes)."""
    distractors: str = "laom"
    """distractor preset of the distracted dataset and of evaluation."""
    recipe: Recipe = "mask-target"
    """how the LAMs learn: mask-target (ours, the measured winner at this scale: MaskLAM reconstructs
    M*o_{t+1}; frame stack 3, k = 1, Adam), authors (MaskLAM's authors' code, LAMs, latent BC and decoder: README,
    "Recipes"), authors+mask-target (ours on the authors'), paper (the paper as written: frame stack 1, LAOM's
    hyper-parameters; the quickstart's frame stack 3 still wins over it), paper+mask-target."""
    background_path: Path | None = None
    """background videos from a DAVIS-2017 root (JPEGImages/480p/<video>/*.jpg, the papers' backgrounds) or any
    folder of <video>/*.jpg folders, for the distracted data and both evaluation splits (ID: the folder's
    training videos, OOD: its held-out ones); default: the procedural videos."""
    seeds: tuple[int, ...] = (0,)
    """training seeds (the data are collected once, with the preset's collection seed)."""
    out: Path = Path("runs/quickstart")
    """run directory: results.csv, report.html, and every stage under stages/."""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, cuda:N"""
    progress: bool = True
    """progress bars."""

    def __post_init__(self) -> None:
        if not self.seeds:
            raise MasklamError("--seeds needs at least one seed")
        if self.background_path is not None:  # checked (a missing or empty folder) by the ExperimentConfig
            self.background_path = Path(self.background_path)


def experiment_config(cfg: QuickstartConfig):
    """The ExperimentConfig the quickstart runs."""
    from masklam.downstream.experiment import ExperimentConfig

    from masklam.devices import resolve_device
    from masklam.envs import suite_of

    p = PRESETS[cfg.preset]
    collect = {**p["collect"], "distractors": cfg.distractors, "policy": "expert"}
    env = dict(p.get("env", {}))
    if suite_of(cfg.task) == "metaworld":
        collect["multisample"] = False  # Meta-World's scene: ~2x faster to render (README, Distracting Meta-World)
        env.setdefault("max_episode_steps", MW_EVAL_STEPS)
    clean = {**collect, "distractors": "none"}  # no background: the folder plays no part in the clean data
    if cfg.background_path is not None:  # added only when given: the stages of the default keep their keys
        # absolute: one folder is one collect stage whatever the working directory
        collect["background_path"] = env["background_path"] = str(Path(cfg.background_path).expanduser().resolve())
    device = str(resolve_device(cfg.device))
    bc_recipe, decode_recipe = downstream_recipe(cfg.recipe)
    return ExperimentConfig(
        out=cfg.out, tasks=[cfg.task], methods=list(p["methods"]), latent_dims=list(p["latent_dims"]),
        labels=list(p["labels"]), seeds=list(cfg.seeds), splits=["id", "ood"],
        data={cfg.task: {"collect": collect, "collect_clean": clean}},
        pretrain={**p["pretrain"], **RECIPES[cfg.recipe]}, bc={**p["bc"], **bc_recipe},
        bc_full=dict(p.get("bc_full", {})), idm=dict(p["idm"]), decode={**p["decode"], **decode_recipe}, eval=dict(p["eval"]), env=env, device=device,
        progress=cfg.progress)


def run(cfg: QuickstartConfig) -> dict[str, Any]:
    """Run (or resume) the quickstart; returns {'rows', 'summary', 'table', 'seconds'}."""
    from masklam.downstream.experiment import run_experiment
    from masklam.downstream.results import read_results
    from masklam.downstream.stages import recipe_label
    from masklam.downstream.summary import format_table, gap_closed, headline_rows, summarize

    t0 = time.time()
    exp = experiment_config(cfg)
    print(f"quickstart ({cfg.preset}, recipe {cfg.recipe}): {cfg.task}, distractors {cfg.distractors}, "
          f"methods {', '.join(exp.methods)}, "
          f"seeds {list(cfg.seeds)}, label budgets {exp.labels} -> {cfg.out}")
    rows = run_experiment(exp, render=True)
    summary = summarize(headline_rows(read_results(cfg.out / "results.csv"))[0])  # as report.html shows it
    table = format_table(summary)
    seconds = time.time() - t0
    result = {"preset": cfg.preset, "recipe": cfg.recipe, "seconds": seconds, "summary": summary,
              "recipe_label": {m: recipe_label(m, exp.pretrain) for m in exp.methods},
              "gap_closed_probe": gap_closed(summary, "probe_nmse", True),
              "gap_closed_return_id": gap_closed(summary, "return_id", False)}
    (cfg.out / "quickstart.json").write_text(json.dumps(result, indent=1) + "\n")
    (cfg.out / "table.txt").write_text(table + "\n")
    print("\n" + table)
    print(f"\n{cfg.out / 'results.csv'}, {cfg.out / 'report.html'} ({seconds / 60:.1f} min)")
    return {**result, "rows": rows, "table": table}


def main(argv: list[str]) -> int:
    import sys

    from masklam.train.config import RECIPE_NOTICE

    cfg = parse(QuickstartConfig, argv)
    base = RECIPES[cfg.recipe].get("recipe")
    if base in RECIPE_NOTICE:
        print(RECIPE_NOTICE[base], file=sys.stderr)
    run(cfg)
    return 0
