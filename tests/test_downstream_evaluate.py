"""evaluate.py and envs/rollout.py: deterministic per seed, independent of the number of workers, frame stacks,
normalisation, the CLI."""
from __future__ import annotations

import numpy as np
import pytest

import json
from pathlib import Path

from masklam.downstream.evaluate import env_spec, evaluate, normalized_return
from masklam.envs.rollout import EnvSpec
from masklam.errors import MasklamError
from masklam.seeding import stream_seed

RESETS: list[int] = []


class FakeEnv:
    """A tiny seeded env: state x in R; obs encodes x in its pixels; reward = -|a - x|; fixed length."""

    def __init__(self, length: int = 7, img: int = 4, success: bool = False) -> None:
        self.length, self.img, self.success = length, img, success

    def _obs(self) -> np.ndarray:
        return np.full((self.img, self.img, 3), int(self.x * 10 + 100) % 256, dtype=np.uint8)

    def reset(self, seed: int):  # noqa: ANN201
        RESETS.append(seed)
        self.rng = np.random.default_rng(seed)
        self.x, self.t = float(self.rng.integers(0, 10)), 0
        return self._obs(), {}

    def step(self, a):  # noqa: ANN001, ANN201
        reward = -abs(float(a[0]) - self.x)
        self.x = float(self.rng.integers(0, 10))
        self.t += 1
        info = {"success": reward > -0.1 and self.t == 2} if self.success else {}  # Meta-World-like flag
        return self._obs(), reward, False, self.t >= self.length, info

    def close(self) -> None:
        pass


def make_fake(task: str, length: int = 7, success: bool = False, img: int = 4) -> FakeEnv:
    if task != "fake-task":
        raise MasklamError(f"unknown task {task!r}")
    return FakeEnv(length, img, success=success)


FACTORY = "test_downstream_evaluate:make_fake"


class ReadPixels:
    """Reads x back from the newest frame: optimal on FakeEnv; records batch sizes and the first env's stacks."""

    def __init__(self, frame_stack: int = 1) -> None:
        self.frame_stack, self.batches, self.stacks = frame_stack, [], []

    def select_action(self, obs: np.ndarray) -> np.ndarray:
        assert obs.ndim == 5 and obs.shape[1] == self.frame_stack and obs.dtype == np.uint8
        self.batches.append(obs.shape[0])
        self.stacks.append(obs[0].copy())  # (F, H, W, 3): the first env's stack
        return ((obs[:, -1, 0, 0, :1].astype(np.float32) - 100) / 10)  # (B, 1)


class Noisy(ReadPixels):
    def select_action(self, obs: np.ndarray) -> np.ndarray:
        return super().select_action(obs) + 0.5 * np.sin(obs[:, -1, 0, 0, :1].astype(np.float32))


def test_optimal_policy_gets_zero_return_and_batches() -> None:
    pol = ReadPixels()
    res = evaluate(pol, EnvSpec("fake-task", {"length": 5}, FACTORY), episodes=3, workers=0, progress=False)
    assert res.returns == [0.0, 0.0, 0.0]
    assert set(pol.batches) == {1} and len(pol.batches) == 15


def test_deterministic_and_independent_of_workers() -> None:
    spec = EnvSpec("fake-task", {"length": 6}, FACTORY)
    a = evaluate(Noisy(), spec, episodes=5, seed=3, workers=0, progress=False)
    b = evaluate(Noisy(), spec, episodes=5, seed=3, workers=0, progress=False)
    pol = Noisy()
    c = evaluate(pol, spec, episodes=5, seed=3, workers=2, progress=False)
    d = evaluate(Noisy(), spec, episodes=5, seed=4, workers=0, progress=False)
    assert a.returns == b.returns
    np.testing.assert_allclose(c.returns, a.returns, rtol=1e-6)
    assert a.returns != d.returns and min(a.returns) < 0
    assert max(pol.batches) == 2  # one forward for both workers' envs
    assert a.mean == pytest.approx(np.mean(a.returns)) and a.std == pytest.approx(np.std(a.returns))


def test_success_rate_where_the_env_reports_success() -> None:
    spec = EnvSpec("fake-task", {"length": 4, "success": True}, FACTORY)
    good = evaluate(ReadPixels(), spec, episodes=3, workers=0, progress=False)
    assert good.successes == [True, True, True] and good.success_rate == 1.0  # success at any step counts
    bad = evaluate(Noisy(), spec, episodes=4, workers=2, progress=False)
    assert bad.successes == evaluate(Noisy(), spec, episodes=4, workers=0, progress=False).successes
    assert bad.as_dict()["success_rate"] == pytest.approx(np.mean(bad.successes))
    plain = evaluate(ReadPixels(), EnvSpec("fake-task", {"length": 3}, FACTORY), episodes=2, progress=False)
    assert plain.successes is None and plain.success_rate is None and plain.as_dict()["success_rate"] is None


