"""Distracting Meta-World: interface, determinism, masks, distractors, experts, the MuJoCo-3.17 fix, errors."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import gymnasium
import h5py
import numpy as np
import pytest

from masklam.envs import MW_TASKS, SUITES, make, parse_task, suite_of
from masklam.errors import MasklamError

HAVE_MW = importlib.util.find_spec("metaworld") is not None
needs_mw = pytest.mark.skipif(not HAVE_MW, reason='metaworld is not installed (pip install -e ".[metaworld]")')
FAST = dict(shadows=False, reflections=False, multisample=False)


def grow(mask: np.ndarray) -> np.ndarray:
    """Dilate (..., H, W) bool masks by one pixel (4-neighbourhood)."""
    out = mask.copy()
    for shift in (1, -1):
        for axis in (-1, -2):
            out |= np.roll(mask, shift, axis=axis)
    return out


def rollout(env, seed: int, steps: int, action_seed: int = 0):
    """Frames, masks, states and success flags of `steps` steps of seeded random actions."""
    rng = np.random.default_rng(action_seed)
    obs, info = env.reset(seed=seed)
    frames, masks, states, success = [obs], [info["mask"]], [info["state"]], [info["success"]]
    for _ in range(steps):
        obs, _, _, _, info = env.step(rng.uniform(-1, 1, 4))
        frames.append(obs), masks.append(info["mask"]), states.append(info["state"]), success.append(info["success"])
    return np.stack(frames), np.stack(masks), np.stack(states), np.array(success)


@pytest.fixture(scope="module")
def push_env():
    if not HAVE_MW:
        pytest.skip("metaworld is not installed")
    env = make("mw-push", distractors="masklam", **FAST)
    yield env
    env.close()


def test_registry_names_tasks_of_both_suites_without_metaworld():
    assert len(MW_TASKS) == 10 and "mw-pick-place" in MW_TASKS and "mw-button-press-topdown" in MW_TASKS
    assert SUITES["mw-push"] == "metaworld" and SUITES["cheetah-run"] == "dmc"
    assert suite_of("mw-anything") == "metaworld" and suite_of("walker-walk") == "dmc"
    assert parse_task("mw-pick-place") == ("mw", "pick-place") and parse_task("cheetah-run") == ("cheetah", "run")
    for task in MW_TASKS:
        assert f"masklam/{task}-v0" in gymnasium.registry


def test_bad_names_and_options_fail_in_one_line():
    for bad in ("mw-fly", "mw-", "mw-push-v3"):
        with pytest.raises(MasklamError, match="unknown Meta-World task") as e:
            make(bad)
        assert "\n" not in str(e.value) and "mw-push" in str(e.value)
    with pytest.raises(MasklamError, match="unknown distractor preset"):
        make("mw-push", distractors="heavy")


def test_missing_metaworld_says_how_to_install(monkeypatch):
    from masklam.envs import metaworld as mw

    mw.metaworld_modules.cache_clear()
    monkeypatch.setitem(sys.modules, "metaworld", None)  # import metaworld -> ImportError
    monkeypatch.setitem(sys.modules, "metaworld.env_dict", None)
    try:
        with pytest.raises(MasklamError, match=r'pip install -e "\.\[metaworld\]"') as e:
            make("mw-push")
        assert "\n" not in str(e.value)
        with pytest.raises(MasklamError, match="install.sh --metaworld"):
            from masklam.experts import load

            load("mw-reach")
    finally:
        mw.metaworld_modules.cache_clear()


@needs_mw
def test_mujoco_317_weld_fix():
    """Meta-World 3.0.0 writes 11 numbers into MuJoCo 3.17's 12-number eq_data rows; ours writes the 11."""
    import mujoco
    from metaworld.sawyer_xyz_env import SawyerMocapBase

    from masklam.envs.metaworld import load_metaworld, reset_mocap_welds

    env = load_metaworld("mw-reach")  # constructs: reset_mocap_welds ran in __init__
    m = env.model
    welds = np.flatnonzero(m.eq_type == mujoco.mjtEq.mjEQ_WELD)
    assert welds.size >= 1
    m.eq_data[welds] = 7.0
    if m.eq_data.shape[1] > 11:  # MuJoCo >= 3.17: the original crashes
        with pytest.raises(ValueError):
            SawyerMocapBase.reset_mocap_welds(env)
    reset_mocap_welds(env)
    np.testing.assert_array_equal(m.eq_data[welds, :11], [[0, 0, 0, 0, 0, 0, -1, 0, 0, 0, 5]] * welds.size)
    assert np.all(m.eq_data[welds, 11:] == 7.0)  # anything past the 11th is left alone
    env.close()


