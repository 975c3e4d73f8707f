"""The closed-form ridge probe and its normalised MSE."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from masklam.errors import MasklamError
from masklam.metrics import normalised_mse
from masklam.train.probe import RidgeProbe, probe_lam
from masklam.train.schedule import lr_factor


def test_probe_recovers_a_known_linear_map_from_synthetic_latents():
    g = torch.Generator().manual_seed(0)
    w_true, b_true = torch.randn(16, 3, generator=g), torch.randn(3, generator=g)
    x = torch.randn(2000, 16, generator=g) * 3 + 1
    y = x @ w_true + b_true
    probe = RidgeProbe(16, 3)
    for chunk in range(0, 2000, 300):  # streamed in batches
        probe.add(x[chunk:chunk + 300], y[chunk:chunk + 300])
    probe.fit(ridge=1e-8)
    assert torch.allclose(probe.weight.float(), w_true, atol=1e-4)
    assert torch.allclose(probe.bias.float(), b_true, atol=1e-4)
    x_new = torch.randn(500, 16, generator=g)
    assert normalised_mse(probe.predict(x_new), x_new @ w_true + b_true) < 1e-8


def test_train_nmse_from_statistics_matches_direct_computation():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(400, 8)))
    y = x[:, :2] * 0.5 + torch.from_numpy(rng.normal(size=(400, 2)))  # noisy: nmse well inside (0, 1)
    probe = RidgeProbe(8, 2)
    probe.add(x, y)
    probe.fit(1e-3)
    direct = normalised_mse(probe.predict(x), y)
    assert 0.3 < direct < 0.95
    assert probe.train_nmse() == pytest.approx(direct, rel=1e-6)


def test_normalised_mse_is_one_for_the_mean_and_zero_for_truth():
    y = torch.randn(100, 4)
    assert normalised_mse(y.mean(0).expand_as(y), y) == pytest.approx(1.0)
    assert normalised_mse(y, y) == 0.0
    assert normalised_mse(2 * y, y) > 1.0


def test_uninformative_latents_give_nmse_near_one_on_heldout():
    g = torch.Generator().manual_seed(2)
    offset = torch.tensor([3.0, -1.0])  # targets away from 0: a probe without its bias (or predicting 0) fails
    probe = RidgeProbe(4, 2)
    probe.add(torch.randn(3000, 4, generator=g), offset + torch.randn(3000, 2, generator=g))
    probe.fit()
    pred = probe.predict(torch.randn(3000, 4, generator=g)).float()
    assert normalised_mse(pred, offset + torch.randn(3000, 2, generator=g)) == pytest.approx(1.0, abs=0.02)
    assert torch.allclose(pred.mean(0), offset, atol=0.1) and (pred.std(0) < 0.1).all()  # the mean, nearly constant


def test_probe_needs_data():
    with pytest.raises(MasklamError):
        RidgeProbe(3, 1).fit()


def test_lr_schedule_warmup_and_decay():
    assert lr_factor(0, 100, 0.1, "linear") == pytest.approx(0.1)
    assert lr_factor(9, 100, 0.1, "linear") == pytest.approx(1.0)
    assert lr_factor(55, 100, 0.1, "linear") == pytest.approx(0.5)
    assert lr_factor(55, 100, 0.1, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, 100, 0.0, "constant") == 1.0
    assert lr_factor(99, 100, 0.0, "linear") < 0.02


# --- probe_lam: the trajectory split and the held-out normalisation ----------------------------------------
class SyntheticLAM(torch.nn.Module):
    """A stand-in LAM: latent = the true action (`informative`) or seeded noise; records the rows it labels."""

    frame_stack, needs_masks = 1, False

    def __init__(self, informative: bool, latent_dim: int = 2) -> None:
        super().__init__()
        self.informative, self.latent_dim = informative, latent_dim
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.rows: list[np.ndarray] = []

    @property
    def device(self) -> torch.device:
        return self.w.device

    def label(self, windows: dict) -> torch.Tensor:
        self.rows.append(np.asarray(windows["index"]))
        if self.informative:
            return torch.as_tensor(windows["action_t"]).float()
        g = torch.Generator().manual_seed(int(windows["index"][0]))
        return torch.randn(len(windows["index"]), self.latent_dim, generator=g)


@pytest.fixture(scope="module")
def probe_data(write_synthetic_dataset, tmp_path_factory):
    from masklam.data import load_dataset

    return load_dataset(write_synthetic_dataset(tmp_path_factory.mktemp("probe") / "d.h5", n_traj=6, length=40))


def test_probe_lam_scores_a_latent_equal_to_the_action_near_zero(probe_data):
    metrics = probe_lam(SyntheticLAM(True), probe_data, np.arange(4), np.array([4, 5]), batch_size=16)
    assert metrics["probe_nmse"] < 1e-6 and metrics["probe_nmse_train"] < 1e-6


def test_probe_lam_fits_on_training_trajectories_and_scores_on_held_out_ones(probe_data):
    train, held = np.array([0, 2, 3, 5]), np.array([1, 4])
    lam = SyntheticLAM(True)
    metrics = probe_lam(lam, probe_data, train, held, batch_size=16)
    rows = np.concatenate(lam.rows)  # the training pass first, then the held-out one
    n_train, n_held = metrics["probe_n_train"], metrics["probe_n_heldout"]
    assert len(rows) == n_train + n_held
    traj = np.searchsorted(probe_data.traj_starts, rows, side="right") - 1
    assert set(traj[:n_train]) == set(train) and set(traj[n_train:]) == set(held)
    assert n_held == sum(int(probe_data.traj_lengths[i]) - 1 for i in held)  # every k = 1 window, once


def test_probe_options_out_of_range_are_one_line_naming_them():
    from pathlib import Path

    from masklam.errors import MasklamError
    from masklam.train.probe import ProbeConfig

    for kw, said in ((dict(ridge=float("nan")), "ridge must be >= 0, got nan"),
                     (dict(max_train_trajs=-1), "max_train_trajs must be >= 1, got -1")):
        with pytest.raises(MasklamError, match=said):
            ProbeConfig(ckpt=Path("run"), **kw)
