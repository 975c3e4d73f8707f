"""The named sources of `masklam pretrain`'s unset fields, and the notes on using them for other data.

- PRESETS (`--preset`): the scale (run length, batch, widths, latent size);
- RECIPES (`--recipe`): how a LAM learns, per method (MaskLAM's paper as written, its authors' code, LAOM's code),
  and RECIPE_PRESETS: a recipe's values that hold at some presets only (the authors' run lengths and sizes);
- suite_note / task_note: one line when data of another benchmark suite or task than the values were chosen for
  train with them.

How they combine with the method's defaults and explicit options: masklam.train.config.
"""
from __future__ import annotations

from typing import Any, Mapping

from masklam.models.lam import LAOM_METHODS as LAOM, PIXEL_METHODS as PIXEL

PRESETS: dict[str, dict[str, Any]] = {
    "cpu-small": dict(updates=1500, batch_size=64, lr=3e-4, encoder_scale=1, latent_dim=128, head_dim=256,
                      head_blocks=2, warmup_frac=0.02, schedule="constant", labels_batch_size=32),
    # the quickstart's gpu preset: cpu-small's optimiser at 4x the batch, 4x the encoder width and LAOM's head
    # width of 1024, for 6000 updates (about 20 minutes of the whole quickstart on one H100)
    "h100": dict(updates=6000, batch_size=256, lr=3e-4, encoder_scale=4, latent_dim=128, head_dim=1024,
                 head_blocks=2, warmup_frac=0.02, schedule="constant", labels_batch_size=32),
    "paper": dict(epochs=10.0, batch_size=512, lr=1e-4, encoder_scale=6, latent_dim=8192,
                  head_dim=1024, head_blocks=2, warmup_frac=0.3, schedule="linear", labels_batch_size=128),
}
PRESETS["paper-metaworld"] = PRESETS["paper"]  # the papers give no other values for Meta-World; the authors' code
# does (RECIPE_PRESETS)
PRESET_SUITE = {"paper": "dmc", "paper-metaworld": "metaworld"}
"""The benchmark suite a preset's values were chosen for, where it matters (suite_note)."""
# How lapo/masklam learn, by name (each recipe's values win over the method's defaults and the preset; explicit
# options win over the recipe):
# - `default`: the method's defaults (the papers' text: frame stack 1, k = 1), the preset's optimiser.
# - `paper`: MaskLAM's paper as written (its appendix): frame stack 1, k = 1, its masked loss, LAOM's
#   hyper-parameters, which the `paper` preset holds (Adam lr 1e-4, 3 warm-up epochs of 10, linear decay, latent
#   up to 8192). Until 2026-12-04 `paper` named what is now `authors`.
# - `authors`: MaskLAM's authors' code (GitHub tsakman23/IM-LAM, fa6785b6; ../shared/reference/facts.md, sections
#   9 and 13), which disagrees with the paper's text: frame stack 3; MaskLAM's IDM sees the stacks at t and t+k,
#   k uniform in 1..9 (the FDM predicts o_{t+1}), the agent mask a 4th input channel of every frame, its masked
#   error normalised once per batch; their LAPO baseline sees one window o_{t-2..t+1} (k = 1 only); orthogonal
#   init; centred pixels and a 0.5*tanh output; an FDM 1.5x as wide as the IDM with their decoder layout; AdamW
#   lr 6e-4, weight decay 0.01, cosine to 0 with no warm-up; at the paper preset batch 512, latent 128, IDM
#   width x4 (FDM x6), 2 epochs (RECIPE_PRESETS).
_AUTHORS_COMMON = dict(frame_stack=3, optimizer="adamw", weight_decay=0.01, lr=6e-4, warmup_frac=0.0,
                       schedule="cosine", init="orthogonal", pixels="centered", fdm_width=1.5, decoder="authors")
# - `laom-code` for laom, laom-sup (and lapo, below): LAOM's code (github.com/joon-stack/laom's initial release, whose
#   parameter counts are the paper's Table 4; docs/laom-vs-code.md): its head layout with 3 blocks, its encoder
#   (strided convs, ReLU6, no final activation), pixels 2 x/255 - 1, orthogonal init, its 1-of-8 augmentations;
#   laom-sup with the EMA target of its code and Table 7 (the paper's text: stop-grad). Its optimiser, sizes and run
#   length are the `paper` preset's (Table 6). For lapo: LAOM's LAPO baseline (its configs/lapo.yaml, src/nn.py's
#   LAPO): frame stack 3, k in 1..10, its strided ReLU6 encoders (a GELU before the IDM's Linear), the FDM predicting
#   the whole next stack with the authors' decoder layout in ReLU6 and a tanh, pixels 2 x/255 - 1, orthogonal init, no
#   augmentation; latent 8192, widths x6, Adam 1e-4, 3 of 10 epochs warm-up: the paper preset's (Tables 4-5).
_LAOM_CODE = dict(heads="laom", head_blocks=3, encoder="laom", pixels="signed", init="orthogonal", aug_style="laom")
_LAOM_LAPO = dict(frame_stack=3, max_offset=10, encoder="laom", decoder="laom", pixels="signed", init="orthogonal")
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "default": {},
    "paper": {
        "lapo": dict(frame_stack=1, max_offset=1),
        "masklam": dict(frame_stack=1, max_offset=1),
    },
    "authors": {
        "lapo": dict(_AUTHORS_COMMON, max_offset=1, idm_window="single", mask_channel=False),
        "masklam": dict(_AUTHORS_COMMON, max_offset=9, idm_window="pair", mask_channel=True, mask_norm="batch"),
    },
    "laom-code": {
        "lapo": dict(_LAOM_LAPO),
        "laom": dict(_LAOM_CODE),
        "laom-sup": dict(_LAOM_CODE, target="ema"),
    },
}
# Both codes pass over the windows in shuffled epochs (`sampling`): at the paper presets, where their run length is a
# number of epochs; at the others (a number of updates) windows are drawn with replacement, as ours.
_MASKLAM_PAPER_RUNS = {"paper": dict(epochs=2.0, batch_size=512, latent_dim=128, encoder_scale=4, sampling="epochs"),
                       # their Meta-World run (facts.md, section 9): lr 3e-4, batch 128, 4 epochs
                       "paper-metaworld": dict(epochs=4.0, batch_size=128, lr=3e-4, latent_dim=128, encoder_scale=4,
                                               sampling="epochs")}
