"""Tests of masklam.envs: determinism, mask alignment, video splits, tasks, errors, registration."""
from __future__ import annotations

import gymnasium
import numpy as np
import pytest

from masklam.envs import PRESETS, TASKS, DistractorConfig, make
from masklam.envs.videos import NUM_EVAL_VIDEOS, NUM_TRAIN_VIDEOS, DavisVideos, ProceduralVideos, video_seed
from masklam.errors import MasklamError


def rollout(env, seed: int, steps: int, action_seed: int = 0):
    """Frames, masks, states, rewards and distractor infos of `steps` steps of smooth random actions."""
    rng = np.random.default_rng(action_seed)
    obs, info = env.reset(seed=seed)
    frames, masks, states, infos, rewards = [obs], [info["mask"]], [info["state"]], [info["distractor"]], []
    a = rng.uniform(-1, 1, env.action_space.shape)
    for _ in range(steps):
        a = np.clip(a + rng.normal(0, 0.5, a.shape), -1, 1)
        obs, r, term, trunc, info = env.step(a)
        frames.append(obs), masks.append(info["mask"]), states.append(info["state"])
        infos.append(info["distractor"]), rewards.append(r)
    return np.stack(frames), np.stack(masks), np.stack(states), infos, np.array(rewards)


def grow(mask: np.ndarray) -> np.ndarray:
    """Dilate (..., H, W) bool masks by one pixel (4-neighbourhood)."""
    out = mask.copy()
    for shift in [1, -1]:
        for axis in [-1, -2]:
            out |= np.roll(mask, shift, axis=axis)
    return out


@pytest.fixture(scope="module")
def laom_env():
    env = make("cheetah-run", distractors="laom")
    yield env
    env.close()


def test_interface(laom_env):
    obs, info = laom_env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert info["mask"].shape == (64, 64) and info["mask"].dtype == bool
    assert info["state"].dtype == np.float32 and info["state"].shape == (laom_env.state_dim,) == (17,)
    d = info["distractor"]
    assert d["video_id"] in range(NUM_TRAIN_VIDEOS) and d["video_frame"] == 0
    assert d["camera"].shape == (3,) and d["color"].shape == (3,)
    assert np.any(d["camera"] != 0) and np.all(np.abs(d["color"]) <= 0.1 + 1e-6)
    assert laom_env.action_space.shape == (6,) and laom_env.max_episode_steps == 1000
    obs2, r, term, trunc, info2 = laom_env.step(np.zeros(6))
    assert obs2.shape == obs.shape and isinstance(r, float) and term is False and trunc is False
    assert info2["distractor"]["video_frame"] == 1


def test_same_seed_identical_different_seed_different(laom_env):
    f1, m1, s1, i1, r1 = rollout(laom_env, seed=7, steps=4)
    other = make("cheetah-run", distractors="laom")
    f2, m2, s2, i2, r2 = rollout(other, seed=7, steps=4)
    assert f1.tobytes() == f2.tobytes() and m1.tobytes() == m2.tobytes()
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(r1, r2)
    f3, m3, s3, i3, _ = rollout(other, seed=8, steps=4)
    other.close()
    assert not np.array_equal(f1, f3)
    assert not np.array_equal(s1[0], s3[0])  # initial state is seeded too
    assert not np.allclose(i1[0]["camera"], i3[0]["camera"]) and not np.allclose(i1[0]["color"], i3[0]["color"])
    # reset(seed) on the same env reproduces the episode exactly
    f4, m4, *_ = rollout(laom_env, seed=7, steps=4)
    assert f4.tobytes() == f1.tobytes() and m4.tobytes() == m1.tobytes()


def test_mask_ignores_background_video_and_follows_agent():
    train = make("cheetah-run", distractors="masklam")
    evalu = make("cheetah-run", distractors="masklam", video_split="eval")
    f1, m1, s1, i1, _ = rollout(train, seed=3, steps=20, action_seed=1)
    f2, m2, s2, i2, _ = rollout(evalu, seed=3, steps=20, action_seed=1)
    train.close(), evalu.close()
    assert i1[0]["video_id"] != i2[0]["video_id"]
    np.testing.assert_array_equal(s1, s2)  # same physics
    np.testing.assert_array_equal(m1, m2)  # the mask does not depend on the video
    assert np.mean(np.any(f1 != f2, axis=-1) & ~m1) > 0.3  # but the background differs
    # the agent moves: its mask changes and the pixels inside it change
    assert not np.array_equal(m1[0], m1[-1])
    inside = m1[0] | m1[-1]
    assert np.mean(np.any(f1[0] != f1[-1], axis=-1)[inside]) > 0.5
    assert all(m.sum() > 20 for m in m1)


