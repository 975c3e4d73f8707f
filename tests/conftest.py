"""Shared builders of the test suite, as fixtures (session-scoped: each returns a pure function).

- `write_synthetic_dataset(path, ...)`: a square "agent" whose velocity is the 2-D action, on moving stripes, with
  exact agent masks, in masklam's HDF5 layout; `render_square(pos, phase, H)` draws one of its frames
  (`render_square.side`: the square's side);
- `small_cfg(method, data, out, **kw)`: a PretrainConfig of a few updates;
- `write_toy(path, ...)`: frames of uniform brightness whose actions are an inverse-dynamics quantity and a
  quantity readable from o_t;
- `cut_sampling(at)`: a context in which the `at`-th WindowSampler batch raises KeyboardInterrupt (a run stopped
  mid-way, as Ctrl-C stops it).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import pytest

from masklam.data import Trajectory, write_trajectory
from masklam.train import PretrainConfig

SIDE = 8


def _render(pos: np.ndarray, phase: float, H: int) -> tuple[np.ndarray, np.ndarray]:
    """One (H, H, 3) uint8 frame and its (H, H) agent mask: stripes moving with `phase`, a white square."""
    yy, xx = np.mgrid[0:H, 0:H]
    stripes = (np.sin((xx + yy) / 4.0 + phase) > 0)
    frame = np.zeros((H, H, 3), np.uint8)
    frame[..., 0] = 60 + 120 * stripes
    frame[..., 2] = 180 - 120 * stripes
    y, x = int(round(pos[0])), int(round(pos[1]))
    mask = np.zeros((H, H), bool)
    mask[y:y + SIDE, x:x + SIDE] = True
    frame[mask] = (255, 255, 255)
    return frame, mask


def _write_synthetic_dataset(path: str | Path, n_traj: int = 8, length: int = 24, seed: int = 0, H: int = 32) -> Path:
    """A dataset in masklam's HDF5 layout: actions move the agent by 3 px per unit per frame."""
    rng = np.random.default_rng(seed)
    path = Path(path)
    with h5py.File(path, "w") as f:
        f.attrs.update(domain_name="synthetic", task_name="square", img_hw=H, split="train",
                       distractors="stripes", seed=seed, version=1, action_repeat=1)
        for i in range(n_traj):
            pos = rng.uniform(H / 4, 3 * H / 4 - SIDE, size=2)
            phase = rng.uniform(0, 6.28)
            obs, masks, states, actions = [], [], [], []
            for _ in range(length):
                frame, mask = _render(pos, phase, H)
                action = np.clip(rng.uniform(-1, 1, size=2) - 0.05 * (pos - (H - SIDE) / 2), -1, 1)
                obs.append(frame), masks.append(mask), actions.append(action)
                states.append(np.concatenate([pos / H, [np.sin(phase), np.cos(phase)]]))
                pos = np.clip(pos + 2.0 * action, 0, H - SIDE)
                phase += 0.4
            g = f.create_group(str(i))
            g["obs"] = np.stack(obs)
            g["masks"] = np.stack(masks)
            g["states"] = np.asarray(states, np.float32)
            g["actions"] = np.asarray(actions, np.float32)
            g["rewards"] = np.zeros(length, np.float32)
            g.attrs["traj_return"] = 0.0
    return path


def _small_cfg(method: str, data: Path, out: Path, **kw) -> PretrainConfig:
    base = dict(updates=4, batch_size=8, latent_dim=16, log_every=2, ckpt_every=2, tensorboard=False,
                progress=False, probe_batch_size=64)
    if method in ("lapo", "masklam"):
        base.update(recon_samples=4)
    else:
        base.update(head_dim=32, head_blocks=1)
    base.update(kw)
    if method == "laom-sup":
        base.setdefault("labels", 2)
        base.setdefault("labels_batch_size", 4)
    return PretrainConfig(method=method, data=(data,), out=out, **base)


def _write_toy(path: Path, n_traj: int = 6, length: int = 20, hw: int = 16, seed: int = 0) -> Path:
    """Frames of uniform brightness b_t (channel 0); a_t = ((b_{t+1} - b_t) / 175, 2 b_t / 255 - 1).

    Action 0 is an inverse-dynamics quantity, action 1 is readable from o_t alone.
    """
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.attrs.update({"domain_name": "toy", "task_name": "bright", "img_hw": [hw, hw], "distractors": "none",
                        "action_repeat": 1, "version": 1})
        for i in range(n_traj):
            b = rng.uniform(40, 215, size=length + 1)
            obs = np.zeros((length, hw, hw, 3), np.uint8)
            obs[..., 0] = b[:length, None, None].astype(np.uint8)
            obs[..., 1] = rng.integers(0, 30, size=(length, hw, hw))
            b_int = obs[:, 0, 0, 0].astype(np.float32)
            nxt = np.append(b_int[1:], b[length]).astype(np.float32)
            actions = np.stack([(nxt - b_int) / 175, 2 * b_int / 255 - 1], axis=1).astype(np.float32)
            traj = Trajectory(obs, rng.normal(size=(length, 3)).astype(np.float32), actions,
                              np.zeros(length, np.float32), obs[..., 0] > 100)
            write_trajectory(f, str(i), traj)
    return path


_render.side = SIDE


@pytest.fixture(scope="session")
def write_synthetic_dataset():
    return _write_synthetic_dataset


@pytest.fixture(scope="session")
def render_square():
    return _render


@pytest.fixture(scope="session")
def small_cfg():
    return _small_cfg


@pytest.fixture(scope="session")
def write_toy():
    return _write_toy


@contextlib.contextmanager
def _cut_sampling(at: int) -> Iterator[None]:
    from masklam.data import WindowSampler

    orig, calls = WindowSampler.sample, {"n": 0}

    def cut(self, batch_size, rng):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == at:
            raise KeyboardInterrupt
        return orig(self, batch_size, rng)

    WindowSampler.sample = cut
    try:
        yield
    finally:
        WindowSampler.sample = orig


@pytest.fixture(scope="session")
def cut_sampling():
    return _cut_sampling
