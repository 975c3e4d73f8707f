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


def _row(method: str, seed: int, split: str, probe: float, success: float, task: str = "mw-push") -> dict:
    return dict(method=method, task=task, latent_dim=16, labels=16, seed=seed, split=split, probe_nmse=probe,
                success=success)


def test_the_table_averages_seeds_and_divides_lapos_probe_by_each_methods() -> None:
    rows = [_row("lapo", s, sp, p, su) for s, p, su in ((0, 0.8, 0.5), (1, 0.6, 0.7)) for sp in ("id", "ood")]
    rows += [_row("masklam", s, sp, p, 1.0 if sp == "id" else 0.0) for s, p in ((0, 0.4), (1, 0.4))
             for sp in ("id", "ood")]
    rows += [_row("bc-full", 0, "id", float("nan"), 1.0)]  # a normaliser: not in the table
    cells = mw.summary(rows)
    assert set(cells) == {("mw-push", "lapo"), ("mw-push", "masklam")}
    assert cells["mw-push", "lapo"]["probe_nmse"] == pytest.approx((0.7, 0.1))  # s.e. = std(ddof 1) / sqrt(2)
    assert cells["mw-push", "lapo"]["success_id"] == pytest.approx((0.6, 0.1))
    assert cells["mw-push", "masklam"]["success_ood"] == pytest.approx((0.0, 0.0))
    table = mw.markdown(rows).splitlines()
    assert table[3] == "| mw-push | masklam | 0,1 | 0.400 ± 0.000 | 1.75x | 1.00 ± 0.00 | 0.00 ± 0.00 |"


def test_a_chunk_reruns_a_row_without_losing_the_others() -> None:
    old = [_row("lapo", 0, "id", 0.9, 0.1), _row("lapo", 1, "id", 0.8, 0.2)]
    merged = mw.merge(old, [_row("lapo", 1, "id", 0.7, 0.3), _row("lapo", 2, "id", 0.6, 0.4)], mw.row_id)
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
