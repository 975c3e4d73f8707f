"""bf16 autocast where the hardware runs it natively, fp32 elsewhere; losses stay fp32 and close to fp32's."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from masklam.models import LAMConfig, build_lam
from masklam.train.precision import autocast, bf16_active, cpu_has_native_bf16


def _linear() -> torch.Tensor:
    return F.linear(torch.ones(2, 3), torch.ones(4, 3))


def test_autocast_is_off_when_not_requested() -> None:
    with autocast("cpu", requested=False):
        assert _linear().dtype == torch.float32
    assert not bf16_active("cpu", requested=False)


def _cpu_flags() -> set[str]:
    """The CPU feature flags the Linux kernel reports (empty where /proc/cpuinfo is absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


@pytest.mark.skipif(not _cpu_flags(), reason="no /proc/cpuinfo to read the CPU's features from")
def test_autocast_follows_the_cpus_native_bf16() -> None:
    native = bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})  # the hardware fact, not torch's own query
    with autocast("cpu"):
        y = _linear()
    assert (y.dtype == torch.bfloat16) == native
    assert cpu_has_native_bf16() == native
    assert bf16_active("cpu") == native


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16")
@pytest.mark.parametrize("method", ["lapo", "masklam", "laom"])
def test_bf16_lam_loss_is_fp32_and_close_to_the_fp32_loss(method: str) -> None:
    torch.manual_seed(0)
    lam = build_lam(LAMConfig(method=method, action_dim=2, state_dim=3, img_hw=32, frame_stack=3, latent_dim=8,
                              head_dim=32, mask_target=method == "masklam"))
    rng = np.random.default_rng(0)
    frames = lambda: rng.integers(0, 256, (8, 3, 32, 32, 3), dtype=np.uint8)  # noqa: E731
    batch = {"obs_t": frames(), "obs_t1": frames(), "obs_tk": frames(), "mask_t1": rng.random((8, 32, 32)) < 0.2}
    ref, _, _, _ = lam.lam_loss(batch, None)
    with autocast("cpu"):
        low, _, _, _ = lam.lam_loss(batch, None)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(ref.item(), rel=0.03)
    assert low.item() != ref.item()  # bf16 did run (else the test would compare fp32 with itself)
