"""Training logs: one console line per interval, TensorBoard by default, wandb when asked.

Metrics are accumulated on the device and read back once per interval (one host sync), never per step.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from masklam.errors import MasklamError


class MetricAverager:
    """Running sums of scalar tensors on the device; `means()` syncs once and resets."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, info: dict[str, torch.Tensor]) -> None:
        for key, value in info.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        self.count += 1

    def means(self) -> dict[str, float]:
        """Mean of each metric since the last call (one device -> host copy)."""
        if not self.count:
            return {}
        keys = list(self.sums)
        values = (torch.stack([self.sums[k] for k in keys]) / self.count).tolist()
        self.sums, self.count = {}, 0
        return dict(zip(keys, values))


def format_eta(seconds: float) -> str:
    """Seconds -> 'h:mm:ss'."""
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class RunLogger:
    """Console line + TensorBoard (+ wandb) for one run."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, config: dict[str, Any],
                 tensorboard: bool = True, wandb: bool = False, wandb_project: str = "masklam") -> None:
        self.total_steps = total_steps
        self.tb = None
        self.wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if start_step else None)
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError:
                raise MasklamError("--wandb needs the wandb package: pip install 'masklam[wandb]'") from None
            self.wandb = wandb_module.init(project=wandb_project, dir=str(run_dir), config=config,
                                           name=run_dir.name, resume="allow")
        self.last_time = time.perf_counter()
        self.last_step = start_step

    def log(self, step: int, metrics: dict[str, float], batch_size: int) -> dict[str, float]:
        """Write `metrics` at `step` (steps done); adds samples/s. Returns the metrics written."""
        now = time.perf_counter()
        rate = (step - self.last_step) * batch_size / max(now - self.last_time, 1e-9)
        eta = (self.total_steps - step) * batch_size / max(rate, 1e-9)
        self.last_time, self.last_step = now, step
        metrics = {**metrics, "train/samples_per_s": rate}
        parts = [f"step {step}/{self.total_steps}"]
        parts += [f"{k.split('/', 1)[-1]} {v:.4g}" for k, v in metrics.items() if k != "train/samples_per_s"]
        parts += [f"{rate:.0f} samples/s", f"eta {format_eta(eta)}"]
        tqdm.write("  ".join(parts))
        if self.tb is not None:
            for key, value in metrics.items():
                self.tb.add_scalar(key, value, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        return metrics

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
