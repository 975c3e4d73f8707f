"""report.py: parses results.csv, aggregates seeds correctly, renders HTML + PNGs, rejects bad input."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from masklam.downstream import report, results
from masklam.errors import MasklamError


def _write_results(path: Path) -> None:
    rng = np.random.default_rng(0)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(results.REQUIRED_COLUMNS)
        for task in ("cheetah-run", "walker-run"):
            for seed in (0, 1):
                for split in ("id", "ood"):
                    for method in ("lapo", "masklam"):
                        for dim in (16, 64):
                            for labels in (2, 8):
                                nr = 0.1 * labels / 8 + (0.2 if method == "masklam" else 0) + 0.01 * seed
                                w.writerow([method, task, dim, labels, seed, split, f"{rng.uniform(0.3, 1):.3f}",
                                            f"{800 * nr:.1f}", f"{nr:.4f}"])
                    for labels in (2, 8):
                        w.writerow(["bc", task, 0, labels, seed, split, "", "100", "0.12"])
                    w.writerow(["bc-full", task, 0, 100, seed, split, "", "800", "1.0"])


def test_seed_curves_average_over_tasks_then_seeds() -> None:
    R = results.Row
    rows = [R("m", "a", 8, 2, 0, "id", None, 0, 1.0), R("m", "b", 8, 2, 0, "id", None, 0, 3.0),
            R("m", "a", 8, 2, 1, "id", None, 0, 5.0), R("m", "b", 8, 2, 1, "id", None, 0, 7.0)]
    xs, mean, std = report.seed_curves(rows, "labels", "normalized_return", report.AVERAGE)["m"]
    # seed 0 averages to 2, seed 1 to 6: mean 4, std 2
    assert xs.tolist() == [2.0] and mean.tolist() == [4.0] and std.tolist() == [2.0]
    xs, mean, std = report.seed_curves(rows, "labels", "normalized_return", "a")["m"]
    assert mean.tolist() == [3.0] and std.tolist() == [2.0]


def test_report_renders(tmp_path: Path) -> None:
    _write_results(tmp_path / "results.csv")
    (tmp_path / "lam" / "x").mkdir(parents=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.imsave(tmp_path / "lam" / "x" / "recon.png", np.zeros((8, 8, 3)))
    assert report.main([str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    for name in ("return_vs_labels_id.png", "return_vs_dim_ood.png", "probe_vs_dim.png", "id_vs_ood.png"):
        assert f'src="report/{name}"' in page
        assert (tmp_path / "report" / name).stat().st_size > 1000
    assert 'src="lam/x/recon.png"' in page
    # the table shows masklam/cheetah/64/8/id: both seeds, normalised return 0.3 + 0.01 * seed
    assert "<td>masklam</td><td>cheetah-run</td><td>64</td><td>8</td><td>id</td><td>2</td>" in page
    assert "0.305 ± 0.005" in page


def test_report_bad_input(tmp_path: Path) -> None:
    with pytest.raises(MasklamError, match="no such file"):
        results.read_results(tmp_path / "results.csv")
    (tmp_path / "results.csv").write_text("method,task\nx,y\n")
    with pytest.raises(MasklamError, match="missing columns"):
        results.read_results(tmp_path / "results.csv")
    (tmp_path / "results.csv").write_text(",".join(results.REQUIRED_COLUMNS) + "\nlapo,t,8,2,0,id,abc,1,1\n")
    with pytest.raises(MasklamError, match="probe_nmse"):
        results.read_results(tmp_path / "results.csv")


def test_over_seeds_is_the_one_aggregation() -> None:
    st = results.over_seeds([(0, 1.0), (0, 3.0), (1, 6.0), (1, None), (2, float("nan"))])
    # seed 0 averages to 2, seed 1 is 6 (missing values skipped): mean 4, std 2, SE = sample std / sqrt 2 = 2
    assert st.per_seed == {0: 2.0, 1: 6.0} and st.n == 2
    assert (st.mean, st.std) == (4.0, 2.0) and st.sem == pytest.approx(2.0)
    empty = results.over_seeds([(0, None)])
    assert np.isnan(empty.mean) and empty.n == 0
