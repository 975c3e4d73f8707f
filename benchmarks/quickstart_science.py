"""Which recipe should the quickstart run? LAPO vs MaskLAM per recipe, at the quickstart's scale, over seeds.

    .venv/bin/python benchmarks/quickstart_science.py --out runs/quickstart --seeds 0 1 2 \
        --recipes paper mask-target paper+mask-target [--ablation] [--full RECIPE]

Probe stage (every recipe): the quickstart's data and LAM settings, one LAM per method, recipe and seed, with
the same stage keys the quickstart uses (so a later `masklam quickstart --recipe R --out OUT` reuses them);
prints held-out probe NMSE per seed, mean ± standard error, and the LAPO / MaskLAM ratio per recipe.
`--ablation` adds LAPO with the mask input channel (paper recipe), the authors' ablation. `--full RECIPE` then
runs the whole quickstart (BC, decoders, online evaluation) for that recipe and prints its table.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from masklam import methods
from masklam.downstream.experiment import _datasets
from masklam.downstream.stages import pretrain_stage, recipe_label
from masklam.quickstart import RECIPES, QuickstartConfig, experiment_config, run


def sem(x: list[float]) -> float:
    return float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--methods", nargs="+", default=["lapo", "masklam", "lapo-clean"])
    ap.add_argument("--ablation", action="store_true", help="also LAPO with the mask input channel (paper recipe)")
    ap.add_argument("--full", choices=list(RECIPES), help="then run the whole quickstart with this recipe")
    ap.add_argument("--out", default="runs/quickstart")
    args = ap.parse_args()

    out = Path(args.out)
    table: dict[tuple[str, str], dict[int, float]] = {}
    walls: dict[tuple[str, str], list[float]] = {}
    variants = [(r, m, {}) for r in args.recipes for m in args.methods]
    if args.ablation:
        variants.append(("paper", "lapo", {"mask_channel": True}))
    for seed in args.seeds:
        for recipe, method, extra in variants:
            exp = experiment_config(QuickstartConfig(preset=args.preset, recipe=recipe, out=out, progress=False))
            data = _datasets(exp)[exp.tasks[0]][methods.get(method).variant]
            conf = {**exp.pretrain, **extra}
            t0 = time.time()
            _, res = pretrain_stage(out, methods.get(method).trainer, data, exp.latent_dims[0], seed,
                                    0, conf, exp.device, progress=False)
            label = (recipe_label(method, conf), method)
            table.setdefault(label, {})[seed] = float(res["probe_nmse"])
            walls.setdefault(label, []).append(time.time() - t0)
            print(f"seed {seed} {method:<11} {label[0]:<26} probe NMSE {res['probe_nmse']:.3f}", flush=True)

    print("\n| method | recipe | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean ± s.e. |")
    print("|---" * (len(args.seeds) + 3) + "|")
    for (recipe, method), by_seed in table.items():
        vals = [by_seed[s] for s in args.seeds]
        print(f"| {method} | {recipe} | " + " | ".join(f"{v:.3f}" for v in vals)
              + f" | {np.mean(vals):.3f} ± {sem(vals):.3f} |")
    summary = {}
    for recipe in args.recipes:
        lapo = table.get((recipe_label("lapo", RECIPES[recipe]), "lapo"))
        mask = table.get((recipe_label("masklam", RECIPES[recipe]), "masklam"))
        if lapo and mask:
            per = [lapo[s] / mask[s] for s in args.seeds]
            ratio = float(np.mean(list(lapo.values())) / np.mean(list(mask.values())))
            summary[recipe] = {"ratio": ratio, "per_seed": per}
            print(f"{recipe}: LAPO / MaskLAM probe NMSE {ratio:.2f}x (per seed {', '.join(f'{r:.2f}x' for r in per)})")
    (out / "recipes.json").write_text(json.dumps({"probe": {f"{m}|{r}": v for (r, m), v in table.items()},
                                                  "ratios": summary}, indent=1))
    if args.full:
        res = run(QuickstartConfig(preset=args.preset, recipe=args.full, seeds=tuple(args.seeds), out=out,
                                   progress=False))
        print(f"\nquickstart --recipe {args.full}, seeds {args.seeds}: {res['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
