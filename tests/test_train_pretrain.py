"""End-to-end tests of `masklam pretrain` / `masklam probe` on a tiny synthetic HDF5 file.

The synthetic task: a square "agent" whose velocity is the 2-D action, on a background of moving
stripes (a distractor that is not driven by the action), with exact agent masks.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from masklam.errors import MasklamError
from masklam.train import PretrainConfig
from masklam.train.precision import bf16_active
from masklam.train.pretrain import pretrain

torch.set_num_threads(1)

@pytest.fixture(scope="module")
def tiny_h5(write_synthetic_dataset, tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "tiny.h5")


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


@pytest.mark.parametrize("method", ["lapo", "masklam", "laom", "laom-sup"])
def test_pretrain_writes_run_directory(small_cfg, method, tiny_h5, tmp_path):
    metrics = pretrain(small_cfg(method, tiny_h5, tmp_path / method))
    run = tmp_path / method
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["probe_nmse"] == pytest.approx(metrics["probe_nmse"]) and np.isfinite(saved["probe_nmse"])
    assert saved["precision"] == ("bf16" if bf16_active("cpu") else "fp32")  # the default: bf16 where native
    assert saved["torch_threads"] == torch.get_num_threads()  # results depend on it on CPU: recorded
    assert saved["probe_n_heldout"] == 23  # one held-out trajectory of 24 frames: 23 windows with k = 1
    assert "train/loss" in saved and "probe/action_mse" in saved
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == method and config["model"]["method"] == method and config["total_steps"] == 4
    assert (run / "train_state.pt").is_file()
    assert (run / "recon.png").is_file() == (method in ("lapo", "masklam"))
    from masklam.models import load_lam

    lam = load_lam(run)
    assert lam.frame_stack == (3 if method.startswith("laom") else 1) and lam.latent_dim == 16


@pytest.mark.parametrize("sampling", ["replacement", "epochs"])
def test_resume_matches_uninterrupted_run(small_cfg, tiny_h5, tmp_path, sampling):
    straight = small_cfg("laom", tiny_h5, tmp_path / "a", updates=6, ckpt_every=3, sampling=sampling)
    pretrain(straight)
    resumed = small_cfg("laom", tiny_h5, tmp_path / "b", updates=6, ckpt_every=3, sampling=sampling)
    partial = pretrain(resumed, until=3)
    assert partial["complete"] is False and not (tmp_path / "b" / "metrics.json").exists()
    assert torch.load(tmp_path / "b" / "train_state.pt", weights_only=False)["step"] == 3
    pretrain(resumed)
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # a completed run is not retrained
    again = pretrain(resumed)
    assert again["probe_nmse"] == json.loads((tmp_path / "b" / "metrics.json").read_text())["probe_nmse"]


def test_weights_train_in_channels_last_and_a_contiguous_checkpoint_resumes_exactly(small_cfg, tiny_h5, tmp_path,
                                                                                     monkeypatch):
    """The LAM's conv weights train in channels_last memory (devices.place), are saved whole, and a checkpoint
    written before that (contiguous weights and optimiser state) resumes to the same weights as a straight run."""
    from masklam.train import pretrain as pretrain_module

    placed, real_place = [], pretrain_module.place

    def recording(module, device):
        placed.append(real_place(module, device))
        return placed[-1]

    monkeypatch.setattr(pretrain_module, "place", recording)
    pretrain(small_cfg("lapo", tiny_h5, tmp_path / "a", updates=4, ckpt_every=2))
    convs = {k: v for k, v in placed[0].state_dict().items() if v.dim() == 4}
    assert convs and all(v.is_contiguous(memory_format=torch.channels_last) for v in convs.values())
    saved = weights(tmp_path / "a")
    assert all(torch.equal(saved[k], v) for k, v in placed[0].state_dict().items() if k in saved)

    cfg = small_cfg("lapo", tiny_h5, tmp_path / "b", updates=4, ckpt_every=2)
    pretrain(cfg, until=2)
    state_path = tmp_path / "b" / "train_state.pt"
    state = torch.load(state_path, weights_only=False)
    state["model"] = {k: v.contiguous() for k, v in state["model"].items()}
    for s in state["optimizer"]["state"].values():
        s.update({k: v.contiguous() for k, v in s.items() if torch.is_tensor(v)})
    assert not any(v.is_contiguous(memory_format=torch.channels_last) and not v.is_contiguous()
                   for v in state["model"].values())
    torch.save(state, state_path)
    pretrain(cfg)
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_run_killed_before_its_first_checkpoint_starts_over(small_cfg, tiny_h5, tmp_path):
    """Killed after config.json was written, before any checkpoint: no "model" entry yet, no train_state.pt."""
    pretrain(small_cfg("lapo", tiny_h5, tmp_path / "straight", updates=4, ckpt_every=2))
    run = tmp_path / "killed"
    cfg = small_cfg("lapo", tiny_h5, run, updates=4, ckpt_every=2)
    pretrain(cfg, until=2)
    config = json.loads((run / "config.json").read_text())
    config.pop("model")
    (run / "config.json").write_text(json.dumps(config))
    (run / "train_state.pt").unlink()
    result = pretrain(cfg)
    assert result["complete"] is not False and "probe_nmse" in json.loads((run / "metrics.json").read_text())
    assert "model" in json.loads((run / "config.json").read_text())
    wa, wb = weights(tmp_path / "straight"), weights(run)  # all 4 updates again, from update 1
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_refuses_a_different_config(small_cfg, tiny_h5, tmp_path):
    pretrain(small_cfg("lapo", tiny_h5, tmp_path, updates=2), until=1)
    with pytest.raises(MasklamError, match="lr"):
        pretrain(small_cfg("lapo", tiny_h5, tmp_path, updates=2, lr=1e-2))
    config = json.loads((tmp_path / "config.json").read_text())
    del config["sampling"]  # a run from before `sampling` was recorded: it drew with replacement
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(MasklamError, match="from before sampling was recorded, which ran with sampling='replacement', "
                                           "not 'epochs'; pass --sampling replacement to resume it"):
        pretrain(small_cfg("lapo", tiny_h5, tmp_path, updates=2, sampling="epochs"))
    assert pretrain(small_cfg("lapo", tiny_h5, tmp_path, updates=2))["complete"]


def test_resume_refuses_other_data_or_observations(small_cfg, write_synthetic_dataset, tmp_path):
    data = write_synthetic_dataset(tmp_path / "d.h5", n_traj=10, length=8)
    pretrain(small_cfg("lapo", data, tmp_path / "r", updates=2), until=1)
    with pytest.raises(MasklamError, match="observations"):
        pretrain(small_cfg("lapo", data, tmp_path / "r", updates=2, observations="clean"))
    write_synthetic_dataset(data, n_traj=14, length=8)  # the data grew meanwhile: another split
    with pytest.raises(MasklamError, match="other data .*train_trajectories differ"):
        pretrain(small_cfg("lapo", data, tmp_path / "r", updates=2))


def test_a_checkpoint_writes_the_model_before_the_resume_state(small_cfg, tiny_h5, tmp_path, monkeypatch):
    """Killed between the two files, the run resumes from the older state: a train_state.pt of step S always
    comes with the model of step S."""
    from masklam.train import checkpoint

    cfg = small_cfg("lapo", tiny_h5, tmp_path, updates=4, ckpt_every=2)
    pretrain(cfg, until=2)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg)  # killed while writing step 4's train_state.pt
    monkeypatch.undo()
    assert json.loads((tmp_path / "config.json").read_text())["step"] == 4  # the model went first
    assert torch.load(tmp_path / "train_state.pt", weights_only=False)["step"] == 2
    pretrain(cfg)
    assert torch.load(tmp_path / "train_state.pt", weights_only=False)["step"] == 4
    assert json.loads((tmp_path / "config.json").read_text())["step"] == 4


def test_tensorboard_keeps_every_step_across_a_resume(small_cfg, tiny_h5, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = small_cfg("lapo", tiny_h5, tmp_path, updates=4, log_every=1, ckpt_every=2, tensorboard=True)
    pretrain(cfg, until=2)
    pretrain(cfg)  # resumes after step 2: step 2's point, logged before its checkpoint, is not purged
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert sorted({e.step for e in events.Scalars("train/loss")}) == [1, 2, 3, 4]


def test_a_finished_run_is_probed_again_when_the_probe_settings_change(small_cfg, tiny_h5, tmp_path):
    pretrain(small_cfg("lapo", tiny_h5, tmp_path, updates=2))
    first = json.loads((tmp_path / "metrics.json").read_text())
    assert "probe_nmse_cv" in first and first["probe_settings"] == {"ridge": None, "max_trajs": None}
    again = pretrain(small_cfg("lapo", tiny_h5, tmp_path, updates=2, probe_ridge=1000.0))
    assert again["probe_ridge"] == 1000.0 and again["probe_nmse"] != first["probe_nmse"]
    assert "probe_nmse_cv" not in again and again["steps"] == first["steps"]  # no score of the old probe stays


def test_nan_loss_stops_and_keeps_last_good_checkpoint(small_cfg, tiny_h5, tmp_path, monkeypatch):
    from masklam.models.lam import PixelLAM

    real = PixelLAM.lam_loss
    calls = {"n": 0}

    def poisoned(self, batch, generator):
        calls["n"] += 1
        loss, info, z, e = real(self, batch, generator)
        return (loss * float("nan") if calls["n"] >= 4 else loss), info, z, e

    monkeypatch.setattr(PixelLAM, "lam_loss", poisoned)
    with pytest.raises(MasklamError, match="non-finite"):
        pretrain(small_cfg("lapo", tiny_h5, tmp_path, updates=6, log_every=1, ckpt_every=2))
    state = torch.load(tmp_path / "train_state.pt", weights_only=False)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in weights(tmp_path).values())


def test_bad_inputs_are_one_line_errors(small_cfg, write_synthetic_dataset, tiny_h5, tmp_path):
    with pytest.raises(MasklamError, match="--labels"):
        small_cfg("laom-sup", tiny_h5, tmp_path, labels=0)
    with pytest.raises(MasklamError, match="mask_lambda"):
        small_cfg("masklam", tiny_h5, tmp_path, mask_lambda=2.0)
    for bad, message in (({"seed": -1}, "seed must lie in"), ({"split_seed": 2 ** 32}, "split_seed must lie in"),
                         ({"epochs": float("nan"), "updates": None}, "epochs must be a finite"),
                         ({"weight_decay": float("nan")}, "weight_decay must be a finite"),
                         ({"fdm_width": 0.01}, "leaves the FDM's first stage no channel")):
        with pytest.raises(MasklamError, match=message):
            small_cfg("lapo", tiny_h5, tmp_path, **bad)
    with pytest.raises(MasklamError):
        pretrain(small_cfg("lapo", tmp_path / "missing.h5", tmp_path / "r"))
    no_masks = tmp_path / "nomask.h5"
    write_synthetic_dataset(no_masks, n_traj=3, length=6)
    with h5py.File(no_masks, "a") as f:
        for g in f.values():
            del g["masks"]
    with pytest.raises(MasklamError, match="nomask.h5"):
        pretrain(small_cfg("masklam", no_masks, tmp_path / "r2"))


def test_presets_and_method_defaults(tmp_path):
    small = PretrainConfig(method="laom", data=(tmp_path / "x.h5",), out=tmp_path)
    assert (small.updates, small.batch_size, small.frame_stack, small.max_offset, small.aug) == (1500, 64, 3, 10, True)
    paper = PretrainConfig(method="masklam", data=(tmp_path / "x.h5",), out=tmp_path, preset="paper", latent_dim=64)
    assert (paper.batch_size, paper.lr, paper.encoder_scale, paper.frame_stack,
            paper.latent_dim) == (512, 1e-4, 6, 1, 64)
    assert paper.updates is None and paper.total_updates(5120) == 100  # 10 epochs of 5120 windows at 512
    sup = PretrainConfig(method="laom-sup", data=(tmp_path / "x.h5",), out=tmp_path, labels=4)
    assert sup.target == "stopgrad"


def test_cli_pretrain_then_probe(tiny_h5, tmp_path, capsys):
    from masklam.cli import main

    run = tmp_path / "cli"
    code = main(["pretrain", "--method", "masklam", "--data", str(tiny_h5), "--out", str(run), "--updates", "2",
                 "--batch-size", "8", "--latent-dim", "8", "--no-tensorboard", "--no-progress", "--log-every", "1"])
    assert code == 0
    first = json.loads((run / "metrics.json").read_text())["probe_nmse"]
    assert main(["probe", str(run), "--ridge", "10.0"]) == 0
    out = capsys.readouterr().out
    assert "probe_nmse" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["probe_nmse"] != first and np.isfinite(metrics["probe_nmse"])
    assert "probe_nmse_cv" not in metrics  # the cross-validated score of the first probe is gone with it
    assert metrics["probe_settings"] == {"ridge": 10.0, "max_trajs": None} and metrics["steps"] == 2
    assert main(["pretrain", "--method", "masklam", "--data", str(tmp_path / "none.h5"), "--out", str(run)]) == 2


@pytest.mark.slow
def test_masklam_learns_the_action_better_than_chance(small_cfg, write_synthetic_dataset, tmp_path):
    """150 steps on the synthetic task: the held-out probe clearly beats predicting the mean (measured ~0.62)."""
    data = write_synthetic_dataset(tmp_path / "d.h5", n_traj=10, length=40)
    metrics = pretrain(small_cfg("masklam", data, tmp_path / "r", updates=150, batch_size=16, latent_dim=32,
                                 lr=1e-3, log_every=50, ckpt_every=150))
    assert metrics["probe_nmse"] < 0.8
    assert metrics["train/loss"] < 0.01  # the masked reconstruction of the agent is nearly perfect


def test_one_precedence_explicit_recipe_method_preset(tmp_path):
    from masklam.train.config import resolve_fields

    # a source that sets one of updates/epochs clears the other; later sources win
    assert resolve_fields({"updates": 5}, [{"epochs": 10.0, "lr": 1.0}, {"lr": 2.0}]) == \
        {"epochs": None, "lr": 2.0, "updates": 5}

    def cfg(method: str = "masklam", **kw) -> PretrainConfig:
        return PretrainConfig(method=method, data=(tmp_path / "x.h5",), out=tmp_path, **kw)

    assert cfg(preset="paper", updates=7).epochs is None and cfg(preset="paper", updates=7).total_updates(10**6) == 7
    assert cfg(epochs=2.0).updates is None and cfg(epochs=2.0).total_updates(640) == 20  # cpu-small's updates cleared
    with pytest.raises(MasklamError, match="not both"):
        cfg(updates=3, epochs=1.0)
    assert cfg(recipe="authors", preset="paper").frame_stack == 3  # recipe > method default (1)
    assert cfg(recipe="authors", frame_stack=2).frame_stack == 2  # explicit > recipe
    h100 = cfg("laom", preset="h100")
    assert (h100.updates, h100.batch_size, h100.encoder_scale, h100.head_dim) == (6000, 256, 4, 1024)


@pytest.mark.parametrize("method, option, value, who", [
    ("lapo", "aug", True, "LAOM"), ("lapo", "head_dim", 64, "LAOM"), ("masklam", "target", "stopgrad", "LAOM"),
    ("laom", "labels", 3, "laom-sup"), ("laom", "mask_lambda", 0.5, "masklam"),
    ("lapo", "mask_target", True, "masklam"),
    ("laom-sup", "recon_samples", 2, "pixel LAMs"),
])
def test_options_of_other_methods_are_one_line_errors(method, option, value, who, tmp_path):
    kw = dict(labels=2) if method == "laom-sup" else {}
    with pytest.raises(MasklamError, match=f"--{option.replace('_', '-')} is only for {who}.*not {method}"):
        PretrainConfig(method=method, data=(tmp_path / "x.h5",), out=tmp_path, **{option: value}, **kw)
    # the value the field has anyway is no error (a sweep may pass labels=0 to every method)
    PretrainConfig(method="lapo", data=(tmp_path / "x.h5",), out=tmp_path, labels=0, target="ema")


def test_options_for_keeps_what_a_method_uses():
    from masklam.train.config import options_for

    shared = dict(updates=5, head_dim=64, mask_target=True, recon_samples=2)
    assert options_for("lapo", shared) == dict(updates=5, recon_samples=2)
    assert options_for("masklam", shared) == dict(updates=5, mask_target=True, recon_samples=2)
    assert options_for("laom", shared) == dict(updates=5, head_dim=64)


def test_a_resume_in_another_number_of_processes_says_its_batches_differ(small_cfg, tiny_h5, tmp_path, capsys):
    """A run checkpointed by 2 data-parallel processes, resumed in one: the run goes on from its checkpoint, with a
    note. (Its checkpoint was written by one process here, so going on from update 3 gives a straight run's weights.)"""
    pretrain(small_cfg("lapo", tiny_h5, tmp_path / "straight", updates=4, ckpt_every=2))
    run = tmp_path / "resumed"
    cfg = small_cfg("lapo", tiny_h5, run, updates=4, ckpt_every=2)
    pretrain(cfg, until=2)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "world_size": 2}))  # as torchrun --nproc 2 wrote it
    capsys.readouterr()
    pretrain(cfg)
    err = capsys.readouterr().err
    assert f"note: {run} ran in 2 process(es), resumes in 1: its batches from here differ" in err
    assert json.loads((run / "config.json").read_text())["step"] == 4
    wa, wb = weights(tmp_path / "straight"), weights(run)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_held_out_trajectories_too_short_for_a_window_fail_before_training(small_cfg, write_synthetic_dataset,
                                                                           tmp_path):
    """The probe and the reconstructions read held-out windows after training: checked before it, not after."""
    import h5py

    from masklam.data import split_trajectories

    data = write_synthetic_dataset(tmp_path / "d.h5", n_traj=10, length=8)
    _, held = split_trajectories(10, 0.1, 0)
    with h5py.File(data, "a") as f:  # every held-out trajectory one frame long (a 1-frame video, imported)
        for i in held:
            for key in ("obs", "masks", "states", "actions", "rewards"):
                one = f[str(i)][key][:1]
                del f[str(i)][key]
                f[str(i)][key] = one
    with pytest.raises(MasklamError, match=r"held-out trajectories .* make no window .*longest has 1"):
        pretrain(small_cfg("lapo", data, tmp_path / "run"))
    assert not (tmp_path / "run" / "train_state.pt").exists()
    with pytest.raises(MasklamError, match="dataset of 1: .*--chunk-seconds S` cuts it into episodes"):
        split_trajectories(1, 0.1, 0)  # one imported video: says how to make episodes of it


