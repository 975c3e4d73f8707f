"""experiment.py, stages.py, results.py: the stage cache, config parsing and validation, normalisation, and a
tiny end-to-end sweep."""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from masklam.downstream import experiment as ex
from masklam.downstream import cache
from masklam.downstream import results, stages
from masklam.downstream.results import RESULT_COLUMNS as COLUMNS
from masklam.errors import MasklamError

torch.set_num_threads(1)


class ToyEnv:
    """Brightness world matching write_toy's frames: reward = 1 - |a_1 - (2 b / 255 - 1)|."""

    def __init__(self, img_size: int, max_episode_steps: int) -> None:
        self.hw, self.length = img_size, max_episode_steps

    def _obs(self) -> np.ndarray:
        o = np.zeros((self.hw, self.hw, 3), np.uint8)
        o[..., 0] = int(self.b)
        return o

    def reset(self, seed: int):  # noqa: ANN201
        self.rng, self.t = np.random.default_rng(seed), 0
        self.b = self.rng.uniform(40, 215)
        return self._obs(), {}

    def step(self, a):  # noqa: ANN001, ANN201
        r = 1 - abs(float(a[1]) - (2 * int(self.b) / 255 - 1))
        self.b, self.t = self.rng.uniform(40, 215), self.t + 1
        return self._obs(), r, False, self.t >= self.length, {}

    def close(self) -> None:
        pass


def make_toy(task: str, img_size: int = 16, max_episode_steps: int = 4, video_split: str = "train", **_) -> ToyEnv:
    assert task == "toy-bright" and video_split in ("train", "eval")
    return ToyEnv(img_size, max_episode_steps)


def test_stage_cache_reuses_and_reruns(tmp_path: Path) -> None:
    calls: list[Path] = []

    def fn(d: Path) -> dict:
        calls.append(d)
        return {"value": len(calls)}

    d1, r1 = cache.run_stage(tmp_path, "bc", {"lr": 1e-3, "data": ["a.h5"]}, fn, log=lambda s: None)
    d2, r2 = cache.run_stage(tmp_path, "bc", {"data": ["a.h5"], "lr": 1e-3}, fn, log=lambda s: None)
    assert (d1, r1) == (d2, r2) == (d1, {"value": 1}) and len(calls) == 1
    d3, r3 = cache.run_stage(tmp_path, "bc", {"lr": 2e-3, "data": ["a.h5"]}, fn, log=lambda s: None)
    assert d3 != d1 and r3 == {"value": 2}
    # a done.json whose hash does not match (e.g. a stage dir copied by hand) is not trusted
    (d1 / "done.json").write_text(json.dumps({"hash": "other", "result": {}}))
    assert cache.run_stage(tmp_path, "bc", {"lr": 1e-3, "data": ["a.h5"]}, fn, log=lambda s: None)[1] == {"value": 3}
    # an interrupted stage (no done.json) runs again in the same directory
    def boom(d: Path) -> dict:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.run_stage(tmp_path, "decode", {"x": 1}, boom, log=lambda s: None)
    d4, _ = cache.run_stage(tmp_path, "decode", {"x": 1}, fn, log=lambda s: None)
    assert d4 == calls[-1] and (d4 / "stage.json").is_file()
    # rewriting a data file (same path) invalidates the stages built on it
    (tmp_path / "d.h5").write_bytes(b"12")
    n = len(calls)
    cache.run_stage(tmp_path, "bc", {"data": [str(tmp_path / "d.h5")]}, fn, log=lambda s: None)
    cache.run_stage(tmp_path, "bc", {"data": [str(tmp_path / "d.h5")]}, fn, log=lambda s: None)
    (tmp_path / "d.h5").write_bytes(b"123")
    cache.run_stage(tmp_path, "bc", {"data": [str(tmp_path / "d.h5")]}, fn, log=lambda s: None)
    assert len(calls) == n + 2


