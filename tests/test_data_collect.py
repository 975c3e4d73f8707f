"""`masklam collect` on the real environment: layout, alignment of frames and actions, determinism, resume."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from masklam.data import load_dataset, read_layout
from masklam.data.collect import CollectConfig, collect, main as collect_main, parts_dir
from masklam.errors import MasklamError
from masklam.seeding import stream_seed

SIZE = 32


def cfg(out: Path, **kw) -> CollectConfig:
    """A small, fast collection: random policy, no shadows or reflections, 32x32 frames."""
    base = dict(task="cheetah-run", out=out, distractors="laom", episodes=2, steps=12, seed=0, policy="random",
                img_size=SIZE, shadows=False, reflections=False, progress=False)
    base.update(kw)
    return CollectConfig(**base)


def arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path) as f:
        return {f"{g}/{k}": f[g][k][()] for g in f for k in f[g]}


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("collect") / "d.h5"
    result = collect(cfg(out))
    assert result.collected == [0, 1] and result.reused == 0
    assert np.isfinite(result.frames_per_s) and result.frames_per_s > 0  # a rate was measured (speed: benchmarks/)
    return out


def test_collected_file_has_laom_layout_plus_ours(collected: Path) -> None:
    assert not parts_dir(collected).exists() and not collected.with_name("d.h5.tmp").exists()
    with h5py.File(collected) as f:
        attrs = dict(f.attrs)
        assert (attrs["domain_name"], attrs["task_name"], attrs["img_hw"],
                attrs["split"]) == ("cheetah", "run", SIZE, "train")
        assert (attrs["distractors"], attrs["seed"], attrs["action_repeat"],
                attrs["policy"]) == ("laom", 0, 1, "random")
        assert not attrs["shadows"] and attrs["version"] == 1
        assert sorted(f.keys()) == ["0", "1"]
        g = f["1"]
        assert (g["obs"].shape == (12, SIZE, SIZE, 3) and g["obs"].dtype == np.uint8
                and g["obs"].chunks == (1, SIZE, SIZE, 3))
        assert g["masks"].shape == (12, SIZE, SIZE) and g["masks"].dtype == bool and g["masks"].compression == "lzf"
        assert g["states"].shape == (12, 17) and g["states"].dtype == np.float32
        assert g["actions"].shape == (12, 6) and g["actions"].dtype == np.float32
        assert g["rewards"].shape == (12,) and g["rewards"].dtype == np.float32
        assert g["camera"].shape == (12, 3) and g["color"].shape == (12, 3) and g["video_id"].shape == (12,)
        assert g.attrs["seed"] == stream_seed("collect", 0, 1)
        assert g.attrs["traj_return"] == pytest.approx(float(g["rewards"][()].sum(dtype=np.float64)))
        actions, masks = g["actions"][()], g["masks"][()]
        assert attrs["dataset_return"] == pytest.approx(np.mean([f[n].attrs["traj_return"] for n in "01"]))
    assert (np.abs(actions).max() <= 1.0 and np.array_equal(actions[0], actions[2])
            and not np.array_equal(actions[2], actions[3]))
    coverage = masks.mean(axis=(1, 2))
    assert (coverage > 0.005).all() and (coverage < 0.5).all()  # the agent, not the background


def test_frames_states_and_actions_are_aligned(collected: Path) -> None:
    """Replaying the stored actions from the stored episode seed reproduces every stored frame and state."""
    from masklam.envs import make

    data = load_dataset(collected, mask_key="masks").trajectory(0)
    env = make("cheetah-run", distractors="laom", img_size=SIZE, shadows=False, reflections=False, max_episode_steps=12)
    obs, info = env.reset(seed=stream_seed("collect", 0, 0))
    for t in range(12):
        np.testing.assert_array_equal(data["obs"][t], obs)
        np.testing.assert_array_equal(data["masks"][t], info["mask"])
        np.testing.assert_array_equal(data["states"][t], info["state"])
        obs, reward, _, _, info = env.step(data["actions"][t])
        assert data["rewards"][t] == pytest.approx(reward)
    env.close()


def test_same_seed_same_data_different_seed_different(collected: Path, tmp_path: Path) -> None:
    collect(cfg(tmp_path / "again.h5"))
    ref, again = arrays(collected), arrays(tmp_path / "again.h5")
    assert ref.keys() == again.keys()
    for key in ref:
        np.testing.assert_array_equal(ref[key], again[key], err_msg=key)
    collect(cfg(tmp_path / "other.h5", seed=1, episodes=1))
    assert not np.array_equal(arrays(tmp_path / "other.h5")["0/obs"], ref["0/obs"])


@pytest.mark.slow
def test_two_workers_write_the_same_data_as_one(collected: Path, tmp_path: Path) -> None:
    result = collect(cfg(tmp_path / "w2.h5", workers=2))
    assert result.collected == [0, 1] and np.isfinite(result.frames_per_s)
    ref, two = arrays(collected), arrays(tmp_path / "w2.h5")
    assert ref.keys() == two.keys()
    for key in ref:
        np.testing.assert_array_equal(ref[key], two[key], err_msg=key)


def test_extending_keeps_existing_trajectories_and_adds_the_rest(collected: Path, tmp_path: Path) -> None:
    out = tmp_path / "ext.h5"
    out.write_bytes(collected.read_bytes())
    result = collect(cfg(out, episodes=3))
    assert result.collected == [2] and result.reused == 2
    ext, ref = arrays(out), arrays(collected)
    for key in ref:
        np.testing.assert_array_equal(ext[key], ref[key], err_msg=key)
    assert read_layout(out).names == ["0", "1", "2"]
    assert collect(cfg(out, episodes=3)).collected == []  # nothing left to do


def test_resume_after_kill_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "k.h5"
    args = ["--task", "cheetah-run", "--distractors", "laom", "--episodes", "8", "--steps", "30", "--seed", "3",
            "--policy", "random", "--img-size", str(SIZE), "--no-shadows", "--no-reflections", "--no-progress",
            "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "masklam", "collect", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300  # a loaded machine: the wait ends as soon as two parts exist
    while len(list(parts_dir(out).glob("[0-9]*.h5"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # never a half-written output file
    kept = sorted(int(p.stem) for p in parts_dir(out).glob("[0-9]*.h5"))
    assert len(kept) >= 2 and kept == list(range(len(kept)))

    result = collect(cfg(out, episodes=8, steps=30, seed=3))
    assert result.reused == len(kept) and result.collected == [i for i in range(8) if i not in kept]
    lay = read_layout(out)
    assert lay.names == [str(i) for i in range(8)] and (lay.lengths == 30).all()
    with h5py.File(out) as f:
        assert [f[str(i)].attrs["seed"] for i in range(8)] == [stream_seed("collect", 3, i) for i in range(8)]
        firsts = np.stack([f[str(i)]["obs"][0] for i in range(8)])
    assert len({frame.tobytes() for frame in firsts}) == 8  # no trajectory twice
    assert not parts_dir(out).exists()  # parts were reused (not re-rendered above), then cleaned up


def test_resume_with_other_arguments_is_refused(collected: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.h5"
    out.write_bytes(collected.read_bytes())
    with pytest.raises(MasklamError, match="distractors='laom', not 'none'"):
        collect(cfg(out, distractors="none", episodes=3))
    parts = parts_dir(tmp_path / "p.h5")
    parts.mkdir()
    (parts / "config.json").write_text('{"seed": 7}')
    (parts / "000000.h5").write_bytes(b"a finished trajectory of the seed-7 run")
    with pytest.raises(MasklamError, match="seed=7, not 0"):
        collect(cfg(tmp_path / "p.h5"))
    (parts / "000000.h5").unlink()  # with no trajectory to keep, an old config is no obstacle
    assert collect(cfg(tmp_path / "p.h5", episodes=1, steps=3)).collected == [0]


def test_bad_arguments_fail_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(MasklamError, match="--episodes must be >= 1"):
        cfg(tmp_path / "x.h5", episodes=0)
    with pytest.raises(MasklamError, match="--out must end in .h5"):
        cfg(tmp_path / "x.hdf")
    with pytest.raises(MasklamError, match="cannot load an expert for cheetah-run"):
        collect(cfg(tmp_path / "x.h5", policy="expert", expert_path=tmp_path / "none.safetensors"))
    assert collect_main(["--task", "cheetah-run", "--out", str(tmp_path / "y.h5"), "--episodes", "1", "--steps", "3",
                         "--policy", "random", "--img-size", "16", "--no-shadows", "--no-progress"]) == 0
    assert read_layout(tmp_path / "y.h5").num_frames == 3


def test_unknown_task_fails_before_touching_files_and_workers_report_init_errors(tmp_path: Path) -> None:
    from masklam.data import collect as collect_module

    out = tmp_path / "u.h5"
    with pytest.raises(MasklamError, match="unknown task 'cheetah-fly'"):
        collect(cfg(out, task="cheetah-fly"))
    with pytest.raises(MasklamError, match="distractor|preset"):
        collect(cfg(out, distractors="heavy"))
    for bad, message in (({"img_size": 4}, "img_size=4 must be an integer in 8..480"),
                         ({"seed": 2 ** 32}, "seed must lie in")):  # the up-front check a sweep relies on
        with pytest.raises(MasklamError, match=message):
            collect(cfg(out, **bad))
    assert not out.exists() and not parts_dir(out).exists()
    # a worker whose environment cannot be built reports that on its first task (a pool would respawn it forever)
    collect_module._init_worker(cfg(out, task="cheetah-fly"), 1)
    try:
        with pytest.raises(MasklamError, match="unknown task"):
            collect_module._collect_one(0)
    finally:
        collect_module._WORKER.clear()


def test_noisy_expert_actions_are_seeded_clipped_and_noisy():
    from masklam.data.collect import NoisyPolicy

    base = lambda s: np.full(4, 0.9, np.float32)  # noqa: E731
    a = NoisyPolicy(base, np.random.default_rng(5), 0.3)
    b = NoisyPolicy(base, np.random.default_rng(5), 0.3)
    xs = np.stack([a(np.zeros(3)) for _ in range(2000)])
    ys = np.stack([b(np.zeros(3)) for _ in range(2000)])
    assert np.array_equal(xs, ys)
    assert xs.dtype == np.float32 and xs.max() <= 1.0 and xs.min() >= -1.0
    assert (xs == 1.0).mean() > 0.3  # 0.9 + N(0, 0.3) is clipped at 1 about 37% of the time
    below = xs[xs < 1.0]
    assert 0.2 < np.std(xs) < 0.3 and below.mean() < 0.9