def test_shuffled_epochs_see_every_window_once_per_pass_and_resume_in_order(tiny_h5):
    """--sampling epochs (both papers' code): each pass over the training windows takes every window once, in a
    new order per epoch; a position's window depends on (seed, position) only; data-parallel ranks share the
    positions of a step without overlap."""
    from masklam.data import WindowSampler, load_dataset
    from masklam.train.distributed import DistContext
    from masklam.train.pretrain import EpochOrder, StepBatches

    sampler = WindowSampler(load_dataset(tiny_h5), [0, 1, 2], frame_stack=1, max_offset=2)
    w = sampler.num_windows  # 3 x 22 starts
    order = EpochOrder(w, seed=5)
    seq = order(np.arange(3 * w + 7))
    for e in range(3):
        assert sorted(seq[e * w:(e + 1) * w]) == list(range(w))
    assert not np.array_equal(seq[:w], seq[w:2 * w])  # reshuffled each epoch
    assert np.array_equal(EpochOrder(w, 5)(np.arange(2 * w - 3, 2 * w + 4)), seq[2 * w - 3:2 * w + 4])  # pure
    assert not np.array_equal(EpochOrder(w, 6)(np.arange(w)), seq[:w])

    batch = 6  # 66 windows: 11 batches per epoch
    epochs = StepBatches(sampler, batch, seed=5, order=EpochOrder(w, 5))
    seen = np.concatenate([epochs.draw(s)[0]["index"] for s in range(w // batch)])
    assert sorted(seen) == sorted(sampler._starts)
    drawn = StepBatches(sampler, batch, seed=5)  # with replacement: some window twice in a pass
    assert len(set(np.concatenate([drawn.draw(s)[0]["index"] for s in range(w // batch)]))) < w
    ranks = [StepBatches(sampler, batch // 2, seed=5, ctx=DistContext(rank=r, world_size=2), order=EpochOrder(w, 5))
             for r in (0, 1)]
    assert np.array_equal(np.concatenate([b.draw(3)[0]["index"] for b in ranks]), epochs.draw(3)[0]["index"])
    for b in (epochs, drawn, *ranks):
        b.close()
    with pytest.raises(MasklamError, match="sampling must be 'replacement' or 'epochs', got 'Epochs'"):
        PretrainConfig(method="lapo", data=(tiny_h5,), out="o", sampling="Epochs")
    with pytest.raises(MasklamError, match=f"pick needs 2 window indices in 0..{w - 1}"):
        sampler.sample(2, np.random.default_rng(0), np.array([0, w]))


def test_heldout_0_trains_on_every_trajectory_without_a_probe(small_cfg, tiny_h5, tmp_path, capsys):
    """--heldout 0 (both papers' code trains on everything): every trajectory trains, the held-out probe and the
    reconstructions are skipped, and `masklam probe` asks for a split instead of probing nothing."""
    from masklam.train.probe import ProbeConfig, run_probe

    metrics = pretrain(small_cfg("lapo", tiny_h5, tmp_path / "all", heldout=0.0, recon_samples=2))
    config = json.loads((tmp_path / "all" / "config.json").read_text())
    with h5py.File(tiny_h5) as f:
        n = len([k for k in f if k.isdigit()])
    assert config["train_trajectories"] == list(range(n)) and config["heldout_trajectories"] == []
    assert metrics["probe_skipped"] == "no held-out trajectories (--heldout 0)" and "probe_nmse" not in metrics
    assert not (tmp_path / "all" / "recon.png").exists()
    with pytest.raises(MasklamError, match=r"trained with --heldout 0 \(no held-out trajectories\): pass --heldout F"):
        run_probe(ProbeConfig(ckpt=tmp_path / "all", write=False, device="cpu", data=(tmp_path / "none.h5",)))
    assert run_probe(ProbeConfig(ckpt=tmp_path / "all", heldout=0.25, write=False, device="cpu"))["probe_nmse"] > 0
    capsys.readouterr()
    again = pretrain(small_cfg("lapo", tiny_h5, tmp_path / "all", heldout=0.0, recon_samples=2, probe_ridge=1.0))
    assert again == metrics  # no probe to make again under other probe settings: kept as it is
    out = capsys.readouterr()
    assert "is already complete" in out.out + out.err and "probing it again" not in out.out + out.err