def test_a_stage_holds_its_lock_while_it_runs(tmp_path: Path) -> None:
    """Every stage, not only a LAM's: another process sees it held (`--status`: running, however long it writes
    nothing) and cannot compute it at the same time; the lock is gone once it is done."""
    import subprocess
    import sys

    from masklam.errors import MasklamRuntimeError
    from masklam.locks import lock_path

    probe = ("import fcntl, sys; f = open(sys.argv[1])\ntry: fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)\n"
             "except BlockingIOError: print('held')\nelse: print('free')")
    seen = []

    def fn(d: Path) -> dict:
        seen.append(subprocess.run([sys.executable, "-c", probe, str(lock_path(d))], capture_output=True,
                                   text=True, check=True).stdout.strip())
        return {"value": 1}

    d, result = cache.run_stage(tmp_path, "evaluate", {"episodes": 3}, fn, log=lambda s: None)
    assert seen == ["held"] and result == {"value": 1} and not lock_path(d).exists()

    key = cache.stage_key("bc", {"lr": 1.0})
    lock = lock_path(tmp_path / "stages" / "bc" / key)
    lock.parent.mkdir(parents=True)
    lock.touch()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1]); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
                               str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(MasklamRuntimeError, match=f"{key} is being written by another masklam process"):
            cache.run_stage(tmp_path, "bc", {"lr": 1.0}, lambda d: pytest.fail("computed twice"), log=lambda s: None)
    finally:
        holder.kill()
        holder.wait()