def test_mask_aligned_with_rgb_under_shake_and_colour():
    """Hiding the agent's geoms changes exactly the pixels of the mask (give or take a 1-px edge)."""
    env = make("walker-run", distractors="laom", shadows=False, reflections=False)
    env.reset(seed=5)
    for _ in range(10):
        obs, _, _, _, info = env.step(env.action_space.sample() * 0 + 0.5)
    assert np.any(info["distractor"]["camera"] != 0) and np.any(info["distractor"]["color"] != 0)
    m, rend = env._model, env._renderer
    saved = m.geom_rgba.copy()
    m.geom_rgba[env.agent_geoms, 3] = 0.0
    m.geom_matid[env.agent_geoms] = -1  # make geom_rgba (alpha 0) decisive
    rend.update(env._data, env.camera_id)
    hidden = rend.rgb()
    m.geom_rgba[:] = saved
    env.close()
    changed = np.any(obs != hidden, axis=-1)
    mask = info["mask"]
    grown = grow(mask)
    assert mask.sum() > 50
    assert np.mean(changed[mask]) > 0.9  # the agent is where the mask says
    assert np.mean(grown[changed]) > 0.97  # and nowhere else


def test_colour_change_only_touches_agent():
    kw = dict(shadows=True, reflections=False)
    plain = make("cheetah-run", distractors="none", **kw)
    colour = make("cheetah-run", distractors="none", color_scale=0.3, **kw)
    f1, m1, *_ = rollout(plain, seed=2, steps=3)
    f2, m2, *_ = rollout(colour, seed=2, steps=3)
    plain.close(), colour.close()
    np.testing.assert_array_equal(m1, m2)
    diff = np.any(f1 != f2, axis=-1)
    assert diff[m1].mean() > 0.9
    assert not diff[~grow(m1)].any()  # beyond the 1-px antialiased edge nothing changes


def test_composite_paints_the_video_over_the_sky_only():
    kw = dict(img_size=32, shadows=False, reflections=False)
    plain, comp = make("cheetah-run", distractors="none", **kw), make("cheetah-run", distractors="composite", **kw)
    f1, m1, s1, *_ = rollout(plain, seed=1, steps=2)
    f2, m2, s2, i2, _ = rollout(comp, seed=1, steps=2)
    sky = plain._renderer.geom_ids() < 0
    plain.close(), comp.close()
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(s1, s2)
    diff = np.any(f1[-1] != f2[-1], axis=-1)
    assert sky.any() and diff[sky].mean() > 0.9 and not diff[~sky].any()
    assert i2[-1]["video_frame"] == 2


def test_agent_masks_off_skips_the_segmentation_pass_and_nothing_else():
    """Evaluation's envs (agent_masks=False) play the same frames, states and rewards, with no mask rendered."""
    with_masks, without = make("cheetah-run", distractors="laom"), make("cheetah-run", distractors="laom",
                                                                         agent_masks=False)
    f1, m1, s1, i1, r1 = rollout(with_masks, seed=3, steps=6)
    f2, m2, s2, i2, r2 = rollout(without, seed=3, steps=6)
    with_masks.close(), without.close()
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(r1, r2)
    assert m1.dtype == bool and m1.any() and all(m is None for m in m2)


def test_mask_nonempty_through_an_episode():
    env = make("hopper-hop", distractors="laom", max_episode_steps=60)
    _, masks, *_ = rollout(env, seed=0, steps=59)
    _, _, _, trunc, _ = env.step(np.zeros(env.action_space.shape))
    env.close()
    assert masks.sum(axis=(1, 2)).min() > 10
    assert trunc is True


@pytest.mark.parametrize("task", TASKS)
def test_every_task_resets_and_steps(task):
    env = make(task, distractors="laom")
    obs, info = env.reset(seed=1)
    for _ in range(2):
        obs, r, term, trunc, info = env.step(env.action_space.sample())
    assert obs.shape == (64, 64, 3) and info["mask"].any() and np.isfinite(r)
    assert info["state"].shape == (env.state_dim,)
    env.close()


