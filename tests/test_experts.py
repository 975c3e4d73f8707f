"""Experts: the state environment is seeded and matches the distracted env's state; actors round-trip."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from masklam.errors import MasklamError
from masklam.experts import ExpertPolicy, available, load
from masklam.experts.policy import save_expert
from masklam.experts.state_env import StateEnv
from masklam.experts.train import evaluate_policy


def _random_actor(state_dim: int, action_dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"hidden.0": (16, state_dim), "hidden.1": (16, 16), "mu": (action_dim, 16)}
    w = {}
    for name, shape in shapes.items():
        w[f"{name}.weight"] = torch.randn(shape, generator=g)
        w[f"{name}.bias"] = torch.randn(shape[0], generator=g)
    return w


def test_state_env_is_seeded_and_sums_reward_over_repeat():
    a, b = StateEnv("cheetah-run", action_repeat=2), StateEnv("cheetah-run", action_repeat=2)
    sa, _ = a.reset(seed=3)
    sb, _ = b.reset(seed=3)
    assert np.array_equal(sa, sb)
    assert sa.shape == (17,) and sa.dtype == np.float32
    sc, _ = b.reset(seed=4)
    assert not np.array_equal(sa, sc)
    act = np.full(6, 0.5, np.float32)
    _, ra, _, _, _ = a.step(act)
    # two physics steps with the same action from the same start: the summed reward of one env equals
    # the sum of two single-repeat steps of another
    c = StateEnv("cheetah-run", action_repeat=1)
    c.reset(seed=3)
    r1 = c.step(act)[1] + c.step(act)[1]
    assert ra == pytest.approx(r1, abs=1e-9)


def test_episode_length_follows_action_repeat():
    env = StateEnv("cheetah-run", action_repeat=4)
    env.reset(seed=0)
    steps, done = 0, False
    while not done:
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        steps, done = steps + 1, term or trunc
    assert steps == 250


def test_actor_round_trip_and_batched_call(tmp_path):
    w = _random_actor(17, 6)
    save_expert(tmp_path / "x", w, {"task": "cheetah-run", "action_repeat": 4})
    pol = load("cheetah-run", tmp_path / "x.safetensors")
    s = np.random.default_rng(0).normal(size=(5, 17)).astype(np.float32)
    batch = pol(s)
    assert batch.shape == (5, 6) and np.all(np.abs(batch) <= 1)
    assert np.allclose(pol(s[2]), batch[2], atol=1e-6)
    ref = torch.tanh(torch.relu(torch.relu(torch.from_numpy(s) @ w["hidden.0.weight"].T + w["hidden.0.bias"])
                                @ w["hidden.1.weight"].T + w["hidden.1.bias"]) @ w["mu.weight"].T + w["mu.bias"])
    assert np.allclose(batch, ref.numpy(), atol=1e-6)
    assert pol.action_repeat == 4
    with pytest.raises(MasklamError, match="states of size 17"):
        pol(np.zeros(3, np.float32))


def test_errors_are_one_line(tmp_path):
    with pytest.raises(MasklamError, match="unknown task"):
        StateEnv("cheetah-fly")
    with pytest.raises(MasklamError, match="no expert"):
        load("cartpole-swingup-not-a-task")
    save_expert(tmp_path / "x", _random_actor(17, 6), {"task": "cheetah-run", "action_repeat": 4})
    (tmp_path / "x.json").unlink()  # its metadata lost
    with pytest.raises(MasklamError, match="cannot read the expert .*x "):
        load("cheetah-run", tmp_path / "x.safetensors")
    (tmp_path / "x.json").write_text('{"task": "cheetah-run"}')  # no action_repeat
    with pytest.raises(MasklamError, match="action_repeat"):
        load("cheetah-run", tmp_path / "x.safetensors")
    (tmp_path / "x.safetensors").write_bytes(b"\x01")  # cut short
    with pytest.raises(MasklamError, match="cannot read the expert"):
        load("cheetah-run", tmp_path / "x.safetensors")
    with pytest.raises(MasklamError, match=r"an expert is a .safetensors file .*, not .*x.h5$"):
        load("cheetah-run", tmp_path / "x.h5")  # named as given, not as x.safetensors


# The floor: below these mean returns an expert is not good enough (LAOM's: 838, 740, 307).
FLOOR = {"cheetah-run": 500.0, "walker-run": 450.0, "hopper-hop": 100.0}


@pytest.mark.parametrize("task", list(FLOOR))
def test_shipped_experts_reach_the_floor(task):
    if task not in available():
        pytest.skip(f"no shipped expert for {task} yet")
    pol = load(task)
    assert isinstance(pol, ExpertPolicy)
    ret = evaluate_policy(pol, task, pol.action_repeat, episodes=1)
    zero = evaluate_policy(lambda s: np.zeros(pol.action_dim, np.float32), task, pol.action_repeat, episodes=1)
    assert ret[0] >= FLOOR[task] and ret[0] > zero[0] + 50, (ret, zero)


def test_expert_evaluation_uses_the_eval_stream_and_the_rollout_loop():
    from masklam.seeding import stream_seed

    zero = lambda s: np.zeros(6, np.float32)  # noqa: E731
    a = evaluate_policy(zero, "cheetah-run", 8, episodes=2, seed=3)
    env = StateEnv("cheetah-run", action_repeat=8)
    by_hand = []
    for i in range(2):  # an independent loop over the same seeds
        env.reset(seed=stream_seed("eval", 3, i))
        ret, done = 0.0, False
        while not done:
            _, r, term, trunc, _ = env.step(np.zeros(6, np.float32))
            ret, done = ret + r, term or trunc
        by_hand.append(ret)
    np.testing.assert_allclose(a, by_hand)


def test_resuming_expert_training_with_another_action_repeat_is_refused(tmp_path):
    import dataclasses
    import json

    from masklam.experts import train as expert_train

    cfg = expert_train.ExpertTrainConfig(task="cheetah-run", out=tmp_path, action_repeat=4)
    run = expert_train._Run(cfg)
    run.dir.mkdir(parents=True)
    run.ckpt_dir.mkdir(parents=True)
    (run.ckpt_dir / "sac.zip").write_bytes(b"a checkpoint")  # an interrupted run
    (run.dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), default=str))
    expert_train._check_resume(expert_train._Run(dataclasses.replace(cfg, steps=10 ** 6)))  # longer: resumable
    with pytest.raises(MasklamError, match="action_repeat=4, not 2"):
        expert_train._check_resume(expert_train._Run(dataclasses.replace(cfg, action_repeat=2)))


def test_expert_cli_has_a_config_per_subcommand(tmp_path):
    from masklam.experts import train as tr

    with pytest.raises(MasklamError, match="usage"):
        tr.main([])
    with pytest.raises(MasklamError, match="steps"):  # eval has no --steps, train no --episodes
        tr.main(["eval", "--steps", "3"])
    with pytest.raises(MasklamError, match="episodes"):
        tr.main(["train", "--episodes", "3"])
    with pytest.raises(MasklamError, match="must be >= 1"):
        tr.ExpertTrainConfig(steps=0)
    with pytest.raises(MasklamError, match=r"--steps \(10\) must be at least --eval-every \(10000\)"):
        tr.ExpertTrainConfig(steps=10)  # trained, then no evaluated actor to keep: refused before training
    assert tr.ship_dir(tr.ExpertTrainConfig()) is None
    assert tr.ship_dir(tr.ExpertTrainConfig(ship=True, ship_to=tmp_path)) == tmp_path


def test_an_interrupted_expert_training_resumes_exactly(tmp_path, monkeypatch):
    """Trained 180 steps (reacher's second episode: its target, a model field, moved at the episode's start), a
    checkpoint cut between its two renames, then resumed to 240 (SAC.load re-seeds every stream and resets the
    episode): the same replay buffer and weights as 240 steps in one go, updates included (from step 30)."""
    import pickle

    from stable_baselines3 import SAC

    from masklam.experts import train as tr

    monkeypatch.setattr(tr, "LEARNING_STARTS", 30)
    monkeypatch.setattr(tr, "SELECTION_EPISODES", 1)
    monkeypatch.setattr(tr, "FINAL_EPISODES", 1)
    common = dict(task="reacher-easy", action_repeat=8, eval_every=60, batch_size=16)
    tr.train(tr.ExpertTrainConfig(steps=240, out=tmp_path / "once", **common))
    tr.train(tr.ExpertTrainConfig(steps=180, out=tmp_path / "twice", **common))
    run = tr._Run(tr.ExpertTrainConfig(steps=180, out=tmp_path / "twice", **common))
    model = SAC.load(run.found() / "sac.zip", env=tr.StateEnv("reacher-easy", 8), device="cpu")
    model.load_replay_buffer(run.found() / "replay.pkl")
    replace = os.replace

    def cut(src, dst):  # killed after checkpoint/ became checkpoint.old/, before checkpoint.new/ took its place
        if Path(src).name == "checkpoint.new":
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(tr.os, "replace", cut)
    with pytest.raises(KeyboardInterrupt):
        run.save(model)
    monkeypatch.undo()
    assert run.found().name == "checkpoint.old"
    monkeypatch.setattr(tr, "LEARNING_STARTS", 30)
    monkeypatch.setattr(tr, "SELECTION_EPISODES", 1)
    monkeypatch.setattr(tr, "FINAL_EPISODES", 1)
    tr.train(tr.ExpertTrainConfig(steps=240, out=tmp_path / "twice", **common))
    runs = [tmp_path / d / "reacher-easy" / "checkpoint" for d in ("once", "twice")]
    buffers = [pickle.loads((r / "replay.pkl").read_bytes()) for r in runs]
    assert buffers[0].full and buffers[1].full and buffers[1].buffer_size == 240  # grown from the first run's 180
    for field in ("observations", "actions", "rewards", "next_observations"):
        np.testing.assert_array_equal(getattr(buffers[0], field), getattr(buffers[1], field))
    weights = [SAC.load(r / "sac.zip", device="cpu").policy.state_dict() for r in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_expert_training_leaves_nothing_in_the_temp_folder(tmp_path, monkeypatch):
    """SB3 makes a logger folder under the temp folder at every learn() unless given a logger: none is made."""
    import tempfile

    from masklam.experts import train as tr

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(tr, "LEARNING_STARTS", 10)
    monkeypatch.setattr(tr, "SELECTION_EPISODES", 1)
    monkeypatch.setattr(tr, "FINAL_EPISODES", 1)
    tr.train(tr.ExpertTrainConfig(task="reacher-easy", action_repeat=8, steps=40, eval_every=20, batch_size=8,
                                  out=tmp_path / "run"))
    assert (tmp_path / "run").is_dir() and not list(scratch.iterdir())


def test_a_damaged_expert_checkpoint_is_one_line(tmp_path):
    from masklam.experts import train as tr

    (tmp_path / "cheetah-run" / "checkpoint").mkdir(parents=True)
    (tmp_path / "cheetah-run" / "checkpoint" / "sac.zip").write_text("cut short")
    with pytest.raises(MasklamError, match=r"cannot resume from .*checkpoint .*delete it to start over"):
        tr.train(tr.ExpertTrainConfig(steps=2000, eval_every=1000, out=tmp_path))
