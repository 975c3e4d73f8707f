"""Shipped experiment configs (by name, --list, every one loads and mirrors the quickstart's presets) and
`masklam experiment --status` (a dry run: done/pending per kind, time estimates, writes nothing)."""
from __future__ import annotations

import fnmatch
import json
import os
import tomllib
from pathlib import Path

import pytest
import torch

from masklam.downstream import experiment as ex
from masklam.downstream import stages
from masklam.errors import MasklamError
from test_downstream_policy import write_toy

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


# --- shipped configs -------------------------------------------------------------------------------------
def test_every_shipped_config_loads_and_is_package_data() -> None:
    shipped = ex.shipped_configs()
    assert {"papers-cpu", "masklam-gpu", "laom-gpu"} <= set(shipped)
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["masklam"]
    for name, path in shipped.items():
        cfg = ex.load_config(name)
        assert cfg.description and "\n" not in cfg.description, name
        assert cfg.out == Path(f"runs/{name}")
        rel = path.relative_to(ROOT / "src" / "masklam").as_posix()
        assert any(fnmatch.fnmatch(rel, g) for g in globs), f"{rel} is not package data"


def _tables(cfg: ex.ExperimentConfig) -> dict:
    collect = {t: cfg.data[t]["collect"] for t in cfg.tasks}
    assert all(c == collect[cfg.tasks[0]] for c in collect.values())  # the same data recipe for every task
    assert all(cfg.data[t]["collect_clean"] == {**collect[t], "distractors": "none"} for t in cfg.tasks)
    c = dict(collect[cfg.tasks[0]])
    assert (c.pop("distractors"), c.pop("policy")) == ("laom", "expert")
    return dict(collect=c, pretrain=cfg.pretrain, bc=cfg.bc, bc_full=cfg.bc_full, idm=cfg.idm,
                decode=cfg.decode, eval=cfg.eval)


@pytest.mark.parametrize("name, preset", [("papers-cpu", "cpu"), ("masklam-gpu", "gpu"), ("laom-gpu", "gpu")])
def test_shipped_configs_use_the_quickstarts_scale(name: str, preset: str) -> None:
    from masklam.quickstart import PRESETS, RECIPES

    p = PRESETS[preset]
    want = {k: p.get(k, {}) for k in ("collect", "bc", "bc_full", "idm", "decode", "eval")}
    want["pretrain"] = {**p["pretrain"], **RECIPES["mask-target"]}
    assert _tables(ex.load_config(name)) == want


def test_gpu_configs_cover_the_papers_figures() -> None:
    tasks = ["cheetah-run", "walker-run", "hopper-hop"]
    m = ex.load_config("masklam-gpu")
    assert set(m.methods) == {"lapo", "masklam", "lapo-clean", "bc", "idm"} and m.tasks == tasks
    assert m.labels == [4, 16, 64] and m.latent_dims == [16, 128, 1024] and m.seeds == [0, 1, 2]
    assert m.splits == ["id", "ood"] and m.pretrain["preset"] == "h100"
    laom = ex.load_config("laom-gpu")
    assert set(laom.methods) == {"lapo", "laom", "laom-sup", "lapo-clean"} and laom.tasks == tasks
    assert laom.seeds == [0, 1, 2] and len(laom.labels) > 1 and laom.pretrain["preset"] == "h100"


def test_config_by_name_or_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture) -> None:
    assert ex.config_path("papers-cpu") == ex.CONFIG_DIR / "papers-cpu.toml"
    assert ex.config_path(ex.CONFIG_DIR / "laom-gpu.toml") == ex.CONFIG_DIR / "laom-gpu.toml"
    with pytest.raises(MasklamError, match="no such file or shipped config: nope .*papers-cpu"):
        ex.load_config("nope")
    # a file of that name in the working directory wins over the shipped config
    monkeypatch.chdir(tmp_path)
    Path("papers-cpu").write_text(json.dumps({"out": "mine", "tasks": ["t"], "methods": ["lapo"],
                                              "data": {"t": {"train": ["a.h5"]}}}))
    assert ex.load_config("papers-cpu").out == Path("mine")
    # --out overrides the shipped config's out
    assert ex.load_config("laom-gpu", out=tmp_path / "o").out == tmp_path / "o"
    assert ex.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(ex.shipped_configs())
    for name, path in ex.shipped_configs().items():
        line = next(ln for ln in lines if ln.split()[0] == name)
        assert line.endswith(ex.load_config(path).description)
    with pytest.raises(MasklamError, match="give a config"):
        ex.main([])