@needs_mw
def test_interface(push_env):
    obs, info = push_env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert info["mask"].shape == (64, 64) and info["mask"].dtype == bool and 0.05 < info["mask"].mean() < 0.4
    assert info["state"].shape == (39,) == (push_env.state_dim,) and info["state"].dtype == np.float32
    assert info["success"] is False and info["distractor"]["video_id"] >= 0
    assert np.any(info["state"][36:] != 0)  # the goal is observable
    assert push_env.action_space.shape == (4,) and push_env.max_episode_steps == 500
    assert push_env.action_repeat == 1 and push_env.task == "mw-push" and push_env.suite == "metaworld"
    obs2, r, term, trunc, info2 = push_env.step(np.full(4, 3.0))  # clipped, not an error
    assert obs2.shape == obs.shape and isinstance(r, float) and term is False and trunc is False
    assert info2["distractor"]["video_frame"] == 1 and isinstance(info2["success"], bool)
    assert set(push_env.profile) == {"physics", "texture", "scene", "rgb", "segmentation"}


@needs_mw
@pytest.mark.parametrize("task", MW_TASKS)
def test_determinism_per_task(task):
    env = make(task, distractors="masklam", img_size=24, **FAST)
    f1, m1, s1, _ = rollout(env, seed=5, steps=1)
    f2, m2, s2, _ = rollout(env, seed=5, steps=1)
    f3, _, s3, _ = rollout(env, seed=6, steps=1)
    env.close()
    assert f1.tobytes() == f2.tobytes() and m1.tobytes() == m2.tobytes() and s1.tobytes() == s2.tobytes()
    assert not np.array_equal(f1, f3)
    assert not np.array_equal(s1[0], s3[0])  # the layout (object / goal positions) is seeded


@needs_mw
def test_two_instances_agree_and_frames_differ_by_seed(push_env):
    other = make("mw-push", distractors="masklam", **FAST)
    f1, m1, s1, _ = rollout(push_env, seed=11, steps=3)
    f2, m2, s2, _ = rollout(other, seed=11, steps=3)
    f3, _, s3, _ = rollout(other, seed=12, steps=3)
    other.close()
    assert f1.tobytes() == f2.tobytes() and m1.tobytes() == m2.tobytes() and s1.tobytes() == s2.tobytes()
    assert not np.array_equal(f1, f3) and not np.array_equal(s1[0], s3[0])  # another seed: other frames, layout


@needs_mw
@pytest.mark.parametrize("preset", ["laom", "composite"])
def test_mask_aligned_with_rgb(preset):
    """Hiding the robot's geoms changes exactly the masked pixels (give or take a 1-px edge)."""
    env = make("mw-pick-place", distractors=preset, img_size=64, **FAST)
    env.reset(seed=2)
    for _ in range(5):
        obs, _, _, _, info = env.step(np.array([0.5, -0.3, 0.2, 1.0]))
    if preset == "laom":
        assert np.any(info["distractor"]["camera"] != 0) and np.any(info["distractor"]["color"] != 0)
    m, rend = env._model, env._renderer
    saved_rgba, saved_mat = m.geom_rgba.copy(), m.geom_matid.copy()
    m.geom_rgba[env.agent_geoms, 3] = 0.0
    m.geom_matid[env.agent_geoms] = -1  # make geom_rgba (alpha 0) decisive
    if preset == "composite":
        hidden = env._draw()[0]  # the same frame, composited again (no camera shake to apply twice)
    else:
        rend.update(env._data, env.camera_id)  # the shaken camera pose of this step
        hidden = rend.rgb()
    m.geom_rgba[:], m.geom_matid[:] = saved_rgba, saved_mat
    env.close()
    changed = np.any(obs != hidden, axis=-1)
    mask = info["mask"]
    assert mask.sum() > 200
    assert np.mean(changed[mask]) > 0.9  # the robot is where the mask says
    assert np.mean(grow(mask)[changed]) > 0.97  # and nowhere else


@needs_mw
def test_moving_mask_is_the_arm_part_of_the_robot_mask():
    robot = make("mw-reach", distractors="none", img_size=48, **FAST)
    moving = make("mw-reach", distractors="none", img_size=48, mask="moving", **FAST)
    _, m_robot, *_ = rollout(robot, seed=1, steps=1)
    _, m_moving, *_ = rollout(moving, seed=1, steps=1)
    robot.close(), moving.close()
    assert m_moving.sum() > 50 and not np.any(m_moving & ~m_robot) and m_moving.sum() < m_robot.sum()
    with pytest.raises(MasklamError, match="unknown mask"):
        make("mw-reach", mask="arm")


