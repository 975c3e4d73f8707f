"""The `authors` recipe: each place where MaskLAM's authors' code differs from ours is its own option, tested here
(../shared/reference/facts.md, section 13)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from masklam.errors import MasklamError
from masklam.models.encoder import frames_to_tensor
from masklam.models.lam import LAMConfig, build_lam
from masklam.train.config import PretrainConfig
from masklam.train.recipes import suite_note


def cfg(tmp_path, method: str = "masklam", **kw) -> PretrainConfig:
    return PretrainConfig(method=method, data=(tmp_path / "x.h5",), **{"out": tmp_path, **kw})


def lam(**kw):
    torch.manual_seed(0)
    return build_lam(LAMConfig(**{"method": "lapo", "action_dim": 2, "state_dim": 3, "img_hw": 16, "frame_stack": 3,
                                  "latent_dim": 8, **kw}))


def frames(seed: int, b: int = 2, f: int = 3, hw: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (b, f, hw, hw, 3), dtype=np.uint8)


def test_orthogonal_init_gives_orthonormal_weights_and_zero_biases():
    model = lam(init="orthogonal")
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    assert any(isinstance(m, nn.ConvTranspose2d) for m in layers)
    for m in layers:
        w = m.weight.detach().flatten(1)  # (out, in * k * k)
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        assert torch.allclose(gram, torch.eye(len(gram)), atol=1e-4), m
        assert m.bias is None or torch.count_nonzero(m.bias) == 0
    default = lam()  # PyTorch's default init is not orthogonal
    w = default.idm_head.weight.detach()
    assert not torch.allclose(w @ w.T, torch.eye(len(w)), atol=1e-2)


def test_centred_pixels_and_the_tanh_output_range():
    x = np.zeros((1, 2, 4, 4, 4), np.uint8)
    x[..., :3] = 255
    x[0, 0, ..., 3] = 255  # the mask channel of frame 0 is on, frame 1's off
    t = frames_to_tensor(x, center=True)  # (1, 8, 4, 4): frame-major, 4 channels each
    assert torch.all(t[0, [0, 1, 2, 4, 5, 6]] == 0.5)  # RGB 255 -> 0.5
    assert torch.all(t[0, 3] == 1.0) and torch.all(t[0, 7] == 0.0)  # the mask channel stays {0, 1}
    assert torch.all(frames_to_tensor(np.zeros((1, 1, 2, 2, 3), np.uint8), center=True) == -0.5)

    model = lam(pixels="centered")
    with torch.no_grad():
        model.decoder.net[-1].bias.fill_(100.0)  # a huge output: tanh bounds it to 0.5
        pred, _ = model.predict_from_tensors(model.frames(frames(0)), torch.zeros(2, 8))
        assert pred.max() <= 0.5 and pred.min() >= -0.5 and pred.max() > 0.49
        assert model.predict_next(frames(0), frames(1)).min() >= 0.0  # the user-facing prediction is in [0, 1]
    unit = lam()
    with torch.no_grad():
        unit.decoder.net[-1].bias.fill_(100.0)
        assert unit.predict_from_tensors(unit.frames(frames(0)), torch.zeros(2, 8))[0].max() > 50  # linear output


def test_the_fdm_is_wider_than_the_idm_with_the_authors_decoder_layout(tmp_path):
    c = cfg(tmp_path, recipe="authors")
    model = build_lam(c.lam_config(2, 3, 64))
    first = lambda enc: next(m for m in enc.modules() if isinstance(m, nn.Conv2d))  # noqa: E731
    assert first(model.idm_encoder).out_channels == 16 and first(model.fdm_encoder).out_channels == 24  # x1, x1.5
    assert not isinstance(list(model.fdm_encoder.net)[-1], nn.ReLU)  # the encoder map enters un-ReLU'd
    dec = list(model.decoder.net)
    convts = [m for m in dec if isinstance(m, nn.ConvTranspose2d)]
    assert len(convts) == 3 and all(m.kernel_size == (2, 2) and m.stride == (2, 2) for m in convts)
    assert isinstance(dec[0], nn.ConvTranspose2d)  # ConvT first, then residual blocks
    assert isinstance(dec[-2], nn.GELU) and dec[-1].kernel_size == (1, 1)
    paper = build_lam(cfg(tmp_path, recipe="authors", preset="paper", latent_dim=16).lam_config(2, 3, 64))
    assert first(paper.idm_encoder).out_channels == 64 and first(paper.fdm_encoder).out_channels == 96  # x4, x6
    ours = build_lam(cfg(tmp_path).lam_config(2, 3, 64))
    assert first(ours.fdm_encoder).out_channels == 16 and isinstance(list(ours.decoder.net)[-1], nn.Conv2d)
    assert list(ours.decoder.net)[-1].kernel_size == (3, 3)


def test_the_authors_schedule_is_adamw_cosine_to_zero_with_no_warmup(tmp_path):
    from masklam.train.schedule import lr_factor, make_optimizer

    c = cfg(tmp_path, recipe="authors")
    assert (c.optimizer, c.lr, c.weight_decay, c.warmup_frac, c.schedule) == ("adamw", 6e-4, 0.01, 0.0, "cosine")
    assert lr_factor(0, 100, c.warmup_frac, c.schedule) == 1.0  # full rate at the first update: no warm-up
    assert lr_factor(99, 100, c.warmup_frac, c.schedule) < 1e-3  # cosine to ~0 at the end
    opt = make_optimizer(nn.Linear(2, 2), c.optimizer, c.lr, c.weight_decay)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.01
    assert cfg(tmp_path).warmup_frac > 0  # ours (cpu-small) warms up


def test_the_authors_lapo_sees_one_window_with_k_1_only(tmp_path):
    c = cfg(tmp_path, method="lapo", recipe="authors")
    assert (c.max_offset, c.idm_window, c.mask_channel) == (1, "single", False)
    model = build_lam(c.lam_config(2, 3, 16))
    assert next(model.idm_encoder.modules()).net[0].in_channels == 12  # o_{t-2..t+1}: 4 RGB frames
    obs_t, obs_t1 = frames(0), frames(1)
    older = obs_t1.copy()
    older[:, :-1] = frames(2)[:, :-1]  # change every frame of the t+1 stack but its newest, o_{t+1}
    with torch.no_grad():
        assert torch.equal(model.latent(obs_t, obs_t1), model.latent(obs_t, older))
        newest = obs_t1.copy()
        newest[:, -1] = frames(3)[:, -1]
        assert not torch.equal(model.latent(obs_t, obs_t1), model.latent(obs_t, newest))
    with pytest.raises(MasklamError, match="max-offset 1"):
        cfg(tmp_path, method="lapo", idm_window="single", max_offset=9)
    assert cfg(tmp_path, method="lapo", recipe="paper").idm_window == "pair"


def test_the_authors_decoder_relu_first_and_gradient_clipping():
    from masklam.downstream.bc import AUTHORS_LATENT_BC, BCConfig
    from masklam.downstream.decode import AUTHORS_DECODER
    from masklam.downstream.decoder import ActionDecoder, fit_decoder

    dec = ActionDecoder(4, 2, input_relu=True, layers=3)
    z = torch.randn(64, 4)
    assert isinstance(dec.net[0], nn.ReLU) and torch.equal(dec(z), dec(z.clamp_min(0)))
    assert ActionDecoder.from_config(dec.pretrained_config()).dims["input_relu"]
    plain = ActionDecoder(4, 2, layers=3)
    assert not torch.equal(plain(z), plain(z.clamp_min(0)))
    assert "input_relu" not in plain.pretrained_config()  # earlier decoders' configs are unchanged

    a = torch.randn(64, 2)
    def moved(**kw) -> float:  # noqa: E306
        torch.manual_seed(0)
        start = ActionDecoder(4, 2, layers=3, input_relu=True)
        d, _ = fit_decoder(z, a, updates=5, batch_size=64, lr=1e-2, seed=0, layers=3, input_relu=True, **kw)
        return sum(float((p - q).detach().abs().sum()) for p, q in zip(d.parameters(), start.parameters()))
    assert moved(grad_clip=1e-12) < 0.1 * moved()  # clipped gradients below Adam's eps barely move the weights
    assert AUTHORS_DECODER["grad_clip"] == 1.0 and AUTHORS_DECODER["input_relu"] and AUTHORS_DECODER["layers"] == 3
    assert (AUTHORS_DECODER["optimizer"], AUTHORS_DECODER["lr"],
            AUTHORS_DECODER["schedule"]) == ("adamw", 1e-3, "cosine")
    bc = BCConfig(data=("x.h5",), out="o", lam="l", **AUTHORS_LATENT_BC)
    assert (bc.standardize, bc.optimizer, bc.lr, bc.schedule) == (False, "adamw", 4e-4, "cosine")


def test_the_authors_latent_policy_has_a_linear_head_and_their_decoder_a_small_orthogonal_output():
    from masklam.downstream.bc import AUTHORS_LATENT_BC, BCConfig
    from masklam.downstream.decode import AUTHORS_DECODER, DecodeConfig
    from masklam.downstream.decoder import ActionDecoder, fit_decoder, policy_features
    from masklam.downstream.policy import ImagePolicy, PolicyConfig

    # their ImpalaCNNBackbone: encoder (ending in a ReLU), flatten, one Linear to the latent; ours has 256 between
    assert AUTHORS_LATENT_BC["hidden"] == 0 and BCConfig(data=("x.h5",), out="o", lam="l", **AUTHORS_LATENT_BC)
    theirs = ImagePolicy(PolicyConfig(8, 2, frame_stack=3, img_hw=16, hidden=0))
    ours = ImagePolicy(PolicyConfig(8, 2, frame_stack=3, img_hw=16))
    assert [type(m) for m in theirs.head] == [nn.Linear] and theirs.head[0].in_features == theirs.encoder.flat_dim
    assert [type(m) for m in ours.head] == [nn.Linear, nn.ReLU, nn.Linear]
    obs = np.random.default_rng(0).integers(0, 256, (4, 3, 16, 16, 3), dtype=np.uint8)
    assert policy_features(theirs, obs).shape == (4, 8)
    with pytest.raises(MasklamError, match="has none"):
        policy_features(theirs, obs, "hidden")
    with pytest.raises(MasklamError, match="hidden must be >= 0, got -1"):
        BCConfig(data=("x.h5",), out="o", lam="l", hidden=-1)

    # their ActionHead: the output Linear orthogonal with gain 0.01 and a zero bias; the hidden ones by default
    assert AUTHORS_DECODER["head_gain"] == 0.01
    z, a = torch.randn(64, 4), torch.randn(64, 3)
    d, _ = fit_decoder(z, a, updates=0, seed=0, layers=3, input_relu=True, head_gain=0.01)
    w = d.net[-1].weight.detach()  # (3, 256): orthogonal rows of norm 0.01
    assert torch.allclose(w @ w.T, 1e-4 * torch.eye(3), atol=1e-8) and not d.net[-1].bias.detach().any()
    assert d.pretrained_config()["head_gain"] == 0.01  # its config.json says how it started
    assert "head_gain" not in ActionDecoder(4, 3).pretrained_config()
    plain, _ = fit_decoder(z, a, updates=0, seed=0, layers=3, input_relu=True)
    assert float(plain.net[-1].weight.detach().abs().max()) > 0.02 and torch.equal(plain.net[1].weight, d.net[1].weight)
    with pytest.raises(MasklamError, match="head_gain"):
        DecodeConfig(data=("x.h5",), out="o", policy="p", head_gain=0.0)
    with pytest.raises(MasklamError, match="hidden width must be >= 0"):
        PolicyConfig(8, 2, hidden=-1)


def test_a_sweep_whose_decoder_reads_a_hidden_layer_the_latent_policy_lacks_fails_before_any_stage(tmp_path):
    from masklam.downstream.experiment import ExperimentConfig

    def sweep(**tables):
        return ExperimentConfig(out=tmp_path, tasks=["t"], methods=["lapo"], data={"t": {"train": ["a.h5"]}},
                                **tables)
    with pytest.raises(MasklamError, match=r"\[decode\] input = 'hidden'.*hidden = 0"):
        sweep(bc_latent={"hidden": 0}, decode={"input": "hidden"})
    with pytest.raises(MasklamError, match="hidden = 0"):
        sweep(bc={"hidden": 0}, decode={"input": "latent+hidden"})  # [bc] reaches latent BC too
    assert sweep(bc_latent={"hidden": 0}).bc_latent == {"hidden": 0}
    assert sweep(decode={"input": "hidden"}).decode == {"input": "hidden"}


def test_authors_recipe_at_the_paper_preset_is_the_authors_stage_1_config(tmp_path):
    # slapo_default_stage_1.yaml (facts.md, sections 9 and 13), field by field
    c = cfg(tmp_path, recipe="authors", preset="paper")
    stage1 = dict(optimizer="adamw", lr=6e-4, weight_decay=0.01, warmup_frac=0.0, schedule="cosine", batch_size=512,
                  latent_dim=128, epochs=2.0, updates=None, encoder_scale=4, fdm_width=1.5, frame_stack=3, max_offset=9,
                  mask_channel=True, mask_norm="batch", mask_lambda=0.0, mask_target=False, mask_dilation=0,
                  init="orthogonal", pixels="centered", decoder="authors", idm_window="pair", fsq_levels=(),
                  grad_clip=None, aug=False, sampling="epochs")
    for name, value in stage1.items():
        assert getattr(c, name) == value, name
    model = c.lam_config(6, 17, 64)
    assert model.fdm_scale == 6 and model.encoder_scale == 4
    lapo = cfg(tmp_path, method="lapo", recipe="authors", preset="paper")  # lapo_bc_dcs_stage_1.yaml
    assert (lapo.max_offset, lapo.idm_window, lapo.mask_channel, lapo.latent_dim) == (1, "single", False, 128)


def test_print_config_names_where_each_value_came_from(tmp_path, capsys):
    c = cfg(tmp_path, recipe="authors", preset="paper", lr=1e-3)
    lines = {line.split()[0]: line for line in c.describe().splitlines()}
    assert lines["lr"].endswith("explicit") and lines["weight_decay"].endswith("recipe authors")
    assert lines["batch_size"].endswith("recipe authors at preset paper")
    assert lines["target_tau"].endswith("default") and lines["aug"].endswith("method masklam")
    assert c.to_dict()["origins"]["init"] == "recipe authors"

    from masklam.train.pretrain import main

    assert main(["--method", "masklam", "--data", str(tmp_path / "none.h5"), "--out", str(tmp_path / "o"),
                 "--recipe", "paper", "--print-config"]) == 0  # prints, trains nothing (the data need not exist)
    out = capsys.readouterr()
    assert "frame_stack" in out.out and "recipe paper" in out.out and "--recipe authors" in out.err
    assert not (tmp_path / "o").exists()


def test_a_recipe_whose_meaning_changes_never_reuses_a_cached_lam(tmp_path, monkeypatch):
    from masklam.downstream import cache, stages
    from masklam.train import config

    seen = []
    monkeypatch.setattr(stages, "run_stage", lambda root, kind, conf, fn, log=print, meaning=None, version=1:
                        seen.append(cache.stage_key(kind, conf, meaning, version)) or (tmp_path, {}))
    args = (tmp_path, "masklam", ["d.h5"], 16, 0, 0)
    stages.pretrain_stage(*args, {"recipe": "authors"}, "cpu", False)
    monkeypatch.setitem(config.RECIPES["authors"], "masklam", {**config.RECIPES["authors"]["masklam"], "lr": 1e-3})
    stages.pretrain_stage(*args, {"recipe": "authors"}, "cpu", False)
    stages.pretrain_stage(*args, {"mask_target": True}, "cpu", False)
    assert seen[0] != seen[1]
    from masklam.train.pretrain import VERSION

    assert seen[2] == cache.stage_key("pretrain", {"mask_target": True, "method": "masklam", "data": ["d.h5"],
                                                    "latent_dim": 16, "seed": 0, "labels": 0},
                                       version=VERSION)  # no recipe: the key as before


def test_orthogonal_init_applies_to_laom_too_and_its_target_starts_as_the_encoder():
    model = build_lam(LAMConfig(method="laom", action_dim=2, state_dim=3, img_hw=16, latent_dim=8, head_dim=16,
                                init="orthogonal"))
    w = model.idm.net[0].weight.detach() if hasattr(model.idm, "net") else next(
        m.weight for m in model.idm.modules() if isinstance(m, nn.Linear)).detach()
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    assert torch.allclose(gram, torch.eye(len(gram)), atol=1e-4)
    for p, q in zip(model.encoder.parameters(), model.target_encoder.parameters()):
        assert torch.equal(p, q)


def test_a_run_records_every_field_and_resumes_an_earlier_run_that_omitted_defaults(tmp_path):
    import dataclasses
    import json

    from masklam.train.checkpoint import check_resumable
    from masklam.train.config import OMITTED_DEFAULTS, RESUMABLE_CHANGES

    fields = {f.name for f in dataclasses.fields(PretrainConfig)} - {"print_config"}
    assert fields <= set(cfg(tmp_path).to_dict())  # defaults included: a later default change cannot misread it
    run = tmp_path / "run"
    run.mkdir()
    centred = cfg(tmp_path, out=run, pixels="centered").to_dict()
    (run / "config.json").write_text(json.dumps(centred))
    check_resumable(run, cfg(tmp_path, out=run, pixels="centered", threads=2).to_dict(), RESUMABLE_CHANGES,
                    OMITTED_DEFAULTS)  # where values came from (threads now given) is no reason to refuse
    with pytest.raises(MasklamError, match="pixels='centered'"):  # resumed without it: refused, not silently unit
        check_resumable(run, cfg(tmp_path, out=run).to_dict(), RESUMABLE_CHANGES, OMITTED_DEFAULTS)
    # a run from before every field was recorded: the fields it lacks held their defaults
    earlier = {k: v for k, v in cfg(tmp_path, out=run).to_dict().items()
               if k not in ("observations", "episode_length", "init", "pixels", "fdm_width", "decoder", "idm_window")}
    (run / "config.json").write_text(json.dumps(earlier))
    check_resumable(run, cfg(tmp_path, out=run).to_dict(), RESUMABLE_CHANGES, OMITTED_DEFAULTS)
    for changed in (dict(pixels="centered"), dict(observations="clean"), dict(idm_window="single")):
        with pytest.raises(MasklamError, match=next(iter(changed))):  # it ran with the default: refused
            check_resumable(run, cfg(tmp_path, out=run, **changed).to_dict(), RESUMABLE_CHANGES, OMITTED_DEFAULTS)


def test_the_authors_latent_bc_reaches_latent_bc_only(tmp_path, monkeypatch):
    from masklam.downstream import sweep
    from masklam.quickstart import QuickstartConfig, experiment_config

    exp = experiment_config(QuickstartConfig(preset="toy", recipe="authors", out=tmp_path, progress=False,
                                             device="cpu"))
    assert exp.bc_latent["optimizer"] == "adamw" and "optimizer" not in exp.bc  # the baselines keep theirs
    seen = []
    monkeypatch.setattr(sweep, "bc_stage", lambda root, kind, conf, dev, prog: seen.append(conf) or tmp_path)
    monkeypatch.setattr(sweep, "pretrain_stage", lambda *a, **k: (tmp_path, {"probe_nmse": 0.5}))
    monkeypatch.setattr(sweep, "decode_stage", lambda *a, **k: tmp_path)
    monkeypatch.setattr(sweep, "_num_train_trajectories", lambda *a: 4)
    monkeypatch.setattr(sweep, "eval_stage", lambda *a, **k: (tmp_path, {"mean": 1.0, "returns": [1.0]}))
    s = sweep.Sweep(exp, {"cheetah-run": {"train": ["d.h5"], "clean": ["c.h5"]}})
    s.normalisers("cheetah-run", 0)
    s.lam_method("lapo", "cheetah-run", 0)
    by_target = {c["target"]: c for c in seen}
    assert by_target["latent"]["optimizer"] == "adamw" and not by_target["latent"]["standardize"]
    assert "optimizer" not in by_target["action"]  # bc-full, the normaliser, trains as in every recipe


def test_a_lam_with_the_authors_options_is_written_in_format_2(tmp_path):
    import json

    from masklam.models.lam import load_lam

    authors, plain = lam(pixels="centered", init="orthogonal"), lam()
    authors.save_pretrained(tmp_path / "a", {"method": "lapo"})
    plain.save_pretrained(tmp_path / "p", {"method": "lapo"})
    assert json.loads((tmp_path / "a" / "config.json").read_text())["masklam_format"] == 2
    assert json.loads((tmp_path / "p" / "config.json").read_text())["masklam_format"] == 1  # older readers read it
    assert load_lam(tmp_path / "a").centered and not load_lam(tmp_path / "p").centered


def test_the_authors_meta_world_run_is_the_paper_metaworld_preset(tmp_path):
    # facts.md, section 9: "Meta-World: lr 3e-4, batch 128, 4 epochs"; everything else as their control-suite run
    mw, dcs = (cfg(tmp_path, recipe="authors", preset=p) for p in ("paper-metaworld", "paper"))
    assert (mw.lr, mw.batch_size, mw.epochs, mw.updates) == (3e-4, 128, 4.0, None)
    assert (dcs.lr, dcs.batch_size, dcs.epochs) == (6e-4, 512, 2.0)
    differ = {f.name for f in dataclasses.fields(mw) if getattr(mw, f.name) != getattr(dcs, f.name)}
    assert differ == {"preset", "lr", "batch_size", "epochs"}
    assert mw.origins["batch_size"] == "recipe authors at preset paper-metaworld"
    paper = [cfg(tmp_path, recipe="paper", preset=p) for p in ("paper-metaworld", "paper")]  # the paper: no MW values
    assert all(getattr(paper[0], f.name) == getattr(paper[1], f.name) for f in dataclasses.fields(PretrainConfig)
               if f.name not in ("preset", "origins"))


def test_a_preset_of_the_other_suite_is_noted(tmp_path):
    at_paper = cfg(tmp_path, recipe="authors", preset="paper")
    note = suite_note(at_paper, {"domain_name": "mw", "task_name": "push"})
    assert "Meta-World data" in note and "--preset paper-metaworld" in note and "batch_size 128" in note
    assert "lr 0.0003" in note and "epochs 4" in note
    assert suite_note(at_paper, {"domain_name": "cheetah"}) is None
    at_mw = cfg(tmp_path, recipe="authors", preset="paper-metaworld")
    assert "--preset paper" in suite_note(at_mw, {"domain_name": "walker"})
    assert suite_note(at_mw, {"domain_name": "mw"}) is None
    assert suite_note(at_mw, {}) is None  # imported video: no suite
    assert suite_note(cfg(tmp_path, recipe="paper", preset="paper"), {"domain_name": "mw"}) is None  # same values
    assert suite_note(cfg(tmp_path, recipe="authors"), {"domain_name": "mw"}) is None  # cpu-small: no suite


def test_pretrain_notes_data_of_the_other_suite(tmp_path, write_toy, small_cfg, capsys):
    from masklam.train.pretrain import pretrain

    data = write_toy(tmp_path / "toy.h5")  # domain "toy": not Meta-World's
    pretrain(small_cfg("masklam", data, tmp_path / "run", recipe="authors", preset="paper-metaworld", updates=2,
                       batch_size=8, latent_dim=8, encoder_scale=1, recon_samples=0))
    assert "these are control-suite data, and --preset paper-metaworld" in capsys.readouterr().err