def test_actions_are_clipped_and_episode_length():
    e1 = make("cheetah-run", distractors="none", img_size=32, action_repeat=2)
    e2 = make("cheetah-run", distractors="none", img_size=32, action_repeat=2)
    assert e1.max_episode_steps == 500
    e1.reset(seed=4), e2.reset(seed=4)
    for _ in range(3):
        o1, r1, _, _, i1 = e1.step(np.full(6, 1.0))
        o2, r2, _, _, i2 = e2.step(np.full(6, 7.0))
    assert o1.shape == (32, 32, 3) and o1.tobytes() == o2.tobytes() and r1 == r2
    np.testing.assert_array_equal(i1["state"], i2["state"])
    e1.close(), e2.close()


def test_action_repeat_reward_is_sum_of_single_steps():
    one = make("walker-walk", distractors="none", img_size=16)
    two = make("walker-walk", distractors="none", img_size=16, action_repeat=2)
    one.reset(seed=9), two.reset(seed=9)
    a = np.full(6, 0.3)
    for _ in range(15):
        r_one = one.step(a)[1] + one.step(a)[1]
        _, r_two, _, _, info = two.step(a)
        assert r_two == pytest.approx(r_one, abs=1e-9)
    np.testing.assert_array_equal(one.step(a)[4]["state"].shape, info["state"].shape)
    assert r_two > 0  # walker-walk's stand reward is not zero
    one.close(), two.close()


def test_a_task_that_ends_says_so_instead_of_starting_anew():
    from masklam.experts.state_env import StateEnv

    env = make("lqr-lqr_2_1", distractors="none", img_size=16, action_repeat=2)
    env.reset(seed=0)
    with env._dm.physics.reset_context():  # lqr ends when the state's norm falls below 1e-6
        env._dm.physics.data.qpos[:] = 0
        env._dm.physics.data.qvel[:] = 0
    _, _, terminated, truncated, info = env.step(np.zeros(env.action_space.shape))
    assert terminated and not truncated and np.allclose(info["state"], 0)  # not a fresh start state
    env.close()
    state_env = StateEnv("lqr-lqr_2_1", action_repeat=2)  # the experts' env: a terminal state is terminated too
    state_env.reset(seed=0)
    with state_env._env.physics.reset_context():
        state_env._env.physics.data.qpos[:] = 0
        state_env._env.physics.data.qvel[:] = 0
    assert state_env.step(np.zeros(state_env.action_space.shape))[2:4] == (True, False)
    state_env = StateEnv("cheetah-run", action_repeat=4)  # dm_control's own time limit there: truncated
    state_env.reset(seed=0)
    ends = [state_env.step(np.zeros(6))[2:4] for _ in range(250)]
    assert ends[-1] == (False, True) and not any(any(e) for e in ends[:-1])


def test_video_splits_disjoint_and_deterministic():
    train, evalu = ProceduralVideos("train", 32), ProceduralVideos("eval", 32)
    assert len(train.ids) == NUM_TRAIN_VIDEOS and len(evalu.ids) == NUM_EVAL_VIDEOS
    assert not set(train.ids) & set(evalu.ids)
    seeds_t = {tuple(video_seed("train", i).generate_state(4)) for i in range(NUM_TRAIN_VIDEOS)}
    seeds_e = {tuple(video_seed("eval", i).generate_state(4)) for i in range(NUM_EVAL_VIDEOS)}
    assert len(seeds_t) == NUM_TRAIN_VIDEOS and not seeds_t & seeds_e
    again = ProceduralVideos("train", 32)
    np.testing.assert_array_equal(train.frame(3, 5), again.frame(3, 5))
    f0, f1 = train.frame(3, 0), train.frame(3, 1)
    assert f0.shape == (32, 32, 3) and f0.dtype == np.uint8 and not np.array_equal(f0, f1)  # it moves
    assert not np.array_equal(train.frame(0, 0), train.frame(1, 0))
    assert f0.std() > 10  # textured, not flat
    with pytest.raises(MasklamError, match="not in this split"):
        train.frame(NUM_TRAIN_VIDEOS, 0)


def test_background_bounces_at_video_end():
    env = make("cheetah-run", distractors="masklam", img_size=16)
    _, info = env.reset(seed=0)
    n = env._videos.num_frames(info["distractor"]["video_id"])
    frames = [env.step(np.zeros(6))[4]["distractor"]["video_frame"] for _ in range(n + 3)]
    env.close()
    assert frames[n - 2] == n - 1 and frames[n - 1] == n - 2 and min(frames) >= 0