@needs_mw
def test_camera_right_side_up_and_named():
    env = make("mw-reach", distractors="none", img_size=32, **FAST)
    env.reset(seed=0)
    sky = env._renderer.geom_ids() < 0  # nothing drawn: the sky, above the scene
    env.close()
    assert sky[:8].mean() > 0.3 and sky[-8:].mean() < 0.05
    top = make("mw-reach", distractors="none", img_size=16, camera_id="topview", **FAST)
    assert top.camera_id == 0
    top.close()
    with pytest.raises(MasklamError, match="corner"):
        make("mw-reach", camera_id="nowhere")


@needs_mw
def test_composite_replaces_background_only_and_splits_differ():
    kw = dict(img_size=48, **FAST)
    plain, train, held = (make("mw-push", distractors=d, video_split=s, **kw)
                          for d, s in (("none", "train"), ("composite", "train"), ("composite", "eval")))
    f0, m0, s0, _ = rollout(plain, seed=4, steps=3)
    f1, m1, s1, _ = rollout(train, seed=4, steps=3)
    f2, m2, *_ = rollout(held, seed=4, steps=3)
    ids = plain._renderer.geom_ids()
    for env in (plain, train, held):
        env.close()
    np.testing.assert_array_equal(m0, m1)
    np.testing.assert_array_equal(s0, s1)  # distractors never touch the physics
    diff = np.any(f0 != f1, axis=-1)
    assert not diff[m0].any()  # the robot is untouched
    assert diff[-1][ids < 0].mean() > 0.9  # the sky shows the video
    assert 0.2 < diff.mean() < 0.8
    assert not np.array_equal(f1, f2)


@needs_mw
def test_scripted_experts_succeed_on_seeded_episodes():
    from masklam.data.collect import NoisyPolicy
    from masklam.experts import load

    for task in ("mw-reach", "mw-push", "mw-drawer-close"):
        env = make(task, distractors="none", img_size=16, max_episode_steps=200, **FAST)
        policy = NoisyPolicy(load(task), np.random.default_rng(0), 0.1)
        _, info = env.reset(seed=0)
        for _ in range(200):
            _, _, _, trunc, info = env.step(policy(info["state"]))
            if info["success"] or trunc:
                break
        env.close()
        assert info["success"], task


@needs_mw
def test_terminate_on_success_and_truncation():
    from masklam.experts import load

    env = make("mw-reach", distractors="none", img_size=16, terminate_on_success=True, **FAST)
    expert = load("mw-reach")
    _, info = env.reset(seed=0)
    for t in range(500):
        _, _, term, trunc, info = env.step(expert(info["state"]))
        if term or trunc:
            break
    assert term and info["success"] and t < 200
    env.close()
    short = make("mw-reach", distractors="none", img_size=16, max_episode_steps=3, **FAST)
    short.reset(seed=0)
    assert [short.step(np.zeros(4))[3] for _ in range(3)] == [False, False, True]
    short.close()


@needs_mw
def test_collect_writes_masks_success_and_is_deterministic(tmp_path: Path):
    from masklam.data.collect import CollectConfig, collect

    def run(out: Path) -> dict[str, np.ndarray]:
        collect(CollectConfig(task="mw-reach", out=out, distractors="composite", episodes=2, steps=40, seed=0,
                              action_noise=0.1, img_size=16, progress=False, **FAST))
        with h5py.File(out) as f:
            assert f.attrs["domain_name"] == "mw" and f.attrs["task_name"] == "reach"
            assert f.attrs["expert"] == "scripted" and not f.attrs["multisample"] and not f.attrs["shadows"]
            return {f"{g}/{k}": f[g][k][()] for g in f for k in f[g]}

    a, b = run(tmp_path / "a.h5"), run(tmp_path / "b.h5")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert a["0/success"].shape == (40,) and a["0/success"].dtype == bool
    assert a["0/masks"].shape == (40, 16, 16) and a["0/masks"].any()
    assert a["0/obs"].shape == (40, 16, 16, 3) and a["0/states"].shape == (40, 39)
    assert a["0/success"].any() or a["1/success"].any()  # the noisy expert reaches the goal in 40 steps