# --- status: a dry run ---------------------------------------------------------------------------------------
def _toy_config(tmp_path: Path) -> dict:
    toy = write_toy(tmp_path / "toy.h5", n_traj=5, length=16)
    return {
        "out": str(tmp_path / "run"), "tasks": ["toy-bright"], "methods": ["lapo", "bc"],
        "latent_dims": [4], "labels": [1, 2], "seeds": [0],
        "data": {"toy-bright": {"train": [str(toy)]}},
        "pretrain": {"updates": 2, "batch_size": 8, "head_dim": 16, "heldout": 0.2, "recon_samples": 0},
        "bc": {"updates": 2, "batch_size": 8, "frame_stack": 1, "hidden": 16, "heldout": 0.2},
        "decode": {"updates": 5, "batch_size": 8, "heldout": 0.2},
        "eval": {"episodes": 1, "workers": 0},
        "env": {"factory": "test_downstream_experiment:make_toy", "max_episode_steps": 2},
        "progress": False,
    }


def _snapshot(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")} if root.exists() else {}


def _counts(plan: stages.StagePlan) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for s in plan.stages:
        done, pending = out.get(s.kind, (0, 0))
        out[s.kind] = (done + s.done, pending + (not s.done))
    return out


def test_status_before_and_after_running(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    conf = _toy_config(tmp_path)
    cfg = ex.ExperimentConfig(**conf)
    run = tmp_path / "run"
    # before: every stage pending, nothing written; stages after a pending one have no key yet
    plan = ex.sweep_status(cfg)
    assert not run.exists()
    # bc-full (bc + 2 evals), lapo (pretrain, latent bc, 2 decoders, 4 evals), bc (2 bc, 4 evals)
    assert _counts(plan) == {"bc": (0, 4), "evaluate": (0, 10), "pretrain": (0, 1), "decode": (0, 2)}
    keyed = {(s.kind, s.context) for s in plan.stages if s.key is not None}
    assert keyed == {("bc", "toy-bright seed 0 bc-full"), ("pretrain", "toy-bright seed 0 lapo"),
                     ("bc", "toy-bright seed 0 bc")}
    (tmp_path / "sweep.json").write_text(json.dumps(conf))
    assert ex.main([str(tmp_path / "sweep.json"), "--status"]) == 0
    out = capsys.readouterr().out
    assert "0 done, 17 pending: no estimate yet" in out and not run.exists()
    assert "toy-bright seed 0 lapo: pretrain 1, bc 1, decode 2, evaluate 4" in out

    # run it: the dry run met exactly the stages the run makes, with the keys it knew
    ex.run_experiment(cfg, render=False)
    made = {k.name: {d.name for d in k.iterdir()} for k in (run / "stages").iterdir()}
    assert {k: len(v) for k, v in made.items()} == {k: d + p for k, (d, p) in _counts(plan).items()}
    assert all(s.key in made[s.kind] for s in plan.stages if s.key is not None)
    for kind, keys in made.items():
        for key in keys:
            rec = json.loads((run / "stages" / kind / key / "done.json").read_text())
            assert rec["hash"] == key and rec["wall_s"] >= 0
    capsys.readouterr()

    # after: every stage done; status writes nothing
    before = _snapshot(run)
    after = ex.sweep_status(cfg)
    assert _counts(after) == {k: (d + p, 0) for k, (d, p) in _counts(plan).items()}
    assert all(s.wall_s is not None and s.wall_s >= 0 for s in after.stages)
    assert ex.main([str(tmp_path / "sweep.json"), "--status"]) == 0
    assert "all 17 stages done" in capsys.readouterr().out
    assert _snapshot(run) == before
    # --out: the status of another run directory of the same sweep
    assert ex.main([str(tmp_path / "sweep.json"), "--status", "--out", str(tmp_path / "other")]) == 0
    assert "0 done, 17 pending" in capsys.readouterr().out and not (tmp_path / "other").exists()

    # an interrupted LAM: it is pending with its key and start time; what depends on it waits without a key
    lam = next(s for s in after.stages if s.kind == "pretrain")
    (run / "stages" / "pretrain" / lam.key / "done.json").unlink()
    mid = ex.sweep_status(cfg)
    lam2 = next(s for s in mid.stages if s.kind == "pretrain")
    assert (lam2.key, lam2.done) == (lam.key, False) and lam2.started is not None
    waiting = [s for s in mid.stages if not s.done and s.kind != "pretrain"]
    assert {(s.kind, s.key) for s in waiting} == {("bc", None), ("decode", None), ("evaluate", None)}
    assert len(waiting) == 1 + 2 + 4 and all(s.context == "toy-bright seed 0 lapo" for s in waiting)
    assert all(s.done for s in mid.stages if s.context != "toy-bright seed 0 lapo")


def test_done_stages_without_wall_s_are_timed_by_their_files(tmp_path: Path) -> None:
    calls = []
    d, _ = stages.run_stage(tmp_path, "bc", {"x": 1}, lambda d: calls.append(d) or {"v": 1}, log=lambda s: None)
    rec = json.loads((d / "done.json").read_text())
    del rec["wall_s"]  # written before run_stage recorded it
    (d / "done.json").write_text(json.dumps(rec))
    os.utime(d / "stage.json", (1000, 1000))
    os.utime(d / "done.json", (1600, 1600))
    with stages.plan_stages() as plan:
        assert stages.run_stage(tmp_path, "bc", {"x": 1}, lambda d: calls.append(d) or {}) == (d, {"v": 1})
        res = stages.run_stage(tmp_path, "bc", {"x": 2}, lambda d: calls.append(d) or {})[1]
        assert stages.is_pending(res) and stages.dry_run()
    assert not stages.dry_run() and len(calls) == 1
    assert [(s.done, s.wall_s) for s in plan.stages] == [(True, 600.0), (False, None)]
    assert sorted(p.name for p in (tmp_path / "stages" / "bc").iterdir()) == [d.name]  # nothing written


def test_format_plan_estimates_by_the_mean_of_done_stages() -> None:
    P = stages.PlannedStage
    plan = stages.StagePlan([
        P("pretrain", "a", True, "t seed 0 lapo", {}, wall_s=100.0),
        P("pretrain", "b", True, "t seed 0 masklam", {}, wall_s=300.0),
        P("pretrain", "c", False, "t seed 1 lapo", {"latent_dim": 16}, started=1000.0 - 50.0),  # 150 s left
        P("pretrain", "d", False, "t seed 1 masklam", {}),  # 200 s
        P("decode", None, False, "t seed 1 lapo", {"labels": 4}),
        P("evaluate", "e", True, "t seed 0 lapo", {}, wall_s=30.0),
        P("evaluate", None, False, "t seed 1 lapo", {}),  # 30 s
    ])
    text = stages.format_plan(plan, now=1000.0)
    lines = text.splitlines()
    row = {ln.split()[0]: ln for ln in lines[1:4]}
    assert row["pretrain"].split()[1:3] == ["2", "2"] and row["pretrain"].endswith("5.8 min")  # 350 s
    assert row["decode"].endswith("no estimate") and row["evaluate"].endswith("30 s")
    assert "3 done, 4 pending: about 6.3 min left, plus the decode stages (no estimate" in text  # 380 s
    assert "started 50 s ago (running, or interrupted): pretrain c (t seed 1 lapo, latent_dim 16)" in text
    assert "  t seed 1 lapo: pretrain 1, decode 1, evaluate 1" in text
    assert "  t seed 1 masklam: pretrain 1" in text