def test_frame_stack_repeats_first_frame_oldest_first_and_starts_anew_each_episode() -> None:
    """As training stacks them (WindowSampler: oldest to newest, the first frame repeated before an episode's
    start): step 0 sees [o0, o0, o0], step 1 [o0, o0, o1], step 2 [o0, o1, o2]; a new episode starts over."""
    RESETS.clear()
    pol = ReadPixels(frame_stack=3)
    evaluate(pol, EnvSpec("fake-task", {"length": 3}, FACTORY), episodes=2, workers=0, progress=False)
    stacks, seeds = pol.stacks, list(RESETS)
    assert len(stacks) == 6 and len(seeds) == 2
    for episode, seed in enumerate(seeds):  # the frames each episode showed, replayed from its reset seed
        env = FakeEnv(length=3)
        frames = [env.reset(seed)[0]] + [env.step(np.zeros(1))[0] for _ in range(2)]
        want = [[0, 0, 0], [0, 0, 1], [0, 1, 2]]
        for t, idx in enumerate(want):
            np.testing.assert_array_equal(stacks[3 * episode + t], np.stack([frames[i] for i in idx]))
    assert not np.array_equal(stacks[0], stacks[3])  # the two episodes start from different states


def test_normalisation() -> None:
    assert normalized_return(400.0, 800.0) == 0.5
    assert normalized_return(400.0, None) is None
    with pytest.raises(MasklamError):
        normalized_return(1.0, 0.0)
    spec = EnvSpec("fake-task", {"length": 4}, FACTORY)
    res = evaluate(Noisy(), spec, episodes=2, normalizer=-2.0, progress=False)
    assert res.normalized == pytest.approx(res.mean / -2.0)


def test_seeds_and_errors() -> None:
    RESETS.clear()
    evaluate(ReadPixels(), EnvSpec("fake-task", {"length": 2}, FACTORY), episodes=3, seed=5, progress=False)
    assert RESETS == [stream_seed("eval", 5, i) for i in range(3)]  # episode i: the eval stream's seed (5, i)
    with pytest.raises(MasklamError, match="unknown task"):
        evaluate(ReadPixels(), EnvSpec("nope", {}, FACTORY), episodes=1, workers=1, progress=False)
    spec = env_spec({"task": "cheetah-run", "distractors": "laom", "img_size": 64}, "ood", max_episode_steps=10)
    assert spec.kwargs == {"distractors": "laom", "img_size": 64, "video_split": "eval", "max_episode_steps": 10,
                           "agent_masks": False}  # a policy reads frames only: no segmentation pass
    assert "agent_masks" not in env_spec({"task": "fake-task", "factory": FACTORY}, "id").kwargs  # another factory's
    with pytest.raises(MasklamError, match="split"):
        env_spec({"task": "x"}, "test")
    from masklam.downstream.targets import env_meta_of

    on_eval_videos = env_meta_of({"domain_name": "cheetah", "task_name": "run", "split": "eval"}, {})
    kwargs = env_spec(on_eval_videos, "id").kwargs  # in-distribution: the videos its data were collected on
    assert kwargs["video_split"] == "eval" and "data_video_split" not in kwargs  # the key is no env argument
    with pytest.raises(MasklamError, match="collected on the held-out .* would play them again"):
        env_spec(on_eval_videos, "ood")


def test_cli_writes_eval_json_where_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from masklam.downstream import evaluate as ev
    from masklam.downstream.policy import ImagePolicy, PolicyConfig

    torch.manual_seed(0)
    meta = {"task": "fake-task", "factory": FACTORY, "length": 2}
    ImagePolicy(PolicyConfig(out_dim=1, action_dim=1, frame_stack=1, img_hw=8, hidden=8, env_meta=meta)
                ).save_pretrained(tmp_path / "pol")
    # make_fake takes no video_split: drop it
    monkeypatch.setattr(ev, "env_spec",
                        lambda m, split, task=None, n=None: EnvSpec("fake-task", {"length": 2, "img": 8}, FACTORY))
    out = tmp_path / "new" / "dir" / "e.json"
    assert ev.main(["--policy", str(tmp_path / "pol"), "--episodes", "2", "--workers", "0", "--out", str(out),
                    "--device", "auto"]) == 0
    res = json.loads(out.read_text())
    assert set(res) == {"id", "ood", "config"} and len(res["id"]["returns"]) == 2
    assert res["config"]["episodes"] == 2 and res["config"]["policy"] == str(tmp_path / "pol")  # how it ran
    monkeypatch.chdir(tmp_path)
    assert ev.main(["--policy", str(tmp_path / "pol"), "--episodes", "1", "--workers", "0", "--splits", "id"]) == 0
    assert (tmp_path / "eval.json").is_file() and not (tmp_path / "pol" / "eval.json").exists()