def test_davis_folder(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for name in ("bear", "blackswan"):  # a training and a validation video of DAVIS-2017
        d = tmp_path / "JPEGImages" / "480p" / name
        d.mkdir(parents=True)
        for t in range(3):
            pil.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(d / f"{t:05d}.jpg")
    train, val = DavisVideos(tmp_path, "train", 16), DavisVideos(tmp_path, "eval", 16)
    assert [train.name(i) for i in train.ids] == ["bear"] and [val.name(i) for i in val.ids] == ["blackswan"]
    assert train.frame(train.ids[0], 2).shape == (16, 16, 3) and train.num_frames(train.ids[0]) == 3
    env = make("cheetah-run", distractors="masklam", background_path=str(tmp_path), video_split="eval")
    _, info = env.reset(seed=0)
    frames = [env.step(np.zeros(6))[4]["distractor"]["video_frame"] for _ in range(4)]
    env.close()
    assert info["distractor"]["video_id"] == val.ids[0] and frames == [1, 2, 1, 0]


def test_clear_errors(tmp_path):
    with pytest.raises(MasklamError, match="unknown task"):
        make("cheetah-fly")
    with pytest.raises(MasklamError, match="unknown distractor preset"):
        make("cheetah-run", distractors="heavy")
    with pytest.raises(MasklamError, match="camera_scale"):
        make("cheetah-run", camera_scale=-1.0)
    with pytest.raises(MasklamError, match="unknown distractor parameter"):
        make("cheetah-run", camera_shake=0.1)
    with pytest.raises(MasklamError, match="img_size"):
        make("cheetah-run", img_size=0)
    with pytest.raises(MasklamError, match="video_split"):
        make("cheetah-run", video_split="test")
    with pytest.raises(MasklamError, match="not a folder"):
        make("cheetah-run", background_path=str(tmp_path / "nowhere"))
    (tmp_path / "JPEGImages" / "480p").mkdir(parents=True)
    with pytest.raises(MasklamError, match="no <video>"):
        make("cheetah-run", background_path=str(tmp_path))
    with pytest.raises(MasklamError, match="ground_plane_alpha"):
        DistractorConfig(ground_plane_alpha=2.0)
    env = make("cheetah-run", distractors="none", img_size=16)
    with pytest.raises(MasklamError, match="before reset"):
        env.step(np.zeros(6))
    env.close()


def test_presets_and_gymnasium_registration():
    assert set(PRESETS) == {"none", "laom", "masklam", "composite"}
    assert PRESETS["composite"].composite and not PRESETS["masklam"].composite
    assert PRESETS["laom"].camera_scale == 0.1 and PRESETS["laom"].color_scale == 0.1
    assert PRESETS["masklam"].camera_scale == 0 and PRESETS["masklam"].background
    env = gymnasium.make("masklam/cheetah-run-v0", distractors="masklam", img_size=32)
    obs, info = env.reset(seed=0)
    assert obs.shape == (32, 32, 3) and info["distractor"]["video_id"] >= 0
    assert env.unwrapped.task == "cheetah-run" and env.unwrapped.action_repeat == 1
    env.close()
    for task in TASKS:
        assert f"masklam/{task}-v0" in gymnasium.registry


def test_demo_writes_png(tmp_path, capsys):
    from masklam.envs import demo

    out = tmp_path / "d.png"
    argv = ["--out", str(out), "--tasks", "cheetah-run", "--presets", "none", "laom", "--steps", "0", "2",
            "--img-size", "16"]
    assert demo.main(argv) == 0
    import matplotlib.image

    img = matplotlib.image.imread(out)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 100
    import json

    record = json.loads((tmp_path / "d.json").read_text())  # how it was made, beside it
    assert record["presets"] == ["none", "laom"] and record["steps"] == [0, 2] and record["seed"] == 0
    assert record["img_size"] == 16 and record["out"] == str(out)
    assert demo.DemoConfig(out=out).out == out  # its own record beside it: replaced by the next run
    (tmp_path / "config.json").write_text('{"lr": 1}')
    with pytest.raises(MasklamError, match="config.json exists and is no demo's record"):
        demo.DemoConfig(out=tmp_path / "config.png")
    with pytest.raises(MasklamError, match=".png"):
        demo.DemoConfig(out=tmp_path / "d.jpg")
    assert demo.DemoConfig(out=out, steps=(30, 0, 0)).steps == (0, 30)  # each shown once: the titles follow them
    from masklam.cli import main as cli_main

    capsys.readouterr()
    assert cli_main(["demo", "--out", str(tmp_path / "d.jpg")]) == 2  # the same error, one line, exit 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("masklam: error:") and ".png" in err and "\n" not in err
    overlaid = demo.overlay(np.zeros((4, 4, 3), np.uint8), np.eye(4, dtype=bool))
    assert overlaid[0, 0, 0] > 100 and overlaid[0, 1].sum() == 0
