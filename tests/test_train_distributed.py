"""Data-parallel `masklam pretrain` under torchrun (2 CPU processes, gloo) and DistContext units.

The strongest cheap check: a 2-process run with global batch B must end with exactly the weights of a
single process that, each step, averages the gradients of the two ranks' batches (rng (seed, s, r)).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import masklam
from masklam.errors import MasklamError
from masklam.train import PretrainConfig
from masklam.train.distributed import DistContext, wrap_ddp

from masklam.train.pretrain import StepBatches, _build_model, per_rank_sizes, to_device
from masklam.train.schedule import lr_factor

torch.set_num_threads(1)

# fp32 (--no-bf16): the runs are compared to 1e-6, which bf16 autocast (native on some CPUs) would exceed
SMALL = ["--no-bf16", "--batch-size", "8", "--latent-dim", "16", "--log-every", "2", "--ckpt-every", "2",
         "--threads", "1", "--no-progress", "--probe-batch-size", "64"]

# Run by torchrun in the resume test: pretrain(cfg, until), then every rank saves the weights it holds.
LAUNCHER = '''
import os, sys
import torch, tyro
import masklam.train.pretrain as P
from masklam.errors import MasklamError
from masklam.models.lam import PixelLAM
from masklam.train.config import PretrainConfig

held, rank = {}, int(os.environ["RANK"])
real_wrap = P.wrap_ddp
def wrap(model, ctx, device):
    held["model"] = model
    return real_wrap(model, ctx, device)
P.wrap_ddp = wrap
if os.environ.get("POISON_RANK") == str(rank):  # this rank's loss turns NaN from its 3rd step on
    real_loss, calls = PixelLAM.lam_loss, [0]
    def poisoned(self, batch, generator):
        calls[0] += 1
        loss, info, z, e = real_loss(self, batch, generator)
        return (loss * float("nan") if calls[0] >= 3 else loss), info, z, e
    PixelLAM.lam_loss = poisoned
cfg = tyro.cli(PretrainConfig, args=sys.argv[2:])
try:
    P.pretrain(cfg, until=int(sys.argv[1]) or None)
except MasklamError as e:
    (cfg.out / f"error{rank}.txt").write_text(str(e))
    sys.exit(2)
torch.save(held["model"].state_dict(), cfg.out / f"rank{rank}.pt")
'''


@pytest.fixture(scope="module")
def tiny_h5(write_synthetic_dataset, tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "tiny.h5")


def torchrun(args: list[str], cwd: Path, **env_vars: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 ARGS` with this interpreter; output captured."""
    script = Path(sys.executable).parent / "torchrun"
    launcher = [str(script)] if script.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    src = Path(masklam.__file__).parents[1]  # the children import the masklam this test imports
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(src)]),
           **env_vars}
    return subprocess.run([*launcher, "--standalone", "--nproc_per_node", "2", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def reference_weights(cfg: PretrainConfig, world_size: int, steps: range) -> dict[str, torch.Tensor]:
    """One process replaying `steps`: each step's gradient is the mean over the ranks' batches."""
    from masklam.data import WindowSampler, labeled_subset, load_dataset, split_trajectories

    data = load_dataset(cfg.data, mask_key="masks" if cfg.method == "masklam" else None)
    train_ids, _ = split_trajectories(data.num_trajectories, cfg.heldout, cfg.split_seed)
    sampler = WindowSampler(data, train_ids, cfg.frame_stack, cfg.max_offset, need_masks=cfg.method == "masklam")
    labeled = None
    if cfg.method == "laom-sup":
        labeled = WindowSampler(data, labeled_subset(train_ids, cfg.labels, cfg.split_seed),
                                cfg.frame_stack, cfg.max_offset)
    ranks = [DistContext(rank=r, local_rank=r, world_size=world_size) for r in range(world_size)]
    sizes = per_rank_sizes(cfg, ranks[0])
    batches = [StepBatches(sampler, sizes[0], cfg.seed, labeled, sizes[1], ctx) for ctx in ranks]
    model = _build_model(cfg, data, torch.device("cpu"))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    for step in steps:
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, steps.stop, cfg.warmup_frac, cfg.schedule)
        optimizer.zero_grad(set_to_none=True)
        for b in batches:
            np_batch, aug_seed = b.draw(step)
            loss, _ = model(to_device(np_batch, torch.device("cpu")), torch.Generator().manual_seed(aug_seed))
            (loss / world_size).backward()
        optimizer.step()
        model.update_target()
    for b in batches:
        b.close()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-6, f"weights differ by up to {worst}"


# --- DistContext -----------------------------------------------------------------------------------
def test_context_from_env_single_process_is_inert():
    ctx = DistContext.from_env({})
    assert (ctx.rank, ctx.local_rank, ctx.world_size, ctx.enabled, ctx.is_main) == (0, 0, 1, False, True)
    assert ctx.any(True) is True and ctx.any(False) is False
    assert ctx.mean({"a": 1.5}) == {"a": 1.5}
    ctx.barrier()  # no process group: returns at once
    assert ctx.device("cpu") == torch.device("cpu")
    model = torch.nn.Linear(2, 2)
    assert wrap_ddp(model, ctx, torch.device("cpu")) is model
    assert DistContext.from_env({"WORLD_SIZE": "1", "RANK": "0"}).enabled is False


def test_context_from_torchrun_env_and_devices():
    ctx = DistContext.from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert (ctx.rank, ctx.local_rank, ctx.world_size, ctx.enabled, ctx.is_main) == (3, 1, 4, True, False)
    assert ctx.device("cpu") == torch.device("cpu")
    with pytest.raises(MasklamError, match="names one device"):
        ctx.device("cuda:1")
    if torch.cuda.is_available():
        assert ctx.device("auto") == torch.device("cuda", 1) or torch.cuda.device_count() < 2
    else:
        assert ctx.device("auto") == torch.device("cpu")
        with pytest.raises(MasklamError, match="no CUDA"):
            ctx.device("cuda")


@pytest.mark.parametrize("env, match", [({"WORLD_SIZE": "two"}, "WORLD_SIZE"),
                                        ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK"),
                                        ({"WORLD_SIZE": "0"}, "WORLD_SIZE")])
def test_context_rejects_bad_env(env, match):
    with pytest.raises(MasklamError, match=match):
        DistContext.from_env(env)


def test_global_batch_is_split_over_ranks(tiny_h5, tmp_path):
    two = DistContext(rank=1, local_rank=1, world_size=2)
    cfg = PretrainConfig(method="laom-sup", data=(tiny_h5,), out=tmp_path, batch_size=8, labels=2,
                         labels_batch_size=4)
    assert per_rank_sizes(cfg, two) == (4, 2) and per_rank_sizes(cfg, DistContext()) == (8, 4)
    lapo = PretrainConfig(method="lapo", data=(tiny_h5,), out=tmp_path, batch_size=8)
    assert per_rank_sizes(lapo, DistContext(world_size=4)) == (2, 0)  # labeled batch unused by lapo
    with pytest.raises(MasklamError, match="batch-size 9"):
        per_rank_sizes(PretrainConfig(method="lapo", data=(tiny_h5,), out=tmp_path, batch_size=9), two)
    with pytest.raises(MasklamError, match="labels-batch-size 5"):
        per_rank_sizes(PretrainConfig(method="laom-sup", data=(tiny_h5,), out=tmp_path, batch_size=8,
                                      labels=2, labels_batch_size=5), two)


def test_rank_batches_single_process_key_unchanged(tiny_h5):
    from masklam.data import WindowSampler, load_dataset

    data = load_dataset([tiny_h5])
    sampler = WindowSampler(data, np.arange(6))
    single = StepBatches(sampler, 4, seed=7).draw(3)[0]
    direct = sampler.sample(4, np.random.default_rng([7, 3]))
    assert all(np.array_equal(single[k], direct[k]) for k in direct)  # resume test relies on this key
    r0 = StepBatches(sampler, 4, 7, ctx=DistContext(0, 0, 2)).draw(3)[0]
    r1 = StepBatches(sampler, 4, 7, ctx=DistContext(1, 1, 2)).draw(3)[0]
    again = StepBatches(sampler, 4, 7, ctx=DistContext(1, 1, 2)).draw(3)[0]
    assert not np.array_equal(r0["obs_t"], r1["obs_t"]) and np.array_equal(r1["obs_t"], again["obs_t"])


@pytest.mark.parametrize("method", ["lapo", "masklam", "laom", "laom-sup"])
def test_every_trainable_parameter_gets_a_gradient(method, tiny_h5, tmp_path):
    """Why DDP runs with find_unused_parameters=False for every method (and with fsq / ema targets)."""
    from masklam.data import WindowSampler, load_dataset

    extra = dict(labels=2, labels_batch_size=4) if method == "laom-sup" else {}
    if method.startswith("laom"):
        extra.update(head_dim=16, head_blocks=1, target="ema")
    cfg = PretrainConfig(method=method, data=(tiny_h5,), out=tmp_path, batch_size=4, latent_dim=8,
                         fsq_levels=(5, 5) if method == "lapo" else (), **extra)
    data = load_dataset([tiny_h5], mask_key="masks" if method == "masklam" else None)
    sampler = WindowSampler(data, np.arange(6), cfg.frame_stack, cfg.max_offset, need_masks=method == "masklam")
    labeled = sampler if method == "laom-sup" else None
    batch, seed = StepBatches(sampler, 4, 0, labeled, 4).draw(0)
    model = _build_model(cfg, data, torch.device("cpu"))
    loss, _ = model(to_device(batch, torch.device("cpu")), torch.Generator().manual_seed(seed))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{method}: parameters without a gradient (DDP would need find_unused_parameters): {missing}"
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(n.startswith("target_encoder.") for n in frozen) and (bool(frozen) == method.startswith("laom"))


def test_video_without_actions_or_states_leaves_no_trainable_parameter_without_a_gradient(
        write_synthetic_dataset, tmp_path):
    """Imported video: the probes have nothing to fit; frozen, so DDP (find_unused_parameters=False) still works."""
    import h5py

    from masklam.data import WindowSampler, load_dataset

    path = write_synthetic_dataset(tmp_path / "video.h5", n_traj=6, length=8)
    with h5py.File(path, "a") as f:
        for g in f.values():
            del g["actions"], g["states"]
    cfg = PretrainConfig(method="lapo", data=(path,), out=tmp_path / "o", batch_size=4, latent_dim=8)
    data = load_dataset([path])
    batch, seed = StepBatches(WindowSampler(data, np.arange(6), cfg.frame_stack, cfg.max_offset), 4, 0, None,
                              4).draw(0)
    model = _build_model(cfg, data, torch.device("cpu"))
    loss, _ = model(to_device(batch, torch.device("cpu")), torch.Generator().manual_seed(seed))
    loss.backward()
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


# --- torchrun end to end ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["lapo", "masklam"])
def test_torchrun_two_processes_equal_the_mean_gradient_run(method, tiny_h5, tmp_path):
    run = tmp_path / "run"
    args = ["-m", "masklam", "pretrain", "--method", method, "--data", str(tiny_h5), "--out", str(run),
            "--updates", "3", "--recon-samples", "4", *SMALL]
    if method == "lapo":
        args.append("--no-tensorboard")
    proc = torchrun(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(metrics["probe_nmse"]) and metrics["steps"] == 3 and "train/loss" in metrics
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["batch_size"] == 8
    # only rank 0 logs and writes: one summary line, one line per log interval, one TensorBoard file
    text = proc.stdout + proc.stderr
    assert text.count("probe_nmse (held-out)") == 1 and text.count("step 2/3") == 1
    assert (run / "recon.png").is_file() and not list(run.glob("*.tmp"))
    assert len(list((run / "tb").glob("events.*"))) == (1 if method == "masklam" else 0)
    cfg = PretrainConfig(method=method, data=(tiny_h5,), out=run, updates=3, batch_size=8, latent_dim=16,
                         **(dict(head_dim=32, head_blocks=1) if method.startswith("laom") else {}))
    assert_same_weights(load_file(str(run / "model.safetensors")), reference_weights(cfg, 2, range(3)))


@pytest.mark.slow
def test_torchrun_resume_every_rank_loads_the_state(tiny_h5, tmp_path):
    """laom-sup with an EMA target and augmentations, interrupted after 2 of 4 steps and resumed."""
    (tmp_path / "launch.py").write_text(LAUNCHER)
    run = tmp_path / "run"
    args = ["--method", "laom-sup", "--data", str(tiny_h5), "--out", str(run), "--updates", "4", "--labels", "2",
            "--labels-batch-size", "4", "--target", "ema", "--head-dim", "32", "--head-blocks", "1", "--no-tensorboard",
            *SMALL]
    first = torchrun(["launch.py", "2", *args], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert torch.load(run / "train_state.pt", weights_only=False)["step"] == 2 and not (run / "metrics.json").exists()
    second = torchrun(["launch.py", "0", *args], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (second.stdout + second.stderr).count("resuming") == 1
    r0, r1 = torch.load(run / "rank0.pt"), torch.load(run / "rank1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # rank 1 resumed the optimiser too, or it would drift
    cfg = PretrainConfig(method="laom-sup", data=(tiny_h5,), out=run, updates=4, batch_size=8, latent_dim=16,
                         head_dim=32, head_blocks=1, labels=2, labels_batch_size=4, target="ema")
    ref = reference_weights(cfg, 2, range(4))
    assert_same_weights(r0, ref)
    assert_same_weights(load_file(str(run / "model.safetensors")), ref)


@pytest.mark.slow
def test_torchrun_nan_on_one_rank_stops_both(tiny_h5, tmp_path):
    (tmp_path / "launch.py").write_text(LAUNCHER)
    run = tmp_path / "run"
    args = ["--method", "lapo", "--data", str(tiny_h5), "--out", str(run), "--updates", "6", "--no-tensorboard",
            *SMALL, "--log-every", "1"]
    proc = torchrun(["launch.py", "0", *args], tmp_path, POISON_RANK="1")
    assert proc.returncode != 0
    for rank in (0, 1):  # both ranks stopped with the one-line error (rank 0 never saw a NaN itself)
        assert "non-finite" in (run / f"error{rank}.txt").read_text()
    assert torch.load(run / "train_state.pt", weights_only=False)["step"] == 2  # the last good checkpoint
    assert not (run / "metrics.json").exists()
