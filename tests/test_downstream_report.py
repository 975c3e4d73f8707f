"""report.py: parses results.csv, aggregates seeds correctly, renders HTML + PNGs, rejects bad input."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from masklam.downstream import figures, report, results, stages
from masklam.errors import MasklamError


TASKS, SEEDS = ("cheetah-run", "walker-run"), (0, 1, 2)


def _lam_key(method: str, task: str, seed: int, dim: int) -> str:
    """The fake pretrain stage behind a results row (the sweep's results method: lapo-clean, not lapo)."""
    return f"{method}-{task}-{seed}-{dim}"


def _write_results(path: Path, lam_stage: bool = True) -> None:
    """results.csv of a sweep; `lam_stage`: with that column (else as written before it existed)."""
    rng = np.random.default_rng(0)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(results.REQUIRED_COLUMNS + ["recipe"] + (["lam_stage"] if lam_stage else []))
        for task in TASKS:
            for seed in SEEDS:
                for split in ("id", "ood"):
                    for method in ("lapo", "masklam", "lapo-clean"):
                        if method == "lapo-clean" and split == "ood":
                            continue
                        recipe = "default+mask-target" if method == "masklam" else "default"
                        for dim in (16, 64):
                            for labels in (2, 8):
                                nr = 0.1 * labels / 8 + (0.2 if method == "masklam" else 0) + 0.01 * seed
                                w.writerow([method, task, dim, labels, seed, split, f"{rng.uniform(0.3, 1):.3f}",
                                            f"{800 * nr:.1f}", f"{nr:.4f}", recipe]
                                           + ([_lam_key(method, task, seed, dim)] if lam_stage else []))
                    for labels in (2, 8):
                        w.writerow(["bc", task, 0, labels, seed, split, "", "100", "0.12", "-"]
                                   + ([""] if lam_stage else []))
                    w.writerow(["bc-full", task, 0, 100, seed, split, "", "800", "1.0", "-"]
                               + ([""] if lam_stage else []))
                w.writerow(["bc-full-clean", task, 0, 100, seed, "id", "", "900", "1.0", "-"]
                           + ([""] if lam_stage else []))


def test_seed_curves_average_over_tasks_then_seeds() -> None:
    R = results.Row
    # the tasks anti-correlated over seeds: every seed's task average is 5, so over tasks the SE is 0
    rows = [R("m", "a", 8, 2, 0, "id", None, 0, 1.0), R("m", "b", 8, 2, 0, "id", None, 0, 9.0),
            R("m", "a", 8, 2, 1, "id", None, 0, 5.0), R("m", "b", 8, 2, 1, "id", None, 0, 5.0),
            R("m", "a", 8, 2, 2, "id", None, 0, 9.0), R("m", "b", 8, 2, 2, "id", None, 0, 1.0)]
    xs, mean, sem = figures.seed_curves(rows, "labels", "normalized_return", figures.AVERAGE)["m"]
    assert xs.tolist() == [2.0] and mean.tolist() == [5.0] and sem[0] == 0.0
    # one task: 1, 5, 9 over seeds: standard error 4 / sqrt(3) (not the std, 3.27)
    xs, mean, sem = figures.seed_curves(rows, "labels", "normalized_return", "a")["m"]
    assert mean.tolist() == [5.0] and sem[0] == pytest.approx(4 / np.sqrt(3))


def test_method_table_averages_each_seeds_tasks_first() -> None:
    R = results.Row
    rows = []
    for seed, a in zip(SEEDS, (1.0, 5.0, 9.0)):  # task b is 20 - a: its offset cancels a's seed effect
        for task, v in (("a", a), ("b", 20.0 - a)):
            rows += [R("m", task, 8, 2, seed, split, 0.5, 100 * v, v) for split in ("id", "ood")]
    table = {(r[0], r[1]): r for r in report.method_table(rows, {})}
    # average: each seed's task average is 10 (so SE 0; over the 6 values it would be 2.67)
    assert table[("average", "m")][4:] == ["3", "0.500 ± 0.000", "1000.0 ± 0.0", "10.000 ± 0.000",
                                           "10.000 ± 0.000"]
    assert table[("b", "m")][7] == "15.000 ± 2.309" and table[("a", "m")][7] == "5.000 ± 2.309"


def test_one_seed_has_no_standard_error() -> None:
    R = results.Row
    rows = [R("m", "a", 8, 2, 0, split, 0.25, 80.0, 0.5) for split in ("id", "ood")]
    cells = report.method_table(rows, {})[0][5:] + report.summary_table(rows)[0][8:]
    assert cells == ["0.250 (n=1)", "80.0 (n=1)", "0.500 (n=1)", "0.500 (n=1)", "0.250 (n=1)", "80.000 (n=1)",
                     "0.500 (n=1)"]


def _stage(run: Path, kind: str, key: str, config: dict, resolved: dict | None = None, recon: bool = False,
           done: bool = True) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = run / "stages" / kind / key
    d.mkdir(parents=True)
    (d / "stage.json").write_text(json.dumps({"kind": kind, "config": config}))
    if done:
        (d / "done.json").write_text(json.dumps({"hash": key, "result": {}}))
    if resolved is not None:
        (d / "config.json").write_text(json.dumps(resolved))
    if recon:
        plt.imsave(d / "recon.png", np.zeros((8, 8, 3)))
    return d


def _fake_run(run: Path) -> None:
    """results.csv (3 seeds, 2 tasks, 2 dims) and the pretrain stages behind it, as a sweep leaves them."""
    run.mkdir()
    _write_results(run / "results.csv")
    data = {t: [f"/data/{t}.h5"] for t in TASKS}
    (run / "experiment.json").write_text(json.dumps({
        "config": {"description": "a fake sweep", "pretrain": {"mask_target": True}},
        "datasets": data, "clean_datasets": {"cheetah-run": ["/data/cheetah-clean.h5"]}}))
    # walker-run's clean data was collected: its task and variant come from the collect stage
    collected = _stage(run, "collect", "c0ffee", {"task": "walker-run", "distractors": "none"}) / "data.h5"
    for task in TASKS:
        for seed in SEEDS:
            for dim in (16, 64):
                for method, paths in (("lapo", data[task]), ("masklam", data[task]),
                                      ("lapo-clean", ["/data/cheetah-clean.h5"] if task == "cheetah-run"
                                       else [str(collected)])):
                    conf = {"method": stages.lam_trainer(method), "data": paths, "latent_dim": dim, "seed": seed,
                            "labels": 0, **({"mask_target": True} if method == "masklam" else {})}
                    _stage(run, "pretrain", _lam_key(method, task, seed, dim), conf,
                           {"preset": "cpu-small", "total_steps": 1000}, recon=True)
    # LAMs from other sweeps of this run dir (not behind results.csv) and an unfinished one are not shown: one of
    # another dim, one of an earlier config with the same method, task, dim and seed as a row's
    _stage(run, "pretrain", "stale", {"method": "laom", "data": data["cheetah-run"], "latent_dim": 999, "seed": 0},
           {"preset": "h100"}, recon=True)
    _stage(run, "pretrain", "stale-same", {"method": "masklam", "data": data["cheetah-run"], "latent_dim": 64,
                                           "seed": 0, "labels": 0, "mask_target": True},
           {"preset": "h100", "total_steps": 6000}, recon=True)
    _stage(run, "pretrain", "running", {"method": "lapo", "data": data["cheetah-run"], "latent_dim": 16, "seed": 9},
           recon=True, done=False)


def test_report_renders(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _fake_run(run)
    assert report.main([str(run)]) == 0
    page = (run / "report.html").read_text()
    for name in ("return_vs_labels_id.png", "return_vs_labels_ood.png", "return_vs_dim_id.png",
                 "return_vs_dim_ood.png", "probe_vs_dim.png", "methods.png"):
        assert f'src="report/{name}"' in page
        assert (run / "report" / name).stat().st_size > 1000
    assert "a fake sweep" in page
    # every result row: masklam/cheetah/64/8/id over 3 seeds, normalised 0.3 + 0.01 * seed: 0.31 ± SE 0.006
    assert ("<td>masklam</td><td>default+mask-target</td><td>cpu-small, 1000 updates, dim 64</td>"
            "<td>cheetah-run</td><td>64</td><td>8</td><td>id</td><td>3</td>") in page
    assert "0.310 ± 0.006" in page and "0.310 ± 0.008" not in page  # the standard error, not the std
    # every method at the largest dim and budget, per task and averaged over tasks (seeds: 0.33, 0.34, 0.35)
    assert ("<td>average</td><td>masklam</td><td>default+mask-target</td><td>cpu-small, 1000 updates, dim 64</td>"
            "<td>3</td>") in page
    assert "<td>average</td><td>lapo-clean</td><td>default</td><td>cpu-small, 1000 updates, dim 64</td>" in page
    assert "<td>average</td><td>bc</td><td>-</td><td>-</td>" in page
    # reconstructions: side by side per task, dim and seed, captioned by method, recipe, seed and scale
    recon = page[page.index("FDM reconstructions"):]
    group = recon[recon.index("walker-run, latent dim 16, seed 1"):]
    group = group[:group.index("</div>")]
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", group)
    assert captions == ["lapo-clean · default · seed 1 · cpu-small, 1000 updates, dim 16",
                        "lapo · default · seed 1 · cpu-small, 1000 updates, dim 16",
                        "masklam · default+mask-target · seed 1 · cpu-small, 1000 updates, dim 16"]
    assert recon.count("<figure") == 3 * 2 * 2 * 3 and "999" not in recon and "seed 9" not in recon
    assert "h100" not in page  # the stale LAMs' scale: neither a second recon grid nor a second scale in a row
    src = re.search(r'<img src="(stages/pretrain/[^"]+/recon.png)">', recon).group(1)
    assert (run / src).is_file()


def test_report_shows_the_viz_of_a_stage_that_has_one(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    run = tmp_path / "run"
    _fake_run(run)
    viz = run / "stages" / "pretrain" / _lam_key("masklam", "cheetah-run", 0, 64) / "viz"
    viz.mkdir()
    plt.imsave(viz / "latents.png", np.zeros((8, 8, 3)))
    (viz / "viz.json").write_text(json.dumps({"figures": {"latents": "latents.png"},
                                              "fsq": {"used": 3, "codes": 8, "perplexity": 2.5}}))
    assert report.main([str(run)]) == 0
    page = (run / "report.html").read_text()
    section = page[page.index("<h2>What the latents mean</h2>"):]
    assert "masklam · cheetah-run · latent dim 64 · seed 0" in section and "3 of 8 codes used, perplexity 2.5" in section
    assert f'src="{viz.relative_to(run).as_posix()}/latents.png"' in section
    assert section.count("<h3>") == 1  # only the stage with a viz


def test_results_without_lam_stage_fall_back_to_method_task_dim_seed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _fake_run(run)
    rows = results.read_results(run / "results.csv")
    named = {lam.stage for lam in report.row_lams(run, rows)}
    assert len(named) == 3 * 2 * 2 * 3 and "stale-same" not in named and "running" not in named
    assert named == {r.extra["lam_stage"] for r in rows if "lam_stage" in r.extra}
    _write_results(run / "results.csv", lam_stage=False)  # written before results.csv had the column
    old = {lam.stage for lam in report.row_lams(run, results.read_results(run / "results.csv"))}
    assert old == named | {"stale-same"}


def test_report_without_several_dims_has_no_dim_figures(tmp_path: Path) -> None:
    rows = [r for r in csv.reader((_write_results(tmp_path / "all.csv") or tmp_path / "all.csv").open())]
    with (tmp_path / "results.csv").open("w", newline="") as f:
        csv.writer(f).writerows([rows[0]] + [r for r in rows[1:] if r[2] in ("0", "16")])
    page = report.render_report(tmp_path).read_text()
    assert "return_vs_labels_id.png" in page and "methods.png" in page
    assert "return_vs_dim" not in page and "probe_vs_dim" not in page and "Latent size" not in page


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
