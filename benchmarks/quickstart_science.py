"""Does MaskLAM beat LAPO at the quickstart's scale? The quickstart over 3 training seeds, per seed and mean.

    .venv/bin/python benchmarks/quickstart_science.py [--preset cpu] [--seeds 0 1 2] [--out runs/quickstart_science]

Prints, for every method, the held-out normalised probe MSE and the normalised returns (ID, OOD) per
seed and as the mean, the LAPO / MaskLAM probe ratio, and the share of the gap to the distractor-free
upper bound that MaskLAM closes. Stages are cached: re-running reuses finished seeds.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from masklam.quickstart import QuickstartConfig, format_gaps, run, summarize


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/quickstart_science")
    args = ap.parse_args()
    res = run(QuickstartConfig(preset=args.preset, seeds=tuple(args.seeds), out=Path(args.out), progress=False))
    rows = res["rows"]
    per_seed = {s: summarize([r for r in rows if int(r["seed"]) == s]) for s in args.seeds}
    methods = list(res["summary"])

    def cell(x: float | None, nd: int = 3) -> str:
        return "-" if x is None or math.isnan(x) else f"{x:.{nd}f}"

    for key, title, nd in (("probe_nmse", "held-out normalised probe MSE (lower is better)", 3),
                           ("normalized_id", "normalised return, training distractors (ID)", 2),
                           ("normalized_ood", "normalised return, evaluation videos (OOD)", 2)):
        print(f"\n{title}\n| method | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean ± std |")
        print("|---" * (len(args.seeds) + 2) + "|")
        for m in methods:
            vals = [per_seed[s].get(m, {}).get(key) for s in args.seeds]
            if all(v is None for v in vals):
                continue
            ok = [v for v in vals if v is not None]
            print(f"| {m} | " + " | ".join(cell(v, nd) for v in vals) + f" | {np.mean(ok):.{nd}f} ± {np.std(ok):.{nd}f} |")
    s = res["summary"]
    if "lapo" in s and "masklam" in s:
        ratios = [per_seed[x]["lapo"]["probe_nmse"] / per_seed[x]["masklam"]["probe_nmse"] for x in args.seeds]
        print(f"\nLAPO / MaskLAM probe NMSE: mean over seeds {s['lapo']['probe_nmse']:.3f} / "
              f"{s['masklam']['probe_nmse']:.3f} = {s['lapo']['probe_nmse'] / s['masklam']['probe_nmse']:.2f}x "
              f"(per seed: {', '.join(f'{r:.2f}x' for r in ratios)}; goal >= 1.5x)")
        print(f"gap to LAPO distractor-free closed by MaskLAM: {format_gaps(s)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
