"""`--recipe laom-code` for LAOM: each place where LAOM's code differs from our first reading of its paper is its own
option, tested here (docs/laom-vs-code.md; its code: the initial release of a public copy, github.com/joon-stack/laom,
whose parameter counts are the paper's Table 4)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from masklam.errors import MasklamError
from masklam.models.augment import LAOM_CHOICES, laom_augment, laom_homographies
from masklam.models.encoder import ImpalaEncoder, ResidualBlock, frames_to_tensor
from masklam.models.lam import LAMConfig, build_lam
from masklam.train.config import PretrainConfig


def cfg(method: str = "laom", **kw) -> PretrainConfig:
    return PretrainConfig(method=method, data=("x.h5",), out="o", **kw)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("method, action_dim, table_4", [("laom", 6, 192_307_136), ("laom-sup", 21, 192_479_189)])
def test_the_authors_laom_at_the_paper_preset_has_table_4s_parameter_count(method, action_dim, table_4):
    # the paper's Table 4 (LAOM+supervision counted with humanoid-walk's 21 actions); the action and state probes
    # are ours (theirs train outside the model)
    c = cfg(method, preset="paper", recipe="laom-code", **({"labels": 4} if method == "laom-sup" else {}))
    with torch.device("meta"):
        lam = build_lam(c.lam_config(action_dim, 17, 64))
    core = count(lam) - count(lam.action_probe) - count(lam.state_probe) - count(lam.target_encoder)  # its EMA copy
    assert core == table_4
    assert lam.fdm.projs[1].in_features == 1024 + 8192  # its FDM re-reads the latent only
    assert lam.idm.projs[1].in_features == 1024 + 2 * 12288  # its IDM both embeddings
    with torch.device("meta"):
        ours = build_lam(cfg(method, preset="paper", **({"labels": 4} if method == "laom-sup" else {}))
                         .lam_config(action_dim, 17, 64))
    assert count(ours) > 2 * count(lam)  # our heads re-read the whole conditioning at 4x width


def test_the_authors_recipe_for_laom_resolves_to_its_code():
    c = cfg(preset="paper", recipe="laom-code")
    code = dict(heads="laom", head_blocks=3, encoder="laom", pixels="signed", init="orthogonal", aug_style="laom",
                aug=True, target="ema", lr=1e-4, batch_size=512, epochs=10.0, latent_dim=8192, encoder_scale=6,
                head_dim=1024, frame_stack=3, max_offset=10, warmup_frac=0.3, schedule="linear", sampling="epochs")
    assert {k: getattr(c, k) for k in code} == code
    assert cfg(recipe="laom-code").sampling == "replacement"  # cpu-small: a number of updates, drawn as ours
    assert cfg("laom-sup", recipe="laom-code", labels=2).target == "ema"  # the code's; the text's is stop-grad
    assert cfg("laom-sup", labels=2).target == "stopgrad"
    plain = cfg(recipe="paper")  # MaskLAM's paper recipe leaves LAOM as it is
    assert (plain.heads, plain.encoder, plain.pixels, plain.aug_style) == ("ours", "impala", "unit", "ours")
    with pytest.raises(MasklamError, match="for LAOM"):
        cfg("masklam", heads="laom")
    with pytest.raises(MasklamError, match="pixels signed is for lapo, laom, laom-sup, not masklam"):
        cfg("masklam", pixels="signed")
    with pytest.raises(MasklamError, match="pixels centered is for pixel LAMs"):
        cfg("laom", pixels="centered")


def test_laoms_encoder_strides_uses_relu6_and_ends_without_an_activation():
    torch.manual_seed(0)
    enc = ImpalaEncoder(9, 16, 1, 2, style="laom")
    assert not any(isinstance(m, nn.MaxPool2d) for m in enc.modules())
    assert [m.stride for m in enc.modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)] == [(2, 2)] * 3
    out = enc(torch.rand(4, 9, 16, 16))
    assert out.shape == (4, 32, 2, 2) and out.min() < 0  # no final ReLU
    assert ImpalaEncoder(9, 16, 1, 2)(torch.rand(4, 9, 16, 16)).min() >= 0  # ours ends in one
    block6, block = ResidualBlock(1, relu6=True), ResidualBlock(1)
    for b in (block6, block):
        nn.init.ones_(b.conv1.weight), nn.init.zeros_(b.conv1.bias)
        nn.init.zeros_(b.conv0.weight), nn.init.constant_(b.conv0.bias, 100.0)
    x = torch.zeros(1, 1, 4, 4)
    assert block6(x)[0, 0, 1, 1] == 6 * 9 and block(x)[0, 0, 1, 1] == 100 * 9  # ReLU6 clamps at 6


def test_signed_pixels():
    x = np.zeros((1, 1, 2, 2, 3), np.uint8)
    x[0, 0, 0] = 255
    t = frames_to_tensor(x, signed=True)  # (1, 3, 2, 2)
    assert torch.all(t[0, :, 0] == 1.0) and torch.all(t[0, :, 1] == -1.0)
    lam = build_lam(LAMConfig(method="laom", action_dim=2, state_dim=3, img_hw=16, frame_stack=1, latent_dim=4,
                              head_dim=8, head_blocks=1, pixels="signed"))
    assert lam.frames(x).min() == -1.0 and lam.frames(x).max() == 1.0


def test_laoms_augmentations():
    g = torch.Generator().manual_seed(0)
    hom, choice = laom_homographies(4000, 64, g)
    assert set(choice.tolist()) == set(range(len(LAOM_CHOICES)))
    assert abs((choice == 0).float().mean() - 1 / 8) < 0.02  # one sample in 8 is left as it is
    assert torch.equal(hom[choice == 0], torch.eye(3).expand(int((choice == 0).sum()), 3, 3))
    shifts = hom[choice == 1]
    px = shifts[:, :2, 2] * 32  # normalised -> pixels at 64 px
    assert torch.allclose(px, px.round(), atol=1e-4) and px.abs().max() == 14
    assert torch.equal(shifts[:, :2, :2], torch.eye(2).expand(len(shifts), 2, 2))
    rot = hom[choice == 2]  # one angle per choice group (a torchvision transform draws once per call), up to 90 deg
    assert torch.allclose(rot, rot[:1].expand_as(rot)) and abs(rot[0, 0, 0]) <= 1 and rot[0, 2, 2] == 1
    persp = hom[choice == 3]
    assert torch.allclose(persp, persp[:1].expand_as(persp)) and persp[0, 2, :2].abs().sum() > 0  # a true perspective
    x = torch.rand(16, 9, 64, 64)
    y = laom_augment(x, torch.Generator().manual_seed(1))
    again = laom_augment(x, torch.Generator().manual_seed(1))
    _, c = laom_homographies(16, 64, torch.Generator().manual_seed(1))
    assert torch.equal(y, again) and torch.equal(y[c == 0], x[c == 0]) and not torch.equal(y, x)
    i = int((c == 1).nonzero()[0])  # an integer shift moves the frame by whole pixels
    dx, dy = (laom_homographies(16, 64, torch.Generator().manual_seed(1))[0][i, :2, 2] * 32).round().int().tolist()
    inner = y[i, :, 14:50, 14:50]
    assert torch.allclose(inner, x[i, :, 14 + dy:50 + dy, 14 + dx:50 + dx], atol=1e-5)


def test_the_authors_laom_trains(write_toy, tmp_path):
    from masklam.data import WindowSampler, load_dataset

    data = load_dataset(write_toy(tmp_path / "toy.h5"))
    c = cfg("laom-sup", recipe="laom-code", labels=2, latent_dim=4, encoder_scale=1, head_dim=8)
    lam = build_lam(c.lam_config(data.action_dim, data.state_dim, 16)).train()
    sampler = WindowSampler(data, np.arange(data.num_trajectories), c.frame_stack, c.max_offset)
    batch = sampler.sample(8, np.random.default_rng(0))
    batch["labeled"] = sampler.sample(4, np.random.default_rng(1))
    loss, info = lam(batch, torch.Generator().manual_seed(0))
    loss.backward()
    first_loss = info["train/loss"]
    assert torch.isfinite(loss) and "train/sup_loss" in info
    assert all(p.grad is not None for p in lam.idm.parameters())
    # its loss: latent-space prediction of o_(t+1)'s embedding plus sup_coef x the supervised action loss
    assert torch.allclose(info["train/loss"], info["train/fdm_loss"] + c.sup_coef * info["train/sup_loss"])
    with torch.no_grad():
        _, other = lam({**batch, "obs_t1": batch["obs_t"]}, torch.Generator().manual_seed(0))
    assert not torch.allclose(other["train/fdm_loss"], info["train/fdm_loss"])  # the target is o_(t+1)'s
    opt = torch.optim.Adam(lam.parameters(), 1e-3)
    for _ in range(20):  # it learns: on a fixed batch (same augmentations) its loss falls
        loss, info = lam(batch, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        lam.update_target()
    assert info["train/loss"] < first_loss * 0.8


def test_laom_sups_cheetah_run_weight_is_noted(write_toy, small_cfg, tmp_path, capsys):
    from masklam.train.recipes import task_note
    from masklam.train.pretrain import pretrain

    cheetah = {"domain_name": "cheetah", "task_name": "run"}
    note = task_note(cfg("laom-sup", labels=2), cheetah)  # LAOM's Table 7: 0.001 on cheetah-run, 0.01 elsewhere
    assert note == "laom-sup trains on cheetah-run with --sup-coef 0.01; its paper used --sup-coef 0.001 on this task"
    assert task_note(cfg("laom-sup", labels=2), {"domain_name": "walker", "task_name": "run"}) is None
    assert task_note(cfg("laom-sup", labels=2, sup_coef=0.001), cheetah) is None
    assert task_note(cfg("laom"), cheetah) is None and task_note(cfg("laom-sup", labels=2), {}) is None
    import h5py

    data = write_toy(tmp_path / "toy.h5")
    with h5py.File(data, "a") as f:
        f.attrs.update(domain_name="cheetah", task_name="run")
    pretrain(small_cfg("laom-sup", data, tmp_path / "run", updates=1))
    assert "its paper used --sup-coef 0.001 on this task" in capsys.readouterr().err


def test_laoms_latent_policy_is_its_actor_with_table_4s_parameter_count():
    from masklam.downstream.bc import LAOM_LATENT_BC, BCConfig
    from masklam.downstream.policy import ImagePolicy, PolicyConfig

    with torch.device("meta"):  # Table 4 "BC": IMPALA x32 on a 3-frame stack -> latent 8192
        assert count(ImagePolicy(PolicyConfig(8192, 6, 3, 64, 32, 2, 0, arch="laom"))) == 107_541_504
    torch.manual_seed(0)
    policy = ImagePolicy(PolicyConfig(5, 2, 1, 16, 1, 1, 0, arch="laom"))
    assert policy.head[-1].in_features == policy.encoder.out_channels  # pooled, not the flattened map
    w = policy.head[-1].weight.detach()
    assert torch.allclose(w @ w.T, torch.eye(5), atol=1e-5)  # orthogonal init
    x = np.full((2, 1, 16, 16, 3), 255, np.uint8)
    assert policy.frames(x).max() == 1.0 and policy.frames(x * 0).min() == -1.0  # 2 x/255 - 1
    feats = policy.features(policy.frames(x))  # global average pool, then ReLU6
    assert feats.shape == (2, policy.encoder.out_channels) and feats.min() >= 0 and feats.max() <= 6
    fmap = policy.encoder(policy.frames(x))  # (2, C, 2, 2)
    assert torch.allclose(feats, torch.clamp(fmap.mean(dim=(2, 3)), 0, 6))
    assert torch.allclose(policy.predict(x), policy.head[-1](feats))
    with pytest.raises(MasklamError, match="hidden must be 0"):
        PolicyConfig(5, 2, hidden=256, arch="laom")
    with pytest.raises(MasklamError, match="pass --hidden 0"):
        BCConfig(data=("x.h5",), out="o", target="action", arch="laom")
    assert LAOM_LATENT_BC == dict(arch="laom", hidden=0, standardize=False, schedule="linear")


def test_laoms_decoder_uses_relu6_and_decays_linearly(write_toy, small_cfg, tmp_path, monkeypatch):
    from masklam.downstream import decoder as decoder_module
    from masklam.downstream.bc import LAOM_LATENT_BC, BCConfig, train_bc
    from masklam.downstream.decode import LAOM_DECODER, DecodeConfig, train_decoder
    from masklam.downstream.decoder import ActionDecoder
    from masklam.train.schedule import lr_factor

    dec = ActionDecoder(4, 2, relu6=True)
    assert sum(isinstance(m, nn.ReLU6) for m in dec.modules()) == 2 and not any(isinstance(m, nn.ReLU)
                                                                                 for m in dec.modules())
    dec.save_pretrained(tmp_path / "dec")
    assert sum(isinstance(m, nn.ReLU6) for m in ActionDecoder.from_pretrained(tmp_path / "dec").modules()) == 2
    assert [lr_factor(s, 4, 0.0, "linear") for s in range(4)] == [1.0, 0.75, 0.5, 0.25]  # its linear decay
    assert LAOM_DECODER == dict(layers=3, hidden=256, relu6=True, schedule="linear")
    from masklam.train.pretrain import pretrain

    toy = write_toy(tmp_path / "toy.h5")  # LAOM's downstream: its actor regresses a LAM's latents, then a decoder
    pretrain(small_cfg("laom", toy, tmp_path / "lam", updates=2, recipe="laom-code", heldout=0.2))
    bc = dict(data=(toy,), target="latent", lam=tmp_path / "lam", frame_stack=3, batch_size=16, updates=3, heldout=0.2)
    train_bc(BCConfig(out=tmp_path / "bc", **bc, **LAOM_LATENT_BC), progress=False)
    from masklam.downstream.policy import ImagePolicy

    assert ImagePolicy.from_pretrained(tmp_path / "bc").cfg.arch == "laom"
    rates, real_set_lr = [], decoder_module.set_lr

    def recording(opt, lr):
        rates.append(lr)
        real_set_lr(opt, lr)

    monkeypatch.setattr(decoder_module, "set_lr", recording)
    decode = DecodeConfig(policy=tmp_path / "bc", data=(toy,), out=tmp_path / "d", labels=2, updates=4, **LAOM_DECODER)
    train_decoder(decode, progress=False)
    assert rates == pytest.approx([decode.lr * f for f in (1.0, 0.75, 0.5, 0.25)])  # the decoder trains on it
    assert sum(isinstance(m, nn.ReLU6) for m in ActionDecoder.from_pretrained(tmp_path / "d").modules()) == 2


def test_laoms_options_stay_with_laom_in_a_sweep_and_on_disk(tmp_path):
    from masklam.downstream.decoder import ActionDecoder
    from masklam.downstream.policy import ImagePolicy, PolicyConfig
    from masklam.downstream.stages import pretrain_conf, recipe_applies
    from masklam.train.config import options_for
    from masklam.train.recipes import suite_note

    # a sweep's [pretrain] serves pixel LAMs and LAOM: each takes only the pixel values that are its own
    assert options_for("laom", {"pixels": "centered"}) == {} and options_for("masklam", {"pixels": "signed"}) == {}
    assert options_for("lapo", {"pixels": "signed"}) == {"pixels": "signed"}  # LAOM's LAPO baseline
    assert options_for("laom", {"pixels": "unit"}) == {}  # LAOM's stage keys as before pixels applied to it
    assert options_for("laom-sup", {"pixels": "signed"}) == {"pixels": "signed"}
    assert options_for("masklam", {"pixels": "centered"}) == {"pixels": "centered"}
    # MaskLAM's authors' recipe (the quickstart's --recipe authors, with their downstream) leaves LAOM as it was
    assert not recipe_applies("laom", "authors") and recipe_applies("laom-sup", "laom-code")
    assert not recipe_applies("masklam", "laom-code") and recipe_applies("lapo", "laom-code")
    assert "recipe" not in pretrain_conf("laom", ["d.h5"], 8, 0, 0, {"recipe": "authors"})
    # the Meta-World values given explicitly at --preset paper: nothing to note
    given = cfg("masklam", recipe="authors", preset="paper", lr=3e-4, batch_size=128, epochs=4.0)
    assert suite_note(given, {"domain_name": "mw"}) is None
    # directories in LAOM's layouts are format 3: an older masklam refuses them in one line
    lam = build_lam(LAMConfig(method="laom", action_dim=2, state_dim=3, img_hw=16, frame_stack=1, latent_dim=4,
                              head_dim=8, head_blocks=1, heads="laom"))
    plain = build_lam(LAMConfig(method="laom", action_dim=2, state_dim=3, img_hw=16, frame_stack=1, latent_dim=4,
                                head_dim=8, head_blocks=1))
    policy, ours = (ImagePolicy(PolicyConfig(4, 2, 1, 16, 1, 1, 0, arch=a)) for a in ("laom", "ours"))
    formats = [m.pretrained_format() for m in (lam, plain, policy, ours, ActionDecoder(4, 2, relu6=True),
                                                ActionDecoder(4, 2))]
    assert formats == [3, 1, 3, 1, 3, 1]
    assert build_lam(LAMConfig(method="laom", action_dim=2, state_dim=3, img_hw=16, frame_stack=1, latent_dim=4,
                               head_dim=8, head_blocks=1, pixels="signed")).pretrained_format() == 3


def test_a_bc_run_from_before_arch_resumes_only_as_ours(write_toy, tmp_path, cut_sampling, monkeypatch):
    import json

    from masklam.downstream.bc import BCConfig, train_bc

    toy = write_toy(tmp_path / "toy.h5")
    conf = dict(data=(toy,), out=tmp_path / "bc", target="action", frame_stack=1, batch_size=8, updates=6,
                save_every=2, heldout=0.2, hidden=0)
    with cut_sampling(5), pytest.raises(KeyboardInterrupt):
        train_bc(BCConfig(**conf), progress=False)
    record = tmp_path / "bc" / "resume" / "config.json"
    old = json.loads(record.read_text())
    del old["arch"]  # as a run started before the option existed wrote it
    record.write_text(json.dumps(old))
    with pytest.raises(MasklamError, match="arch='ours', not 'laom'"):
        train_bc(BCConfig(**conf, arch="laom"), progress=False)
    from masklam.data import WindowSampler

    drawn, real_sample = [], WindowSampler.sample
    monkeypatch.setattr(WindowSampler, "sample", lambda self, n, rng: drawn.append(n) or real_sample(self, n, rng))
    train_bc(BCConfig(**conf), progress=False)  # resumes as what it was, from its checkpoint at update 4
    monkeypatch.undo()
    assert len(drawn) == 2  # updates 5 and 6 only
    train_bc(BCConfig(**{**conf, "out": tmp_path / "straight"}), progress=False)
    from masklam.downstream.policy import ImagePolicy

    resumed, straight = (ImagePolicy.from_pretrained(tmp_path / d).state_dict() for d in ("bc", "straight"))
    assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in resumed)


def test_laoms_lapo_baseline_at_the_paper_preset_is_its_code_with_table_4s_parameter_count():
    # configs/lapo.yaml and src/nn.py's LAPO of LAOM's code; Table 4: LAPO 211,847,849 parameters
    c = cfg("lapo", preset="paper", recipe="laom-code")
    code = dict(frame_stack=3, max_offset=10, encoder="laom", decoder="laom", pixels="signed", init="orthogonal",
                latent_dim=8192, encoder_scale=6, num_res_blocks=2, lr=1e-4, epochs=10.0, warmup_frac=0.3,
                schedule="linear", batch_size=512, aug=False, fdm_width=1.0, sampling="epochs", mask_channel=False)
    assert {k: getattr(c, k) for k in code} == code
    with torch.device("meta"):
        lam = build_lam(c.lam_config(6, 17, 64))
    assert count(lam) - count(lam.action_probe) - count(lam.state_probe) == 211_847_849
    assert count(lam.idm_encoder) + count(lam.idm_head) == 104_173_088  # its IDM; ours at these sizes the same
    assert lam.decoder.net[-1].out_channels == 9  # the whole next stack
    with pytest.raises(MasklamError, match="decoder 'laom' .* is for lapo, not masklam"):
        cfg("masklam", decoder="laom")
    with pytest.raises(MasklamError, match="takes RGB frames only, not a mask channel"):
        cfg("lapo", pixels="signed", mask_channel=True)


def test_laoms_lapo_predicts_the_whole_next_stack_in_signed_pixels(write_toy, tmp_path):
    from masklam.data import WindowSampler, load_dataset
    from masklam.models.lam import weighted_mse

    data = load_dataset(write_toy(tmp_path / "toy.h5"))
    c = cfg("lapo", recipe="laom-code", latent_dim=4, encoder_scale=1, max_offset=2)
    torch.manual_seed(0)
    lam = build_lam(c.lam_config(data.action_dim, data.state_dim, 16)).train()
    assert isinstance(lam.idm_act, nn.GELU) and not any(isinstance(m, nn.MaxPool2d) for m in lam.modules())
    batch = WindowSampler(data, np.arange(data.num_trajectories), 3, 2).sample(6, np.random.default_rng(0))
    x_t = lam.inputs(batch["obs_t"])
    pred, _ = lam.predict_from_tensors(x_t, lam.latent_from_tensors(x_t, lam.inputs(batch["obs_tk"])))
    assert pred.shape == (6, 9, 16, 16) and pred.abs().max() < 1  # tanh, as the 2 x/255 - 1 frames
    target = frames_to_tensor(batch["obs_t1"], signed=True)  # (6, 9, 16, 16): the stack ending at o_{t+1}
    loss, info = lam(batch)
    assert torch.allclose(info["train/recon_mse"], ((pred - target) ** 2).mean(), atol=1e-5)
    assert torch.allclose(info["train/loss"], weighted_mse(pred, target, torch.ones(6, 16, 16), "sample"), atol=1e-5)
    newest = lam.predict_next(batch["obs_t"], batch["obs_tk"])
    assert newest.shape == (6, 3, 16, 16) and torch.allclose(newest, (pred[:, -3:] + 1) / 2, atol=1e-5)
