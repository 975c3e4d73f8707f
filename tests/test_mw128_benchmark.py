"""benchmarks/mw128.py: each chunk is the shipped sweep restricted to one task and seed, and its table's numbers are
the seeds' mean and standard error."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mw128.py"
spec = importlib.util.spec_from_file_location("mw128", SCRIPT)
mw = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mw)


def _row(method: str, seed: int, split: str, probe: float | str, success: float | str, task: str = "mw-push",
         ret: float = 100.0) -> dict:
    return dict(method=method, task=task, latent_dim=16, labels=16, seed=seed, split=split, probe_nmse=probe,
                success=success, **{"return": ret})


def test_the_table_averages_seeds_and_divides_lapos_probe_by_each_methods() -> None:
    rows = [_row("lapo", s, sp, p, su) for s, p, su in ((0, 0.8, 0.5), (1, 0.6, 0.7)) for sp in ("id", "ood")]
    rows += [_row("masklam", s, sp, p, 1.0 if sp == "id" else 0.0) for s, p in ((0, 0.4), (1, 0.4))
             for sp in ("id", "ood")]
    rows += [_row("bc-full", 0, "id", "", "")]  # a normaliser, no latents (empty cells): not in the table
    rows += [_row("lapo-clean", 0, "id", 0.35, 0.5)]  # evaluated ID only, one seed
    cells = mw.summary(rows)
    assert set(cells) == {("mw-push", "lapo"), ("mw-push", "masklam"), ("mw-push", "lapo-clean")}
    lapo = cells["mw-push", "lapo"]
    assert (lapo["probe_nmse"].mean, lapo["probe_nmse"].sem) == pytest.approx((0.7, 0.1))  # std(ddof 1) / sqrt(2)
    assert (lapo["success_id"].mean, lapo["success_id"].sem) == pytest.approx((0.6, 0.1))
    assert cells["mw-push", "masklam"]["success_ood"].mean == pytest.approx(0.0)
    table = mw.markdown(rows).splitlines()
    assert table[3] == "| mw-push | masklam | 0,1 | 0.400 ± 0.000 | 1.75x | 1.00 ± 0.00 | 0.00 ± 0.00 |"
    assert table[4] == "| mw-push | lapo-clean | 0 | 0.350 (n=1) | 2.00x | 0.50 (n=1) | - |"


def test_merged_chunks_are_normalised_by_the_full_data_bc_over_every_seed_merged() -> None:
    rows = [_row("bc-full", 0, "id", "", 1.0, ret=100.0), _row("bc-full", 1, "id", "", 1.0, ret=300.0),
            _row("masklam", 0, "id", 0.4, 0.5, ret=100.0), _row("lapo-clean", 1, "id", 0.3, 0.5, ret=60.0),
            _row("bc-full-clean", 1, "id", "", 1.0, ret=120.0)]
    norm = {(r["method"], r["seed"]): r["normalized_return"] for r in mw.renormalized(rows)}
    assert norm["masklam", 0] == pytest.approx(0.5)  # 100 / mean(100, 300): not 100 / 100, its own seed's
    assert norm["lapo-clean", 1] == pytest.approx(0.5)  # the clean data's normaliser
    assert norm["bc-full", 1] == pytest.approx(1.5)


def test_a_chunk_reruns_a_row_without_losing_the_others() -> None:
    old = [_row("lapo", 0, "id", 0.9, 0.1), _row("lapo", 1, "id", 0.8, 0.2)]
    from masklam.downstream.results import merge_rows

    merged = merge_rows(old, [_row("lapo", 1, "id", 0.7, 0.3), _row("lapo", 2, "id", 0.6, 0.4)], mw.row_id)
    assert [(r["seed"], r["probe_nmse"]) for r in merged] == [(0, 0.9), (1, 0.7), (2, 0.6)]


def test_a_chunk_is_the_shipped_config_for_one_task_and_seed(tmp_path: Path) -> None:
    from masklam.downstream.experiment import load_config

    whole = load_config(mw.CONFIG)
    part = load_config(mw.CONFIG, out=tmp_path, tasks=["mw-reach"], seeds=[2])
    assert part.tasks == ["mw-reach"] and part.seeds == [2] and "mw-reach" in whole.tasks
    assert part.data["mw-reach"] == whole.data["mw-reach"] and part.data["mw-reach"]["collect"]["img_size"] == 128
    assert (part.methods, part.pretrain, part.env) == (whole.methods, whole.pretrain, whole.env)


def test_each_chunk_is_committed_at_once_and_a_second_run_skips_the_committed_chunks(tmp_path: Path, monkeypatch):
    import subprocess
    import sys

    repo = tmp_path / "repo"
    repo.mkdir()
    for cmd in (["init", "-q"], ["config", "user.email", "t@t"], ["config", "user.name", "t"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True)
    ran = []

    def fake_chunk(out: Path, task: str, seed: int, train_workers: int | None) -> list[dict]:
        ran.append((task, seed))
        return [_row(m, seed, sp, 0.5, 0.25, task) for m in ("lapo", "masklam") for sp in ("id", "ood")]

    monkeypatch.setattr(mw, "chunk", fake_chunk)
    argv = ["mw128.py", "--out", str(tmp_path / "run"), "--tasks", "mw-push", "mw-reach", "--seeds", "0", "1",
            "--commit", str(repo / "docs")]
    monkeypatch.setattr(sys, "argv", argv)
    (tmp_path / "run").mkdir()
    assert mw.main() == 0
    assert ran == [("mw-push", 0), ("mw-push", 1), ("mw-reach", 0), ("mw-reach", 1)]  # task by task
    log = subprocess.run(["git", "log", "--format=%s"], cwd=repo, capture_output=True, text=True).stdout.split("\n")
    assert [line.split(" (")[0] for line in log if line] == [
        "mw128: mw-reach seed 1", "mw128: mw-reach seed 0", "mw128: mw-push seed 1", "mw128: mw-push seed 0"]
    committed = mw.read_csv(repo / "docs" / "results.csv")
    assert len(committed) == 16 and {(r["task"], r["seed"]) for r in committed} == {
        (t, str(s)) for t in ("mw-push", "mw-reach") for s in (0, 1)}
    assert (repo / "docs" / "mw128.png").is_file() and len(mw.read_csv(repo / "docs" / "chunks.csv")) == 4
    ran.clear()
    monkeypatch.setattr(sys, "argv", argv[:-2] + ["2", "--commit", str(repo / "docs")])  # seeds 0 1 2
    assert mw.main() == 0
    assert ran == [("mw-push", 2), ("mw-reach", 2)]  # only what the committed file lacks


def test_a_chunk_interrupted_and_resumed_is_timed_over_both_processes(tmp_path: Path, monkeypatch, capsys) -> None:
    import subprocess
    import sys

    repo = tmp_path / "repo"
    repo.mkdir()
    for cmd in (["init", "-q"], ["config", "user.email", "t@t"], ["config", "user.name", "t"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True)
    clock = iter([0.0, 600.0, 1000.0, 2200.0])  # the first process runs 10 minutes, the second 20
    monkeypatch.setattr(mw.time, "time", lambda: next(clock))

    def interrupted(*args) -> list[dict]:
        raise KeyboardInterrupt

    monkeypatch.setattr(mw, "chunk", interrupted)
    argv = ["mw128.py", "--out", str(tmp_path / "run"), "--tasks", "mw-push", "--seeds", "0", "--commit",
            str(repo / "docs")]
    monkeypatch.setattr(sys, "argv", argv)
    (tmp_path / "run").mkdir()
    assert mw.main() == 130
    assert capsys.readouterr().err.strip() == "mw128: interrupted; run the same command again to resume"
    monkeypatch.setattr(mw, "chunk", lambda *a: [_row(m, 0, "id", 0.5, 0.25, "mw-push") for m in mw.METHODS])
    assert mw.main() == 0
    assert mw.read_csv(repo / "docs" / "chunks.csv") == [{"task": "mw-push", "seed": "0", "minutes": "30.0"}]


def test_a_missing_or_unreadable_table_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    import sys

    monkeypatch.setattr(sys, "argv", ["mw128.py", "--table", str(tmp_path / "results.csv")])
    assert mw.main() == 2
    assert capsys.readouterr().err.strip() == f"mw128: no such file: {tmp_path / 'results.csv'}"
    monkeypatch.setattr(sys, "argv", ["mw128.py", "--table", str(tmp_path)])  # a folder
    assert mw.main() == 2
    assert capsys.readouterr().err.strip().startswith(f"mw128: cannot read the file {tmp_path} (")
    (tmp_path / "chunks.csv").write_text("task,seed,minutes\nmw-push,0,30.0\n")  # not a results table
    monkeypatch.setattr(sys, "argv", ["mw128.py", "--table", str(tmp_path / "chunks.csv")])
    assert mw.main() == 2
    assert capsys.readouterr().err.strip().startswith(f"mw128: {tmp_path / 'chunks.csv'}: missing columns [")
    assert not (tmp_path / "mw128.png").exists()  # nothing written


def test_a_chunk_runs_the_sweep_for_its_task_and_seed_with_the_workers_asked(tmp_path: Path, monkeypatch) -> None:
    from masklam.downstream import experiment

    seen = []
    monkeypatch.setattr(experiment, "run_experiment", lambda cfg, render: seen.append(cfg) or [
        {"method": "lapo", "probe_nmse": None, "success": 0.5}])
    assert mw.chunk(tmp_path, "mw-door-open", 1, 1) == [{"method": "lapo", "probe_nmse": "", "success": 0.5}]
    mw.chunk(tmp_path, "mw-door-open", 1, None)
    (one, default) = seen
    assert (one.tasks, one.seeds, one.out, one.train_workers, one.progress) == (["mw-door-open"], [1], tmp_path, 1,
                                                                                 False)
    assert default.train_workers == 3  # the config's (quickstart-cpu's train_workers)


@pytest.mark.parametrize("args, message", [(["--tasks", "mw-psh"], "'mw-psh' is not one of mw128-cpu's tasks"),
                                           (["--train-workers", "0"], "--train-workers must be >= 1")])
def test_a_bad_task_or_worker_count_is_refused_before_any_work(tmp_path: Path, monkeypatch, capsys, args, message):
    import sys

    monkeypatch.setattr(mw, "chunk", lambda *a: pytest.fail("ran a chunk"))
    monkeypatch.setattr(sys, "argv", ["mw128.py", "--out", str(tmp_path), *args])
    with pytest.raises(SystemExit):
        mw.main()
    assert message in capsys.readouterr().err
