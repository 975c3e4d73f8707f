"""Data-parallel training under torchrun: who am I (rank), which device, and the few collectives we need.

`DistContext.from_env()` reads torchrun's variables (RANK, LOCAL_RANK, WORLD_SIZE). With WORLD_SIZE
unset or 1 nothing is initialised and every collective is the identity, so a single-process run is
untouched. Otherwise one process group serves both kinds of tensors: NCCL for CUDA tensors (the
DDP gradient all-reduce) and Gloo for CPU tensors (the per-step stop flag and the barrier, which
then never wait on the GPU stream). On a CPU-only run everything goes through Gloo.
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from masklam.devices import resolve_device
from masklam.errors import MasklamError

# Long enough for rank 0's final probe over a paper-sized dataset while the others wait at the barrier.
TIMEOUT = datetime.timedelta(hours=2)


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise MasklamError(f"environment variable {name}={value!r} is not an integer") from None


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel run (world_size 1: a plain single-process run)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise MasklamError(f"WORLD_SIZE must be >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise MasklamError(f"RANK must be in [0, {self.world_size}), got {self.rank}")
        if self.local_rank < 0:
            raise MasklamError(f"LOCAL_RANK must be >= 0, got {self.local_rank}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "DistContext":
        """Read RANK, LOCAL_RANK and WORLD_SIZE (as set by torchrun); all unset -> single process."""
        env = os.environ if env is None else env
        return cls(rank=_env_int(env, "RANK", 0), local_rank=_env_int(env, "LOCAL_RANK", 0),
                   world_size=_env_int(env, "WORLD_SIZE", 1))

    @property
    def enabled(self) -> bool:
        """True when there is more than one process (a process group is needed)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that logs and writes files."""
        return self.rank == 0

    def device(self, name: str) -> torch.device:
        """The device of this rank for `--device name` (see `masklam.devices.resolve_device`): 'auto'/'cuda'
        -> cuda:LOCAL_RANK (or cpu for 'auto' without a GPU); 'cpu' -> cpu; an explicit 'cuda:i' is refused
        when there are several ranks."""
        if not self.enabled:
            return resolve_device(name)
        if str(name).startswith("cuda:"):
            raise MasklamError(f"--device {name} names one device, but {self.world_size} processes share it; "
                               "use --device cuda (rank r takes cuda:LOCAL_RANK) or --device cpu")
        device = resolve_device(name)
        if device.type == "cpu":
            return device
        if self.local_rank >= torch.cuda.device_count():
            raise MasklamError(f"LOCAL_RANK {self.local_rank} but only {torch.cuda.device_count()} GPU(s) "
                               "on this node; lower --nproc_per_node")
        return torch.device("cuda", self.local_rank)

    def setup(self, device: torch.device) -> None:
        """Join the process group (no-op for a single process); CUDA ranks also pin their GPU."""
        if not self.enabled or dist.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
            backend = "cpu:gloo,cuda:nccl"
        else:
            backend = "gloo"
        dist.init_process_group(backend=backend, rank=self.rank, world_size=self.world_size, timeout=TIMEOUT)

    def teardown(self) -> None:
        """Leave the process group (no-op when none was joined)."""
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def any(self, flag: bool) -> bool:
        """True on every rank if `flag` is True on some rank (a CPU all-reduce; no GPU sync)."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average scalar metrics over ranks (same keys on every rank); a NaN anywhere is a NaN everywhere."""
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)  # (K,) on the CPU
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return dict(zip(keys, (t / self.world_size).tolist()))

    def barrier(self) -> None:
        """Wait until every rank gets here (a CPU all-reduce, so it works the same with NCCL and Gloo)."""
        if self.enabled:
            dist.all_reduce(torch.zeros(1))


def wrap_ddp(model: torch.nn.Module, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    """The model wrapped in DistributedDataParallel (the model itself for a single process).

    Every trainable parameter of every method gets a gradient each step (the online probes and the
    laom-sup head are part of the loss; LAOM's EMA target does not require grad), so
    find_unused_parameters stays off; tests/test_train_distributed.py checks this per method.
    The models' only buffers are constants: synced once at construction, not before every forward.
    """
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False,
                                   find_unused_parameters=False)