def test_a_trainer_version_bump_recomputes_every_stage_it_computes(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from masklam.downstream import bc, decode

    calls: list[str] = []

    def fn(d: Path) -> dict:
        calls.append(d.parent.name)
        return {}

    def run_all() -> None:  # the IDM is trained by the BC trainer under the kind "idm"
        for kind in ("bc", "idm"):
            cache.run_stage(tmp_path, kind, {"lr": 1e-3}, fn, log=lambda s: None, version=bc.VERSION)
        cache.run_stage(tmp_path, "decode", {"lr": 1e-3}, fn, log=lambda s: None, version=decode.VERSION)
        cache.run_stage(tmp_path, "collect", {"lr": 1e-3}, fn, log=lambda s: None)

    run_all()
    run_all()
    assert calls == ["bc", "idm", "decode", "collect"]  # cached
    monkeypatch.setattr(bc, "VERSION", bc.VERSION + 1)
    run_all()
    assert calls[4:] == ["bc", "idm"]  # both stages of the BC trainer, nothing else
    # the stage adapters pass their trainer's version: bc_stage for "idm" uses BC's
    seen: list[int] = []
    monkeypatch.setattr(stages, "run_stage", lambda *a, version=1, **k: seen.append(version) or (tmp_path, {}))
    stages.bc_stage(tmp_path, "idm", {}, "cpu", False)
    assert seen == [bc.VERSION]
    assert cache.stage_key("collect", {"lr": 1e-3}) == cache.stage_key("collect", {"lr": 1e-3}, version=1)


def test_checkpoint_cadence_reaches_the_lam_but_not_its_stage_key(tmp_path: Path, monkeypatch) -> None:
    """[pretrain] ckpt_every / log_every change how often a LAM checkpoints, not what it computes: a sweep given
    them resumes the same LAM stage (checkpointing a running sweep more often does not start it again)."""
    from masklam.downstream import cache, stages
    from masklam.train import pretrain as pretrain_module

    keys, cfgs = [], []
    monkeypatch.setattr(stages, "run_stage", lambda root, kind, conf, fn, log=print, meaning=None, version=1: (
        keys.append(cache.stage_key(kind, conf, meaning, version)), (root, fn(root)))[1])
    monkeypatch.setattr(pretrain_module, "pretrain", lambda cfg: cfgs.append(cfg) or {"probe_nmse": 0.5})
    args = (tmp_path, "masklam", ["d.h5"], 16, 0, 0)
    stages.pretrain_stage(*args, {"mask_target": True}, "cpu", False)
    stages.pretrain_stage(*args, {"mask_target": True, "ckpt_every": 100, "log_every": 10}, "cpu", False)
    stages.pretrain_stage(*args, {"mask_target": True, "updates": 900}, "cpu", False)
    assert keys[0] == keys[1] != keys[2]
    assert [(c.ckpt_every, c.log_every) for c in cfgs[:2]] == [(500, 100), (100, 10)]


def test_normalize_divides_by_full_bc_mean_over_seeds() -> None:
    raw = [{"method": "bc-full", "task": "t", "split": "id", "variant": "train", "return": r, "seed": s}
           for s, r in ((0, 100.0), (1, 300.0))]
    raw += [{"method": "lapo", "task": "t", "split": "id", "variant": "train", "return": 50.0, "seed": 0},
            {"method": "lapo", "task": "t", "split": "ood", "variant": "train", "return": 50.0, "seed": 0},
            {"method": "lapo-clean", "task": "t", "split": "id", "variant": "clean", "return": 50.0, "seed": 0},
            {"method": "bc-full-clean", "task": "t", "split": "id", "variant": "clean", "return": 25.0, "seed": 0}]
    rows = results.normalize(raw)
    assert [r["normalized_return"] for r in rows[:3]] == [0.5, 1.5, 0.25]
    assert np.isnan(rows[3]["normalized_return"])  # no OOD normaliser measured
    assert rows[4]["normalized_return"] == 2.0 and "variant" not in rows[0]


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(MasklamError, match="no such file"):
        ex.load_config(tmp_path / "none.toml")
    for text, named in (('out = "x"\ntasks = ["t"]\nmethods = ["lapo"]\nbogus = 1\n', "unknown key 'bogus'"),
                        ('out = "x"\ntasks = ["t"]\nmethods = ["vqvae"]\n[data.t]\ntrain = ["a.h5"]\n',
                         "unknown method"),
                        ('out = "x"\ntasks = ["t"]\nmethods = ["lapo"]\n', "no data for task"),
                        ('out = "x"\ntasks = ["t"\n', "cannot parse"),
                        ('out = "x"\ntasks = ["t"]\nmethods = ["lapo"]\nseeds = [0, 0]\n', "seeds lists 0 twice"),
                        ('out = "x"\ntasks = ["t"]\nmethods = ["lapo"]\n[data.t]\ntrain = ["a.h5"]\n[decode]\n'
                         'heldout = 0.2\n', r"heldout differs between the stage tables \(\[pretrain\] 0.1, .*"
                                            r"\[decode\] 0.2")):
        (tmp_path / "c.toml").write_text(text)
        with pytest.raises(MasklamError, match=named):
            ex.load_config(tmp_path / "c.toml")


BASE = 'out = "x"\ntasks = ["t"]\nmethods = ["lapo"]\n'


@pytest.mark.parametrize("table, key", [
    ("", "lable = [2]"),  # top level
    ("[pretrain]", "stpes = 3"), ("[bc]", "batchsize = 8"), ("[bc_full]", "steps = 8"), ("[idm]", "lr_ = 1.0"),
    ("[decode]", "layer = 3"), ("[eval]", "episode = 3"), ("[env]", "max_steps = 5"),
    ("[data.t.collect]", "episodez = 3"), ("[data.t]", "colect = {}"),
])
def test_a_typo_in_any_table_fails_at_load_naming_the_key(tmp_path: Path, table: str, key: str) -> None:
    data = '[data.t]\ntrain = ["a.h5"]\n'
    if table.startswith("[data.t"):
        data = ""
    text = BASE + (key + "\n" if not table else "") + data + (f"{table}\n{key}\n" if table else "")
    (tmp_path / "s.toml").write_text(text)
    with pytest.raises(MasklamError, match=repr(key.split(" ")[0])) as e:
        ex.load_config(tmp_path / "s.toml")
    assert "\n" not in str(e.value)
    # the same tables without the typo load
    (tmp_path / "ok.toml").write_text(BASE + '[data.t]\ntrain = ["a.h5"]\n[data.t.collect]\nepisodes = 3\n'
                                      "[pretrain]\nheldout = 0.2\n[bc]\nupdates = 2\n[bc_full]\nupdates = 3\n"
                                      "[idm]\nlr = 0.1\n[decode]\nlayers = 3\n[eval]\nepisodes = 2\n"
                                      "[env]\nmax_episode_steps = 5\n")
    ex.load_config(tmp_path / "ok.toml")


def _read(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def _bc_conf(policy_dir: str) -> dict:
    return json.loads((Path(policy_dir) / "stage.json").read_text())["config"]


def _independent_return(policy_dir: Path, episodes: int) -> float:
    """Mean return of an action policy in ToyEnv (3 steps) over eval-stream episodes 0.., without the rollout code."""
    from masklam.downstream.policy import ImagePolicy
    from masklam.seeding import stream_seed

    pol, total = ImagePolicy.from_pretrained(policy_dir), 0.0
    for i in range(episodes):
        env = ToyEnv(16, 3)
        obs, _ = env.reset(stream_seed("eval", 0, i))
        done = False
        while not done:
            obs, r, term, trunc, _ = env.step(pol.select_action(obs[None, None])[0])
            total, done = total + r, term or trunc
    return total / episodes


def test_tiny_end_to_end(write_toy, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    toy = write_toy(tmp_path / "toy.h5", n_traj=5, length=16)
    clean = write_toy(tmp_path / "clean.h5", n_traj=5, length=16, seed=1)
    conf = {
        "out": str(tmp_path / "run"), "tasks": ["toy-bright"],
        "methods": ["lapo", "masklam", "laom-sup", "lapo-clean", "bc", "idm"],
        "latent_dims": [4], "labels": [1, 2], "seeds": [0],
        "data": {"toy-bright": {"train": [str(toy)], "clean": [str(clean)]}},
        "pretrain": {"updates": 2, "batch_size": 8, "head_dim": 16, "heldout": 0.2, "log_every": 1,
                     "recon_samples": 2},
        "bc": {"updates": 2, "batch_size": 8, "frame_stack": 1, "hidden": 16, "heldout": 0.2},
        "decode": {"updates": 5, "batch_size": 8, "heldout": 0.2},
        "eval": {"episodes": 2, "workers": 0},
        "env": {"factory": "test_downstream_experiment:make_toy", "max_episode_steps": 3},
        "progress": False,
    }
    (tmp_path / "sweep.json").write_text(json.dumps(conf))
    assert ex.main([str(tmp_path / "sweep.json")]) == 0
    rows = _read(tmp_path / "run" / "results.csv")
    key = {(r["method"], r["labels"], r["split"]): r for r in rows}
    # LAM methods x 2 budgets x 2 splits (lapo-clean: id only) + bc, idm x 2 x 2 + bc-full x 2 + bc-full-clean
    assert len(rows) == 3 * 2 * 2 + 2 + 2 * 2 * 2 + 2 + 1
    assert key[("bc-full", "4", "id")]["latent_dim"] == "0" and key[("bc-full", "4", "id")]["probe_nmse"] == ""
    assert key[("bc", "1", "ood")]["probe_nmse"] == "" and key[("idm", "2", "id")]["probe_nmse"] == ""
    assert float(key[("lapo", "2", "id")]["probe_nmse"]) > 0 and key[("lapo", "2", "id")]["latent_dim"] == "4"
    assert ("lapo-clean", "1", "ood") not in key
    for r in rows:
        ref = key[("bc-full-clean" if r["method"] in ("lapo-clean", "bc-full-clean") else "bc-full",
                   "4", r["split"])]
        assert float(r["normalized_return"]) == pytest.approx(float(r["return"]) / float(ref["return"]))
    # each row's return is its policy's, measured here by an independent loop over the eval stream's episodes
    for (method, labels) in (("bc-full", "4"), ("bc", "2")):
        row = key[(method, labels, "id")]
        ev = [json.loads(p.read_text())["config"]
              for p in (tmp_path / "run" / "stages" / "evaluate").glob("*/stage.json")]
        policy_dirs = {c["policy"] for c in ev if c["split"] == "id" and c["decoder"] is None}
        pol_dir = next(d for d in policy_dirs if _bc_conf(d).get("labels") == (None if method == "bc-full" else 2)
                       and _bc_conf(d)["target"] == "action" and _bc_conf(d)["data"] == [str(toy)])
        assert float(row["return"]) == pytest.approx(_independent_return(Path(pol_dir), episodes=2), abs=1e-9)
        assert float(row["return_sem"]) > 0 and row["expert_fraction"] == "nan"  # no expert for the toy task
    stages = tmp_path / "run" / "stages"
    # a LAM per method/dim/seed, shared across budgets, except laom-sup (one per budget): 1 + 1 + 2 + 1
    assert len(list((stages / "pretrain").iterdir())) == 5
    # each row names the pretrain stage of its LAM (the report shows those): its method and data, laom-sup's budget
    for r in rows:
        if r["method"] not in ("lapo", "masklam", "laom-sup", "lapo-clean"):
            assert r["lam_stage"] == ""
            continue
        lam = json.loads((stages / "pretrain" / r["lam_stage"] / "stage.json").read_text())["config"]
        assert lam["method"] == r["method"].removesuffix("-clean") and lam["latent_dim"] == 4
        assert lam["data"] == [str(clean if r["method"] == "lapo-clean" else toy)]
        assert lam["labels"] == (int(r["labels"]) if r["method"] == "laom-sup" else 0)
    assert len({r["lam_stage"] for r in rows if r["lam_stage"]}) == 5
    page = (tmp_path / "run" / "report.html").read_text()
    # the reconstruction grids of the LAMs that make them, side by side, captioned by method, recipe and seed
    # (lapo-clean: LAPO on the clean data that experiment.json records)
    group = page[page.index("toy-bright, latent dim 4, seed 0"):]
    assert [c.split(" · ")[:3] for c in re.findall(r"<figcaption>(.*?)</figcaption>", group[:group.index("</div>")])] \
        == [["lapo-clean", "default", "seed 0"], ["lapo", "default", "seed 0"], ["masklam", "default", "seed 0"]]
    capsys.readouterr()
    # a second run reuses every stage and reproduces the rows
    assert ex.main([str(tmp_path / "sweep.json"), "--no-report"]) == 0
    assert "running" not in capsys.readouterr().out
    assert _read(tmp_path / "run" / "results.csv") == rows
    # changing the decoder config re-runs decoders and their evaluations only
    conf["decode"]["updates"] = 6
    rows2 = ex.run_experiment(ex.ExperimentConfig(**conf), render=False)
    out = capsys.readouterr().out
    assert out.count("[decode") == 8 and "[pretrain" not in out and "[bc " not in out
    assert len(rows2) == len(rows)


@pytest.mark.slow
def test_real_env_end_to_end(tmp_path: Path) -> None:
    """Collect with the real distracted env (random policy), LAPO + BC stages, evaluate in worker processes."""
    conf = ex.ExperimentConfig(
        out=tmp_path / "run", tasks=["cheetah-run"], methods=["lapo", "bc"], latent_dims=[8], labels=[2],
        data={"cheetah-run": {"collect": {"episodes": 4, "steps": 12, "policy": "random", "img_size": 32,
                                          "shadows": False, "reflections": False}}},
        pretrain={"updates": 2, "batch_size": 8, "head_dim": 16, "heldout": 0.25, "recon_samples": 2},
        bc={"updates": 2, "batch_size": 8, "frame_stack": 1, "hidden": 16, "heldout": 0.25},
        decode={"updates": 5, "batch_size": 8, "heldout": 0.25},
        eval={"episodes": 2, "workers": 2}, env={"max_episode_steps": 5}, progress=False)
    rows = ex.run_experiment(conf)
    assert {(r["method"], r["split"]) for r in rows} == {(m, s) for m in ("bc-full", "lapo", "bc")
                                                          for s in ("id", "ood")}
    assert all(np.isfinite(r["return"]) for r in rows)
    assert (tmp_path / "run" / "report" / "frames.png").is_file()  # the collected file has masks
    assert list((tmp_path / "run" / "stages" / "pretrain").glob("*/recon.png"))


def test_collect_stage_key_follows_the_expert_weights(tmp_path: Path) -> None:
    from masklam.downstream.stages import expert_digest

    f = tmp_path / "e.safetensors"
    f.write_bytes(b"one")
    first = expert_digest("cheetah-run", str(f))
    f.write_bytes(b"two")
    assert first and expert_digest("cheetah-run", str(f)) != first
    assert expert_digest("cheetah-run", str(tmp_path / "missing.safetensors")) is None


def test_lams_trained_in_parallel_processes_are_the_sweeps_lams(tmp_path: Path, capfd) -> None:
    import dataclasses

    from masklam.downstream.experiment import run_experiment
    from masklam.quickstart import QuickstartConfig, experiment_config

    exp = experiment_config(QuickstartConfig(preset="toy", out=tmp_path / "qs", progress=False, device="cpu"))
    exp = dataclasses.replace(exp, methods=["lapo", "masklam"], train_workers=2, labels=[1], splits=["id"],
                              eval={"episodes": 1, "workers": 0})
    rows = run_experiment(exp, render=False)
    out = capfd.readouterr().out  # the workers' output too
    threads = max(1, (os.cpu_count() or 1) // 2)  # the cores shared out between the 2 workers
    assert f"training 2 LAMs and 1 full-data BCs of cheetah-run seed 0, 2 at a time ({threads} torch thread" in out
    for name, kind in (("lapo", "pretrain"), ("masklam", "pretrain"), ("bc-full", "bc")):  # each line says whose
        assert re.search(rf"^{name}: \[{kind} \w+\] running$", out, re.M), name
    lams = sorted((tmp_path / "qs" / "stages" / "pretrain").glob("*/metrics.json"))
    assert len(lams) == 2
    assert all(json.loads(p.read_text())["torch_threads"] == threads for p in lams)  # computed in the workers
    # the sweep itself ran no LAM (its stage lines name their method; the workers' do not): each was found cached
    assert not re.search(r"\[pretrain \w+\] running \(", out)
    assert not re.search(r"\[bc \w+\] running \(cheetah-run seed 0 bc-full\)", out)  # nor the full-data BC
    assert all(r["probe_nmse"] is not None for r in rows if r["method"] in ("lapo", "masklam"))


def test_a_workers_lines_start_with_its_name_however_they_are_written() -> None:
    import io

    from masklam.downstream.sweep import _Prefixed

    out = io.StringIO()
    stream = _Prefixed(out, "lapo: ")
    for piece in ("step 1", "00/1000\nstep 2", "00/1000\n", "\n", "", "done\n"):  # lines cut anywhere, a blank one
        stream.write(piece)
    assert out.getvalue() == "lapo: step 100/1000\nlapo: step 200/1000\n\nlapo: done\n"


def test_after_ctrl_c_a_training_worker_begins_no_further_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from masklam.downstream import sweep

    stopping, ran = threading.Event(), []
    monkeypatch.setattr(sweep, "_STOPPING", stopping)

    def interrupted() -> None:
        ran.append("lam")
        raise KeyboardInterrupt  # the stage stopped at Ctrl-C (at its checkpoint)

    with pytest.raises(KeyboardInterrupt):
        sweep._labelled("lapo", interrupted)
    assert stopping.is_set()  # the pool now knows
    with pytest.raises(KeyboardInterrupt):  # the next queued stage (a full-data BC) does not begin
        sweep._labelled("bc-full", lambda: ran.append("bc"))
    assert ran == ["lam"]