RECIPE_PRESETS: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "authors": {preset: {method: values for method in PIXEL} for preset, values in _MASKLAM_PAPER_RUNS.items()},
    "laom-code": {preset: {method: dict(sampling="epochs") for method in ("lapo",) + LAOM}
                  for preset in ("paper", "paper-metaworld")},
}
"""A recipe's values per method that hold at some presets only (MaskLAM's authors' run length and sizes are the
paper presets'; LAOM's code's are the paper preset's own); both codes' shuffled epochs there."""
RECIPE_NOTICE = {"paper": "note: --recipe paper is MaskLAM's paper as written (frame stack 1, LAOM's "
                          "hyper-parameters); what it named before 2026-12-04, the authors' code, is --recipe authors"}
"""One line printed when a recipe whose meaning changed is used."""


PAPER_TASK_VALUES: dict[tuple[str, str], dict[str, Any]] = {("laom-sup", "cheetah-run"): {"sup_coef": 0.001}}
"""Values a paper used on one task only ((method, task) -> fields): LAOM's Table 7 supervision weight."""


def task_note(cfg: Any, meta: Mapping[str, Any]) -> str | None:
    """A one-line note when data of a task (their file attrs `meta`: domain_name-task_name) train a method (`cfg`: a
    PretrainConfig) with a value other than the one its paper used on that task (PAPER_TASK_VALUES; a value given on
    the command line that equals the field's default cannot be told from it, and is noted too)."""
    task = f"{meta.get('domain_name')}-{meta.get('task_name')}"
    paper = PAPER_TASK_VALUES.get((cfg.method, task), {})
    differs = {k: v for k, v in paper.items() if getattr(cfg, k) != v}
    if not differs:
        return None
    given = ", ".join(f"--{k.replace('_', '-')} {getattr(cfg, k)}" for k in differs)
    wanted = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in differs.items())
    return f"{cfg.method} trains on {task} with {given}; its paper used {wanted} on this task"


def recipe_at_preset(recipe: str, preset: str, method: str) -> dict[str, Any]:
    """The values `recipe` holds for `method` at `preset` only (RECIPE_PRESETS)."""
    return RECIPE_PRESETS.get(recipe, {}).get(preset, {}).get(method, {})


SUITE_NAMES = {"dmc": "control-suite", "metaworld": "Meta-World"}


def suite_note(cfg: Any, meta: Mapping[str, Any]) -> str | None:
    """A one-line note when data of one suite (their file attrs `meta`: Meta-World's domain is "mw", as
    masklam.envs.parse_task names it; data of no known domain, e.g. imported video, are of none) train at a preset
    whose recipe values were chosen for the other suite, and the recipe holds other values for theirs (the authors':
    `paper` is their control-suite run, `paper-metaworld` their Meta-World run); None otherwise."""
    if "domain_name" not in meta or cfg.preset not in PRESET_SUITE:
        return None
    suite = "metaworld" if meta["domain_name"] == "mw" else "dmc"
    if PRESET_SUITE[cfg.preset] == suite:
        return None
    other = next(p for p, s in PRESET_SUITE.items() if s == suite)
    recipe = RECIPES.get(cfg.recipe, {}).get(cfg.method, {})
    here, there = ({**recipe, **recipe_at_preset(cfg.recipe, p, cfg.method)} for p in (cfg.preset, other))
    differs = {k: v for k, v in there.items() if here.get(k) != v and getattr(cfg, k) != v}  # not given already
    if not differs:
        return None
    values = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in differs.items())
    return (f"these are {SUITE_NAMES[suite]} data, and --preset {cfg.preset} holds the "
            f"{SUITE_NAMES[PRESET_SUITE[cfg.preset]]} values of --recipe {cfg.recipe}; its {SUITE_NAMES[suite]} "
            f"values ({values}) are --preset {other}")
