"""report.py: parses results.csv, aggregates seeds correctly, renders HTML + PNGs, rejects bad input."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from masklam import methods
from masklam.downstream import figures, report, results, sweep
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


def test_a_curve_of_rows_without_its_value_is_not_drawn(tmp_path: Path) -> None:
    R = results.Row  # LAMs trained with --heldout 0 have no probe: no empty "probe NMSE" figure
    rows = [R("m", "a", d, 2, 0, "id", None, 0, 0.5) for d in (8, 16)]
    assert not figures.curve_grid(rows, "latent_dim", "probe_nmse", lambda r: True, "probe", tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()
    assert figures.curve_grid(rows, "latent_dim", "normalized_return", lambda r: True, "ret", tmp_path / "r.png")


def test_method_table_averages_each_seeds_tasks_first() -> None:
    R = results.Row
    rows = []
    for seed, a in zip(SEEDS, (1.0, 5.0, 9.0)):  # task b is 20 - a: its offset cancels a's seed effect
        for task, v in (("a", a), ("b", 20.0 - a)):
            rows += [R("m", task, 8, 2, seed, split, 0.5, 100 * v, v) for split in ("id", "ood")]
    table = {(r[0], r[1]): r for r in report.method_table(rows, {})}
    # average: each seed's task average is 10 (so SE 0; over the 6 values it would be 2.67); columns: seeds,
    # probe NMSE, return ID, of expert, norm ID, return OOD, norm OOD
    assert table[("average", "m")][4:] == ["3", "0.500 ± 0.000", "1000 ± 0", "-", "10.00 ± 0.00", "1000 ± 0",
                                           "10.00 ± 0.00"]
    assert table[("b", "m")][8] == "15.00 ± 2.31" and table[("a", "m")][8] == "5.00 ± 2.31"


def test_one_seed_shows_the_episodes_standard_error_in_both_tables() -> None:
    R = results.Row
    rows = [R("m", "a", 8, 2, 0, split, 0.25, 80.0, 0.5, extra={"return_sem": "4.0"}) for split in ("id", "ood")]
    # probe NMSE: no standard error; return: the episodes'; normalised: the return's relative error carried over
    assert report.method_table(rows, {})[0][5:] == ["0.250", "80 ± 4", "-", "0.50 ± 0.03", "80 ± 4", "0.50 ± 0.03"]
    assert report.summary_table(rows)[0][7:] == report.method_table(rows, {})[0][5:]


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
    for task in TASKS:
        for seed in SEEDS:
            for dim in (16, 64):
                for method in ("lapo", "masklam", "lapo-clean"):
                    conf = {"method": methods.get(method).trainer, "latent_dim": dim, "seed": seed, "labels": 0}
                    _stage(run, "pretrain", _lam_key(method, task, seed, dim), conf,
                           {"preset": "cpu-small", "total_steps": 1000}, recon=True)
    manifest = [{"method": r.method, "task": r.task, "latent_dim": r.latent_dim, "labels": r.labels, "seed": r.seed,
                 "split": r.split, "variant": methods.get(r.method).variant, "recipe": r.extra.get("recipe", "-"),
                 "stages": {"pretrain": f"stages/pretrain/{r.extra['lam_stage']}"} if "lam_stage" in r.extra else {}}
                for r in results.read_results(run / "results.csv")]
    (run / "manifest.json").write_text(json.dumps({"rows": manifest}))
    # LAMs from other sweeps of this run dir (not in its manifest) and an unfinished one are not shown: one of
    # another dim, one of an earlier config with the same method, task, dim and seed as a row's
    _stage(run, "pretrain", "stale", {"method": "laom", "data": data["cheetah-run"], "latent_dim": 999, "seed": 0},
           {"preset": "h100"}, recon=True)
    _stage(run, "pretrain", "stale-same", {"method": "masklam", "data": data["cheetah-run"], "latent_dim": 64,
                                           "seed": 0, "labels": 0, "mask_target": True},
           {"preset": "h100", "total_steps": 6000}, recon=True)
    _stage(run, "pretrain", "running", {"method": "lapo", "data": data["cheetah-run"], "latent_dim": 16, "seed": 9},
           recon=True, done=False)


def test_report_renders(tmp_path: Path) -> None:
    from masklam import locks
    from masklam.errors import MasklamRuntimeError

    run = tmp_path / "run"
    _fake_run(run)
    with locks.output_lock(run / "sweep-seeds-0"):  # a sweep writing the run directory
        held = dict(locks._HELD)
        locks._HELD.clear()  # as if another process held it
        try:
            with pytest.raises(MasklamRuntimeError, match="sweep-seeds-0 is being written by another"):
                report.main([str(run)])
        finally:
            locks._HELD.update(held)
    assert report.main([str(run)]) == 0  # the sweep done: its lock is free
    page = (run / "report.html").read_text()
    for name in ("return_vs_labels_id.png", "return_vs_labels_ood.png", "return_vs_dim_id.png",
                 "return_vs_dim_ood.png", "probe_vs_dim.png", "methods.png"):
        assert f'src="report/{name}"' in page
        assert (run / "report" / name).stat().st_size > 1000
    assert "a fake sweep" in page
    # every result: masklam/cheetah/64/8 over 3 seeds, return ID 800 * (0.3 + 0.01 * seed): 248 ± SE 4.6
    assert ("<td>masklam</td><td>default+mask-target</td><td>cpu-small, 1000 updates, dim 64</td>"
            "<td>cheetah-run</td><td>64</td><td>8</td><td>3</td>") in page
    assert "<td>248 ± 5</td>" in page and "248 ± 7" not in page  # the standard error, not the std
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
    assert ("masklam · cheetah-run · latent dim 64 · seed 0" in section
            and "3 of 8 codes used, perplexity 2.5" in section)
    assert f'src="{viz.relative_to(run).as_posix()}/latents.png"' in section
    assert section.count("<h3>") == 1  # only the stage with a viz


def test_the_lams_shown_are_the_manifests(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _fake_run(run)
    rows = results.read_results(run / "results.csv")
    named = {lam.stage for lam in report.row_lams(sweep.read_manifest(run))}
    assert len(named) == 3 * 2 * 2 * 3 and "stale-same" not in named and "running" not in named
    assert named == {r.extra["lam_stage"] for r in rows if "lam_stage" in r.extra}
    (run / "manifest.json").unlink()  # a run directory written before manifests: no LAMs guessed from stages
    page = report.render_report(run).read_text()
    assert "No manifest.json" in page and "FDM reconstructions" not in page
    (run / "manifest.json").write_text("[1, 2]")
    with pytest.raises(MasklamError, match="not a manifest"):
        report.render_report(run)


def test_the_report_opens_with_the_quickstarts_headline_and_table(tmp_path: Path) -> None:
    from masklam.downstream.summary import format_table, headline, headline_rows, summarize, table_cells

    raw = [{"method": m, "task": "cheetah-run", "latent_dim": 0 if m == "bc-full" else 16, "labels": n, "seed": 0,
            "split": split, "probe_nmse": None if m == "bc-full" else p, "return": r + n, "return_sem": 3.0,
            "normalized_return": (r + n) / 100, "expert_fraction": (r + n) / 700, "recipe": "default"}
           for m, p, r in (("lapo", 0.9, 20.0), ("masklam", 0.6, 50.0), ("lapo-clean", 0.5, 60.0), ("bc-full", 0, 99))
           for n in (4, 16) for split in ("id", "ood")]
    results.write_results(tmp_path / "results.csv", raw)
    page = report.render_report(tmp_path).read_text()
    rows = results.read_results(tmp_path / "results.csv")
    summary = summarize(headline_rows(rows)[0])
    lines = headline(summary)
    assert lines[0] == "MaskLAM vs LAPO, held-out probe NMSE: 1.50x lower" and "75% in probe NMSE" in lines[1]
    assert page.index(lines[1]) < page.index("<h2>")  # the report opens with it
    table = format_table(summary)  # the quickstart's table.txt: the same cells, means over the label budgets
    for cells in table_cells(summary):
        assert "".join(f"<td>{c}</td>" for c in cells[2:]) in page and " ".join(cells[2:4]) in " ".join(table.split())
    # lapo: return ID (24 + 36) / 2 over the budgets, ± the episodes' standard errors (3, 3) pooled: 2.1
    assert "<td>cheetah-run</td><td>lapo</td><td>default</td><td>?</td><td>1</td><td>0.900</td><td>30 ± 2</td>" in page


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
    (tmp_path / "results.csv").write_text(",".join(results.REQUIRED_COLUMNS) + "\n")
    with pytest.raises(MasklamError, match="no result rows"):
        results.read_results(tmp_path / "results.csv")
    (tmp_path / "results.csv").write_bytes(b"method,task\n\xff\xfe,1\n")  # not text
    with pytest.raises(MasklamError, match="results.csv is not a valid csv file"):
        results.read_results(tmp_path / "results.csv")
    (tmp_path / "results.csv").write_text(",".join(results.REQUIRED_COLUMNS) + "\nlapo,t,8,2,0,id,abc,1,1\n")
    with pytest.raises(MasklamError, match="probe_nmse"):
        results.read_results(tmp_path / "results.csv")
    for row, message in (("lapo,t,8,2,inf,id,0.5,1,1", "column 'seed' is not an integer: 'inf'"),
                         ("lapo,t,8,2", "results.csv:2: the row ends before column")):
        (tmp_path / "results.csv").write_text(",".join(results.REQUIRED_COLUMNS) + f"\n{row}\n")
        with pytest.raises(MasklamError, match=message):
            results.read_results(tmp_path / "results.csv")


def test_the_headline_says_higher_when_masklam_probes_worse() -> None:
    from masklam.downstream.summary import headline

    lines = headline({"masklam": {"probe_nmse": 0.9}, "lapo": {"probe_nmse": 0.6}, "lapo-clean": {"probe_nmse": 0.3}})
    assert lines[0] == "MaskLAM vs LAPO, held-out probe NMSE: 1.50x higher"


def test_rows_a_sweep_returns_read_as_results_csv_reads_them_back(tmp_path: Path) -> None:
    _write_results(tmp_path / "results.csv")
    back = results.read_results(tmp_path / "results.csv")
    with (tmp_path / "results.csv").open() as f:
        returned = [{k: (None if v == "" else v) for k, v in r.items()} for r in csv.DictReader(f)]
    assert results.as_rows(returned, tmp_path / "results.csv") == back


def test_example_frames_skip_data_they_cannot_show(tmp_path: Path, write_toy, monkeypatch) -> None:
    import h5py

    (tmp_path / "shards.parquet").write_bytes(b"PAR1 not hdf5")
    assert not figures.example_frames(tmp_path / "shards.parquet", tmp_path / "a.png")
    data = write_toy(tmp_path / "d.h5")
    with h5py.File(data, "a") as f:  # trajectories numbered from 5: the first one is shown
        for name in sorted(f.keys(), key=int, reverse=True):
            f.move(name, str(int(name) + 5))
        assert "masks" in f["5"]
    import matplotlib.axes

    shown: list[np.ndarray] = []
    real_imshow = matplotlib.axes.Axes.imshow
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", lambda ax, img, *a, **k: (shown.append(np.asarray(img)),
                                                                                   real_imshow(ax, img, *a, **k))[1])
    assert figures.example_frames(data, tmp_path / "b.png") and (tmp_path / "b.png").is_file()
    with h5py.File(data, "a") as f:  # trajectory "5" (the first by number), six frames spread over it, then masked
        obs, masks = f["5"]["obs"][()], f["5"]["masks"][()]
        idx = np.linspace(0, len(obs) - 1, 6).astype(int)
        for name in f:
            del f[name]["masks"]
    want = [x for t in idx for x in (obs[t], obs[t] * masks[t][..., None])]  # column by column: frame, masked
    assert len(shown) == 12 and all(np.array_equal(a, b) for a, b in zip(shown, want))
    assert not figures.example_frames(data, tmp_path / "c.png") and not (tmp_path / "c.png").exists()  # no masks


def test_a_sweep_counts_the_trajectories_of_a_folder_of_shards(tmp_path: Path, write_toy) -> None:
    (tmp_path / "shards").mkdir()
    for i in range(2):
        write_toy(tmp_path / "shards" / f"{i}.h5", n_traj=5, seed=i)
    assert sweep._num_train_trajectories({"data": [str(tmp_path / "shards")], "heldout": 0.2}) == 8


def test_over_seeds_is_the_one_aggregation() -> None:
    st = results.over_seeds([(0, 1.0), (0, 3.0), (1, 6.0), (1, None), (2, float("nan"))])
    # seed 0 averages to 2, seed 1 is 6 (missing values skipped): mean 4, std 2, SE = sample std / sqrt 2 = 2
    assert st.per_seed == {0: 2.0, 1: 6.0} and st.n == 2
    assert (st.mean, st.std) == (4.0, 2.0) and st.sem == pytest.approx(2.0)
    empty = results.over_seeds([(0, None)])
    assert np.isnan(empty.mean) and empty.n == 0
