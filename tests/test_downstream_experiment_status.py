"""Shipped experiment configs (by name, --list, every one loads and mirrors the quickstart's presets) and
`masklam experiment --status` (a dry run: done/pending per kind, time estimates, writes nothing)."""
from __future__ import annotations

import fnmatch
import json
import os
import time
import tomllib
from pathlib import Path

import pytest
import torch

from masklam.downstream import experiment as ex
from masklam.downstream import cache
from masklam.downstream.plan import PlannedStage, StagePlan, format_plan, is_pending, plan_stages
from masklam.downstream import stages
from masklam.errors import MasklamError

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


# --- shipped configs -------------------------------------------------------------------------------------
def test_every_shipped_config_loads_and_is_package_data() -> None:
    shipped = ex.shipped_configs()
    assert set(shipped) == {"papers-cpu", "masklam-cpu", "masklam-gpu", "laom-gpu", "papers-gpu", "quickstart-cpu",
                            "quickstart-gpu", "quickstart-toy", "mw128-cpu"}  # each loads below, value checks and all
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


def test_a_config_extends_another_field_by_field_and_says_where_each_came_from(tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "base.toml").write_text('out = "b"\ntasks = ["t"]\nmethods = ["lapo"]\nlabels = [1, 2]\n'
                                        '[data.t]\ntrain = ["a.h5"]\n[pretrain]\nupdates = 7\nlr = 0.1\n'
                                        '[bc]\nupdates = 3\n')
    (tmp_path / "child.toml").write_text('extends = "base.toml"\nout = "c"\n[pretrain]\nepochs = 2.0\n')
    raw, origins = ex.resolve_config(tmp_path / "child.toml", device="cpu")
    # a table merges key by key; a run length given as epochs clears the base's updates
    assert raw["pretrain"] == {"lr": 0.1, "epochs": 2.0} and raw["bc"] == {"updates": 3} and raw["out"] == "c"
    assert origins["pretrain.lr"] == str(tmp_path / "base.toml") and origins["out"] == str(tmp_path / "child.toml")
    assert origins["device"] == "command line"
    cfg = ex.load_config(tmp_path / "child.toml")
    assert cfg.labels == [1, 2] and cfg.pretrain == {"lr": 0.1, "epochs": 2.0}
    assert ex.main([str(tmp_path / "child.toml"), "--print-config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:2] == ["pretrain.lr", "0.1"] and line.endswith("base.toml") for line in lines)
    (tmp_path / "typo.toml").write_text('extends = "base.toml"\nbogus_key = 3\n')  # --print-config checks it too
    with pytest.raises(MasklamError, match="unknown key 'bogus_key'"):
        ex.main([str(tmp_path / "typo.toml"), "--print-config"])
    (tmp_path / "base.toml").write_text('extends = "child.toml"\n')
    with pytest.raises(MasklamError, match="loops back"):
        ex.load_config(tmp_path / "child.toml")


def test_tasks_and_seeds_from_the_command_line_run_part_of_a_sweep(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "s.toml").write_text('out = "o"\ntasks = ["cheetah-run", "walker-run"]\nmethods = ["lapo"]\n'
                                     'seeds = [0, 1, 2]\ncollect = { episodes = 3 }\n')
    cfg = ex.load_config(tmp_path / "s.toml", tasks=["walker-run"], seeds=[2])
    assert cfg.tasks == ["walker-run"] and cfg.seeds == [2] and set(cfg.data) == {"walker-run"}
    assert cfg.data["walker-run"]["collect"] == {"episodes": 3}  # the file's collect table serves the task given
    assert ex.main([str(tmp_path / "s.toml"), "--tasks", "walker-run", "--seeds", "1", "2", "--print-config"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "['walker-run']" in lines["tasks"] and lines["tasks"].endswith("command line")
    assert "[1, 2]" in lines["seeds"] and lines["seeds"].endswith("command line")
    assert lines["methods"].endswith("s.toml")


def test_a_misspelled_or_expertless_task_fails_before_the_first_collection(tmp_path: Path, capsys) -> None:
    (tmp_path / "s.toml").write_text('out = "o"\ntasks = ["cheetah-run"]\nmethods = ["lapo"]\n'
                                     'collect = { episodes = 1, steps = 4 }\n')
    for tasks, named in ((["cheetah-run", "cheetah-rnu"], "cheetah-rnu"),
                         (["cheetah-run", "humanoid-walk"], "expert for humanoid-walk")):
        for status in ([], ["--status"]):
            with pytest.raises(MasklamError, match=named) as e:
                ex.main([str(tmp_path / "s.toml"), "--tasks", *tasks, "--seeds", "0", "--out", str(tmp_path / "o"),
                         *status])
            assert "\n" not in str(e.value) and str(e.value).startswith(f"{tmp_path / 's.toml'}: ")
            assert not (tmp_path / "o").exists()  # not even the run directory made; cheetah-run not collected
            assert capsys.readouterr().out == ""  # nothing printed before the error (--status: no header)
    cfg = ex.load_config(tmp_path / "s.toml", out=tmp_path / "o", tasks=["cheetah-rnu"])
    with pytest.raises(MasklamError, match="cheetah-rnu"):
        ex.run_experiment(cfg)  # called as a library: the same check, before the run directory is made
    assert not (tmp_path / "o").exists()


def test_a_missing_data_file_fails_before_another_tasks_collection(tmp_path: Path) -> None:
    gone = tmp_path / "gone.h5"
    (tmp_path / "s.toml").write_text('out = "o"\ntasks = ["cheetah-run", "walker-run"]\nmethods = ["lapo"]\n'
                                     'collect = { episodes = 1, steps = 4 }\n'
                                     f'[data.walker-run]\ntrain = ["{gone}"]\n')
    with pytest.raises(MasklamError, match="no such file: .*gone.h5"):
        ex.main([str(tmp_path / "s.toml"), "--seeds", "0", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o" / "stages").exists()  # cheetah-run, listed first, was not collected


def test_the_papers_configs_extend_the_quickstarts_presets() -> None:
    for name, preset in (("papers-cpu", "cpu"), ("masklam-cpu", "cpu"), ("mw128-cpu", "cpu"), ("masklam-gpu", "gpu"),
                         ("laom-gpu", "gpu"), ("papers-gpu", "gpu")):
        _, origins = ex.resolve_config(name)
        assert origins["pretrain.preset"] == origins["decode.updates"] == f"quickstart-{preset}", name
        assert origins["pretrain.mask_target"] == name  # the quickstart's default recipe, which the preset leaves out


def test_papers_gpu_is_both_gpu_configs_in_one_sweep() -> None:
    both, m, laom = (ex.load_config(n) for n in ("papers-gpu", "masklam-gpu", "laom-gpu"))
    assert set(both.methods) == set(m.methods) | set(laom.methods)
    assert (both.latent_dims, both.labels, both.seeds, both.tasks) == (m.latent_dims, m.labels, m.seeds, m.tasks)
    assert set(laom.latent_dims) <= set(both.latent_dims) and set(laom.labels) <= set(both.labels)
    assert _tables(both) == _tables(m) == _tables(laom) and both.data == m.data == laom.data


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
def _toy_config(tmp_path: Path, write_toy) -> dict:
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


def _counts(plan: StagePlan) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for s in plan.stages:
        done, pending = out.get(s.kind, (0, 0))
        out[s.kind] = (done + s.done, pending + (not s.done))
    return out


def test_status_before_and_after_running(write_toy, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    conf = _toy_config(tmp_path, write_toy)
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
    before_out = capsys.readouterr().out
    assert "all 17 stages done" in before_out
    assert _snapshot(run) == before
    # --out: the status of another run directory of the same sweep
    assert ex.main([str(tmp_path / "sweep.json"), "--status", "--out", str(tmp_path / "other")]) == 0
    out = capsys.readouterr().out
    assert "0 done, 17 pending" in out and not (tmp_path / "other").exists()
    assert f"{tmp_path / 'other'} does not exist yet: nothing done" in out and "does not exist" not in before_out
    with pytest.raises(MasklamError, match="sweep.json is a file"):  # a run could not make it: not "nothing done"
        ex.main([str(tmp_path / "sweep.json"), "--status", "--out", str(tmp_path / "sweep.json" / "run")])

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


def test_status_plans_the_lams_and_full_data_bc_in_the_pool_the_run_trains_them_in(write_toy, tmp_path: Path,
                                                                                     monkeypatch) -> None:
    """On CPU with train_workers > 1 a task and seed's LAMs and full-data BCs train in one pool (before the rest):
    the dry run plans them there, in the pool's order, with the same keys; on CUDA, or one at a time, no pool."""
    import dataclasses

    cfg = ex.ExperimentConfig(**{**_toy_config(tmp_path, write_toy), "latent_dims": [4, 8], "device": "cpu"})
    serial = ex.sweep_status(dataclasses.replace(cfg, train_workers=1))
    pooled = ex.sweep_status(dataclasses.replace(cfg, train_workers=3))
    assert all(s.pool is None for s in serial.stages)
    assert [(s.kind, s.context, s.pool) for s in pooled.stages[:3]] == [
        ("pretrain", "toy-bright seed 0 lapo latent 4", ("toy-bright seed 0", 3)),
        ("pretrain", "toy-bright seed 0 lapo latent 8", ("toy-bright seed 0", 3)),
        ("bc", "toy-bright seed 0 bc-full", ("toy-bright seed 0", 3))]
    assert all(s.pool is None for s in pooled.stages[3:])
    assert sorted((s.kind, str(s.key)) for s in pooled.stages) == sorted((s.kind, str(s.key)) for s in serial.stages)
    on_cuda = ex.sweep_status(dataclasses.replace(cfg, train_workers=3, device="cuda"))
    assert all(s.pool is None for s in on_cuda.stages)  # the run trains them one at a time there
    monkeypatch.setattr(ex, "resolve_device", lambda name: torch.device("cuda" if name == "auto" else name))
    assert all(s.pool is None for s in ex.sweep_status(dataclasses.replace(cfg, train_workers=3, device="auto")).stages)
    monkeypatch.setattr(ex, "resolve_device", lambda name: torch.device("cpu"))
    auto = ex.sweep_status(dataclasses.replace(cfg, train_workers=3, device="auto"))
    assert [s.pool for s in auto.stages[:3]] == [("toy-bright seed 0", 3)] * 3
    # the run directory's last run was started with one worker (mw128.py --train-workers 1): as it was
    cfg.out.mkdir(parents=True)
    (cfg.out / "experiment.json").write_text(json.dumps({"config": {"device": "auto", "train_workers": 1}}))
    assert all(s.pool is None for s in ex.sweep_status(dataclasses.replace(cfg, train_workers=3)).stages)
    (cfg.out / "experiment.json").write_text(json.dumps({"config": {"device": "cpu", "train_workers": 2}}))
    assert [s.pool for s in ex.sweep_status(cfg).stages[:3]] == [("toy-bright seed 0", 2)] * 3


def test_the_time_left_is_on_the_wall_clock_with_a_pools_stages_side_by_side() -> None:
    P, pool = PlannedStage, ("t seed 0", 3)
    plan = StagePlan([
        P("pretrain", "a", True, "t seed 9 lapo", {}, wall_s=600.0),
        P("bc", "b", True, "t seed 9 bc-full", {}, wall_s=300.0),
        *[P("pretrain", k, False, f"t seed 0 {k}", {}, pool=pool) for k in ("l1", "l2", "l3")],
        *[P("bc", k, False, f"t seed 0 {k}", {}, pool=pool) for k in ("b1", "b2")],
        P("bc", None, False, "t seed 0 lapo", {}),
    ])
    text = format_plan(plan, now=1000.0)
    # the pool: 3 LAMs at once (10 min), then the 2 BCs side by side (5 min); then the latent BC alone (5 min)
    assert "2 done, 6 pending: about 20.0 min left on the wall clock (45.0 min of stage time: a task and seed's " \
           "LAMs and full-data BCs train 3 at once)" in text
    plan.stages[2].pool = plan.stages[3].pool = plan.stages[4].pool = ("t seed 0", 2)  # two workers, 3 LAMs first
    plan.stages[5].pool = plan.stages[6].pool = ("t seed 0", 2)
    assert "about 25.0 min left on the wall clock" in format_plan(plan, now=1000.0)  # 10+10 | 10+5+5, then 5


def test_a_pending_stage_takes_the_mean_of_the_done_ones_that_ran_as_it_will() -> None:
    """A pool's stages share the cores, the others have them all: a full-data BC in the pool (15 min) and a latent
    BC alone (100 s) are each estimated by their own kind of run; a done stage in a pool takes no worker time."""
    P, pool = PlannedStage, ("t seed 1", 2)
    plan = StagePlan([
        P("bc", "a", True, "t seed 1 bc-full", {}, wall_s=900.0, pool=pool),
        P("bc", "b", False, "t seed 1 bc-full-clean", {}, pool=pool),
        P("bc", "c", True, "t seed 1 lapo", {}, wall_s=100.0),
        P("bc", "d", False, "t seed 1 masklam", {}),
        P("bc", "e", False, "t seed 1 lapo-clean", {}),
    ])
    assert "2 done, 3 pending: about 18.3 min left" in format_plan(plan, now=1000.0)  # 900 + 2 x 100 s


def test_a_resumed_stage_counts_its_earlier_runs_up_to_their_last_checkpoint(tmp_path: Path) -> None:
    """A stage interrupted after a checkpoint and resumed: done.json's wall_s adds the first run's time up to its
    checkpoint (after it: lost work); --status takes that much off the estimate of a stage interrupted or running."""
    from masklam.train.checkpoint import TRAIN_STATE

    assert cache.RESUME_STATE == TRAIN_STATE  # what LAMs (in the stage's directory) and BCs (in resume/) write
    runs = []

    def interrupted(d: Path) -> dict:
        (d / "resume").mkdir()
        (d / "resume" / cache.RESUME_STATE).write_text("state")
        runs.append(d)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.run_stage(tmp_path, "bc", {"x": 1}, interrupted, log=lambda s: None)
    d = runs[0]
    now = time.time()
    os.utime(d / "stage.json", (now - 900, now - 900))  # it ran from 900 s ago, its last checkpoint 400 s ago
    os.utime(d / "resume" / cache.RESUME_STATE, (now - 400, now - 400))
    assert cache.resumed_s(d) == pytest.approx(500.0, abs=1e-3)
    (tmp_path / "stages" / "bc" / "done").mkdir()  # a done stage of the kind took 1000 s
    (tmp_path / "stages" / "bc" / "done" / "done.json").write_text(json.dumps({"hash": "done", "wall_s": 1000.0}))

    def status() -> str:
        with plan_stages() as plan:
            cache.run_stage(tmp_path, "bc", {"x": 1}, lambda d: {})
        return format_plan(plan, now=now)

    assert "0 done, 1 pending: about 8.3 min left" in status()  # interrupted: 1000 - 500 s
    _, result = cache.run_stage(tmp_path, "bc", {"x": 1}, lambda d: {"v": 1}, log=lambda s: None)
    rec = json.loads((d / "done.json").read_text())
    assert result == {"v": 1} and 500.0 <= rec["wall_s"] < 510.0
    assert json.loads((d / "stage.json").read_text())["resumed_s"] == pytest.approx(500.0, abs=1e-3)
    (d / "done.json").unlink()  # running again (a third run, started 100 s ago, its lock held): 1000 - 500 - 100 s
    os.utime(d / "stage.json", (now - 100, now - 100))
    from masklam.locks import output_lock

    with output_lock(d, ""):
        with plan_stages() as plan:
            cache.run_stage(tmp_path, "bc", {"x": 1}, lambda d: {})
    assert plan.stages[0].is_running(now) and "about 6.7 min left" in format_plan(plan, now=now)
    os.utime(d / "resume" / cache.RESUME_STATE, (now - 950, now - 950))  # a checkpoint older than this run's start
    os.utime(d / "stage.json", (now - 900, now - 900))
    assert cache.resumed_s(d) == pytest.approx(500.0, abs=1e-3)  # this run reached none: the earlier runs' only
    (d / "resume" / cache.RESUME_STATE).unlink()  # without a checkpoint an interrupted stage starts over
    os.utime(d / "stage.json", (now - 900, now - 900))
    assert cache.resumed_s(d) == 0.0 and "about 16.7 min left" in status()


def test_done_stages_without_wall_s_are_timed_by_their_files(tmp_path: Path) -> None:
    calls = []
    d, _ = cache.run_stage(tmp_path, "bc", {"x": 1}, lambda d: calls.append(d) or {"v": 1}, log=lambda s: None)
    rec = json.loads((d / "done.json").read_text())
    del rec["wall_s"]  # written before run_stage recorded it
    (d / "done.json").write_text(json.dumps(rec))
    os.utime(d / "stage.json", (1000, 1000))
    os.utime(d / "done.json", (1600, 1600))
    with plan_stages() as plan:
        assert cache.run_stage(tmp_path, "bc", {"x": 1}, lambda d: calls.append(d) or {}) == (d, {"v": 1})
        res = cache.run_stage(tmp_path, "bc", {"x": 2}, lambda d: calls.append(d) or {})[1]
        assert is_pending(res) and cache.dry_run()
    assert not cache.dry_run() and len(calls) == 1
    assert [(s.done, s.wall_s) for s in plan.stages] == [(True, 600.0), (False, None)]
    assert sorted(p.name for p in (tmp_path / "stages" / "bc").iterdir()) == [d.name]  # nothing written


def test_format_plan_estimates_by_the_mean_of_done_stages() -> None:
    P = PlannedStage
    plan = StagePlan([
        P("pretrain", "a", True, "t seed 0 lapo", {}, wall_s=100.0),
        P("pretrain", "b", True, "t seed 0 masklam", {}, wall_s=300.0),
        P("pretrain", "c", False, "t seed 1 lapo", {"latent_dim": 16}, started=1000.0 - 50.0,
          active=1000.0 - 20.0),  # running: 150 s left
        P("pretrain", "d", False, "t seed 1 masklam", {}),  # 200 s
        P("decode", None, False, "t seed 1 lapo", {"labels": 4}),
        P("evaluate", "e", True, "t seed 0 lapo", {}, wall_s=30.0),
        P("evaluate", None, False, "t seed 1 lapo", {}),  # 30 s
    ])
    text = format_plan(plan, now=1000.0)
    lines = text.splitlines()
    row = {ln.split()[0]: ln for ln in lines[1:4]}
    assert row["pretrain"].split()[1:3] == ["2", "2"] and row["pretrain"].endswith("5.8 min")  # 350 s
    assert row["decode"].endswith("no estimate") and row["evaluate"].endswith("30 s")
    assert "3 done, 4 pending: about 6.3 min left, plus the decode stages (no estimate" in text  # 380 s
    assert "started 50 s ago (running, last write 20 s ago): pretrain c (t seed 1 lapo, latent_dim 16)" in text
    assert "  t seed 1 lapo: pretrain 1, decode 1, evaluate 1" in text
    assert "  t seed 1 masklam: pretrain 1" in text


def test_a_part_of_a_sweep_is_estimated_by_the_run_directorys_other_stages(tmp_path: Path) -> None:
    """`--status --seeds 1` once seed 0 is done: none of its kinds is done in its own plan, so each is estimated
    by the run directory's done stages of that kind, marked *; a kind done nowhere still has no estimate."""
    for x, wall in ((1, 600.0), (2, 300.0)):  # seed 0's LAMs: 10 and 5 min
        d, _ = cache.run_stage(tmp_path, "pretrain", {"x": x}, lambda d: {}, log=lambda s: None)
        (d / "done.json").write_text(json.dumps({**json.loads((d / "done.json").read_text()), "wall_s": wall}))
    (tmp_path / "stages" / "pretrain" / "broken").mkdir()
    (tmp_path / "stages" / "pretrain" / "broken" / "done.json").write_text("{not json")  # skipped

    def status(kinds: tuple[str, ...]) -> str:
        with plan_stages() as plan:
            for kind in kinds:
                cache.run_stage(tmp_path, kind, {"x": 3}, lambda d: {})
        return format_plan(plan, now=time.time())

    text = status(("pretrain",))
    row = text.splitlines()[1]
    assert row.split() == ["pretrain", "0", "1", "7.5", "min*", "7.5", "min"]
    assert "0 done, 1 pending: about 7.5 min left" in text and "* none of this kind done here" in text
    text = status(("pretrain", "decode"))
    assert "about 7.5 min left, plus the decode stages (no estimate" in text


def test_an_interrupted_stage_is_estimated_in_full(tmp_path: Path) -> None:
    d, _ = cache.run_stage(tmp_path, "pretrain", {"x": 1}, lambda d: {}, log=lambda s: None)
    rec = json.loads((d / "done.json").read_text())
    (d / "done.json").write_text(json.dumps({**rec, "wall_s": 600.0}))  # a done LAM took 10 min
    started = tmp_path / "stages" / "pretrain" / cache.stage_key("pretrain", {"x": 2})
    started.mkdir()
    (started / "stage.json").write_text("{}")
    (started / "ckpt.pt").write_text("")
    now = time.time()
    os.utime(started / "stage.json", (now - 480, now - 480))  # started 8 min ago

    def status(last_write: float) -> str:
        os.utime(started / "ckpt.pt", (now - last_write, now - last_write))
        with plan_stages() as plan:
            for x in (1, 2):
                cache.run_stage(tmp_path, "pretrain", {"x": x}, lambda d: {})
        return format_plan(plan, now=now)

    # its last checkpoint 400 s ago: interrupted, it starts over from it: the whole mean (10 min) left
    text = status(400)
    assert "1 done, 1 pending: about 10.0 min left" in text
    assert "started 8.0 min ago (interrupted, last write 6.7 min ago): pretrain" in text
    # a checkpoint 60 s ago: running for 8 min, 2 left
    text = status(60)
    assert "1 done, 1 pending: about 2.0 min left" in text
    assert "started 8.0 min ago (running, last write 1.0 min ago): pretrain" in text
    # another process holds the stage's lock (a 128-px LAM writes nothing for an hour between checkpoints): running
    import subprocess
    import sys

    from masklam.locks import lock_path

    lock_path(started).touch()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1]); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
                               str(lock_path(started))], stdout=subprocess.PIPE, text=True)
    (started / "config.json").write_text(json.dumps({"step": 300, "total_steps": 1000}))  # a LAM's checkpoint
    os.utime(started / "config.json", (now - 400, now - 400))
    try:
        assert holder.stdout.readline().strip() == "held"
        text = status(400)
        assert "started 8.0 min ago (running, last write 6.7 min ago, checkpoint at step 300 of 1000): pretrain" in text
        assert "1 done, 1 pending: about 2.0 min left" in text
    finally:
        holder.kill()
        holder.wait()
    assert "(interrupted, last write 6.7 min ago, checkpoint at step 300 of 1000)" in status(400)  # holder gone


def test_a_checkpointing_stage_is_estimated_at_its_own_pace(tmp_path: Path) -> None:
    """A LAM whose run resumed at step 100 and checkpointed step 300 of 1000 800 s later runs 4 s a step: 700 steps
    left, less the time since that checkpoint while it runs; no done stage of its kind is needed."""
    def first_run(d: Path) -> dict:
        (d / "config.json").write_text(json.dumps({"step": 100, "total_steps": 1000}))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.run_stage(tmp_path, "pretrain", {"x": 1}, first_run, log=lambda s: None)
    d = tmp_path / "stages" / "pretrain" / cache.stage_key("pretrain", {"x": 1})
    seen = []
    with pytest.raises(KeyboardInterrupt):  # the second run records the step it resumes from
        cache.run_stage(tmp_path, "pretrain", {"x": 1}, lambda d: seen.append(cache.stage_record(d)) or first_run(d),
                        log=lambda s: None)
    assert seen[0]["resumed_step"] == 100
    (d / "config.json").write_text(json.dumps({"step": 300, "total_steps": 1000}))
    (d / cache.RESUME_STATE).write_text("state")
    now = time.time()

    def status(checkpoint_ago: float) -> str:
        os.utime(d / "stage.json", (now - 1000, now - 1000))
        for f in ("config.json", cache.RESUME_STATE):
            os.utime(d / f, (now - checkpoint_ago, now - checkpoint_ago))
        with plan_stages() as plan:
            cache.run_stage(tmp_path, "pretrain", {"x": 1}, lambda d: {})
        return format_plan(plan, now=now)

    text = status(200)  # running (a write 200 s ago): 800 s for 200 steps, 700 left, 200 s of them done
    assert "0 done, 1 pending: about 43.3 min left" in text and ", 4.0 s per step)" in text
    assert "about 35.0 min left" in status(400)  # interrupted: 600 s for 200 steps, 700 steps from the checkpoint


def test_a_stage_naming_a_pending_stage_waits_on_it(tmp_path: Path) -> None:
    root = tmp_path / "rün ☃"  # not ASCII: json.dumps would spell it r\u00fcn \u2603
    with plan_stages() as plan:
        d, _ = cache.run_stage(root, "collect", {"task": "t"}, lambda d: {})
        cache.run_stage(root, "pretrain", {"data": [str(d / "data.h5")]}, lambda d: {})
        cache.run_stage(root, "bc", {"nested": {"lam": str(d)}}, lambda d: {})
        cache.run_stage(root, "bc", {"lam": str(d) + "0"}, lambda d: {})  # another directory
        cache.run_stage(root, "bc", {"task": "t"}, lambda d: {})
    assert [(s.kind, s.key is None) for s in plan.stages] == [
        ("collect", False), ("pretrain", True), ("bc", True), ("bc", False), ("bc", False)]


def test_status_of_a_sweep_that_collects(write_toy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    conf = _toy_config(tmp_path, write_toy)
    # a real task: the run checks a collection's task before any (the toy env is no registered task)
    conf["tasks"], conf["data"] = ["cheetah-run"], {}
    conf["collect"] = {"episodes": 2, "steps": 8, "policy": "random"}  # every task's
    monkeypatch.chdir(tmp_path)
    conf["out"] = "run"
    (tmp_path / "sweep.json").write_text(json.dumps(conf))
    cfg = ex.load_config(tmp_path / "sweep.json")
    plan = ex.sweep_status(cfg)
    # the collect stage is pending with its key; every other stage waits on it (its data files are not known)
    assert [(s.kind, s.key is not None) for s in plan.stages if s.key is not None] == [("collect", True)]
    assert _counts(plan) == {"collect": (0, 1), "bc": (0, 4), "evaluate": (0, 10), "pretrain": (0, 1),
                             "decode": (0, 2)}
    assert ex.main([str(tmp_path / "sweep.json"), "--status"]) == 0
    out = capsys.readouterr().out
    assert "run does not exist yet: nothing done" in out and "0 done, 18 pending" in out
    assert "  cheetah-run train data: collect 1" in out and "cheetah-run seed 0 lapo: pretrain 1, bc 1" in out
    assert not Path("run").exists()
    with pytest.raises(MasklamError, match="unknown task 'cheetah-rnu'"):  # as a run would refuse it: before
        ex.main([str(tmp_path / "sweep.json"), "--status", "--tasks", "cheetah-rnu"])

    # collected by a run that spelled --out as an absolute path: the stages on it key the paths it saved
    collect = plan.stages[0]
    d = tmp_path / "run" / "stages" / "collect" / collect.key
    d.mkdir(parents=True)
    write_toy(d / "data.h5", n_traj=5, length=16)
    (d / "done.json").write_text(json.dumps({"hash": collect.key, "result": {"paths": [str(d / "data.h5")]}}))
    plan = ex.sweep_status(cfg)
    assert _counts(plan)["collect"] == (1, 0)
    lam = next(s for s in plan.stages if s.kind == "pretrain")
    assert lam.key is not None and lam.config["data"] == [str(d / "data.h5")]
    assert stages.collect_stage(Path("run"), "cheetah-run", conf["collect"]) == [
        str(d / "data.h5")]


def test_masklam_experiment_checks_each_collection_once(tmp_path: Path, monkeypatch) -> None:
    """`masklam experiment --status` checks every collection up front, once (not again inside the dry run)."""
    from masklam.data import collect
    from masklam.downstream.experiment_config import collections, load_config

    checked: list[str] = []
    real = collect.check_collection
    monkeypatch.setattr(collect, "check_collection", lambda c: checked.append(c.task) or real(c))
    assert ex.main(["quickstart-toy", "--status", "--out", str(tmp_path / "run")]) == 0
    expected = [task for task, _, _ in collections(load_config("quickstart-toy", out=tmp_path / "run"))]
    assert checked == expected == ["cheetah-run", "cheetah-run"]  # its distracted and clean data
