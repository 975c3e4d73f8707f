"""Unit tests of the latent action models on batches built directly as tensors."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from masklam.errors import MasklamError
from masklam.models import LAMConfig, build_lam, frames_to_tensor, load_lam, weighted_mse
from masklam.models.augment import augment
from masklam.models.encoder import ConvDecoder, ImpalaEncoder
from masklam.models.fsq import FSQ

torch.set_num_threads(1)
HW, A, S = 32, 2, 5


def make_cfg(method: str, **kw) -> LAMConfig:
    base = dict(action_dim=A, state_dim=S, img_hw=HW, latent_dim=8, head_dim=32, head_blocks=1)
    base.update(kw)
    return LAMConfig(method=method, **base)


def make_model(method: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_lam(make_cfg(method, **kw))


def make_batch(b: int = 4, f: int = 1, seed: int = 0, mask_frac: float = 0.2) -> dict:
    g = torch.Generator().manual_seed(seed)
    frames = lambda: torch.randint(0, 256, (b, f, HW, HW, 3), generator=g, dtype=torch.uint8)  # noqa: E731
    batch = dict(obs_t=frames(), obs_t1=frames(), obs_tk=frames(),
                 mask_t1=torch.rand(b, HW, HW, generator=g) < mask_frac,
                 action_t=torch.randn(b, A, generator=g), state_t=torch.randn(b, S, generator=g))
    batch["labeled"] = dict(obs_t=frames(), obs_tk=frames(), action_t=torch.randn(b, A, generator=g))
    return batch


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_frames_to_tensor_channel_order_and_range():
    x = torch.zeros(2, 3, 8, 8, 3, dtype=torch.uint8)
    x[:, 1, :, :, 2] = 255  # frame 1, blue
    t = frames_to_tensor(x)
    assert t.shape == (2, 9, 8, 8) and t.dtype == torch.float32
    assert torch.all(t[:, 5] == 1.0) and t.sum() == 2 * 64  # channel f*3+c = 1*3+2
    with pytest.raises(MasklamError):
        frames_to_tensor(torch.zeros(2, 8, 8, 3, dtype=torch.uint8))


def test_encoder_decoder_shapes():
    enc = ImpalaEncoder(6, img_hw=64, scale=2, num_res_blocks=1)
    y = enc(torch.rand(3, 6, 64, 64))
    assert y.shape == (3, 64, 8, 8) and enc.flat_dim == 64 * 64
    dec = ConvDecoder(64, 3, scale=2, num_res_blocks=1)
    assert dec(y).shape == (3, 3, 64, 64)
    with pytest.raises(MasklamError):
        ImpalaEncoder(3, img_hw=30)


@pytest.mark.parametrize("method", ["lapo", "masklam", "laom", "laom-sup"])
def test_shapes_and_one_step_reduces_loss_on_same_batch(method):
    f = 3 if method.startswith("laom") else 1
    model = make_model(method, frame_stack=f, aug=False)
    batch = make_batch(f=f)
    assert model.latent(batch["obs_t"], batch["obs_tk"]).shape == (4, 8)
    assert model.embed(batch["obs_t"]).shape[0] == 4
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss0, info = model(batch)
    assert loss0.ndim == 0 and torch.isfinite(loss0)
    assert {"train/loss", "probe/action_mse", "probe/state_mse"} <= set(info)
    before = copy.deepcopy(model.state_dict())
    opt.zero_grad()
    loss0.backward()
    opt.step()
    model.update_target()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    for part in ("action_probe", "state_probe", "idm", "fdm" if method.startswith("laom") else "decoder"):
        assert any(k.startswith(part) for k in changed), part
    _, info1 = model(batch)
    assert info1["train/loss"].item() < info["train/loss"].item()
    if method == "laom-sup":
        assert "train/sup_loss" in info


def test_probe_inputs_are_detached():
    """The online probes' losses send no gradient into the LAM: its gradients equal the LAM loss's."""
    model = make_model("lapo")
    batch = make_batch()
    total, info = model(batch)
    assert total.item() > info["train/loss"].item()  # the probes' losses are included
    model.zero_grad()
    total.backward()
    g_total = {n: p.grad.clone() for n, p in model.named_parameters() if "probe" not in n}
    model.zero_grad()
    model.lam_loss(batch, None)[0].backward()
    assert all(torch.equal(g, dict(model.named_parameters())[n].grad) for n, g in g_total.items())


def test_masklam_ignores_background_of_target():
    """Changing o_{t+1}'s background pixels (mask 0) changes neither the loss nor any gradient."""
    model = make_model("masklam", mask_lambda=0.0)
    batch = make_batch()
    loss_a, _ = model(batch)
    model.zero_grad()
    loss_a.backward()
    ga = grads(model)
    other = dict(batch)
    noise = torch.randint(0, 256, batch["obs_t1"].shape, dtype=torch.uint8)
    bg = ~batch["mask_t1"][:, None, :, :, None].expand_as(noise)
    other["obs_t1"] = torch.where(bg, noise, batch["obs_t1"])
    assert not torch.equal(other["obs_t1"], batch["obs_t1"])
    loss_b, _ = model(other)
    model.zero_grad()
    loss_b.backward()
    gb = grads(model)
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(ga[k], gb[k]) for k in ga)
    # LAPO, by contrast, sees the change
    lapo = make_model("lapo")
    assert not torch.equal(lapo(batch)[0], lapo(other)[0])


def test_masklam_lambda_one_is_exactly_lapo():
    masklam = make_model("masklam", seed=3, mask_lambda=1.0, mask_dilation=1)
    lapo = make_model("lapo", seed=3)
    lapo.load_state_dict(masklam.state_dict())
    batch = make_batch()
    la, ia = masklam(batch)
    lb, ib = lapo(batch)
    assert torch.equal(ia["train/loss"], ib["train/loss"])
    assert torch.allclose(ia["train/loss"], ia["train/recon_mse"], atol=1e-7)
    assert torch.equal(la, lb)


def test_masklam_loss_is_mask_normalised_and_finite_on_empty_masks():
    pred, target = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    w = torch.zeros(2, 4, 4)
    w[0, :2, :2] = 1.0  # sample 0: 4 agent pixels, error 1 each -> 1.0; sample 1: empty -> 0
    assert weighted_mse(pred, target, w, "sample").item() == pytest.approx(0.5)  # mean of 1.0 and 0
    assert weighted_mse(pred, target, w, "batch").item() == pytest.approx(1.0)  # 12 / 12 over the batch
    assert weighted_mse(pred, target, torch.zeros(2, 4, 4), "batch").item() == 0.0  # empty masks: finite
    model = make_model("masklam", mask_lambda=0.0)
    batch = make_batch(mask_frac=0.0)
    assert not batch["mask_t1"].any()
    loss, info = model(batch)
    loss.backward()
    assert torch.isfinite(info["train/loss"]) and info["train/loss"].item() == 0.0
    assert all(torch.isfinite(g).all() for g in grads(model).values())


def test_masklam_dilation_grows_weighted_area():
    model = make_model("masklam", mask_dilation=2)
    batch = make_batch(b=1, mask_frac=0.0)
    batch["mask_t1"][0, 10, 10] = True
    _, info = model(batch)
    assert info["train/mask_frac"].item() == pytest.approx(25 / HW**2)
    with pytest.raises(MasklamError):
        make_model("masklam")({k: v for k, v in batch.items() if k != "mask_t1"})


def test_masklam_mask_target_reconstructs_the_masked_frame_everywhere():
    """mask_target: the loss is the MSE to M*o_{t+1} over all pixels, so painting the agent off it costs."""
    model = make_model("masklam", seed=5, mask_target=True)
    batch = make_batch(b=2)
    loss = model(batch)[1]["train/loss"]
    with torch.no_grad():
        x_t = model.frames(batch["obs_t"])
        pred = model.predict_from_tensors(x_t, model.latent_from_tensors(x_t, model.frames(batch["obs_tk"])))[0].float()
        target = model.frames(batch["obs_t1"])[:, -3:] * batch["mask_t1"][:, None].float()
    assert loss.item() == pytest.approx(F.mse_loss(pred, target).item(), rel=1e-5)
    # the background of o_{t+1} is still ignored: only the agent's pixels enter the target
    other = dict(batch)
    bg = ~batch["mask_t1"][:, None, :, :, None].expand_as(batch["obs_t1"])
    other["obs_t1"] = torch.where(bg, torch.zeros_like(batch["obs_t1"]) + 77, batch["obs_t1"])
    assert torch.equal(model(other)[1]["train/loss"], loss)


def test_ema_target_moves_by_tau():
    model = make_model("laom", target_tau=0.01)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    old = [p.clone() for p in model.target_encoder.parameters()]
    online = [p.clone() for p in model.encoder.parameters()]
    model.update_target()
    for o, t, new in zip(online, old, model.target_encoder.parameters()):
        assert torch.allclose(new, t + 0.01 * (o - t), atol=1e-6)
        assert not torch.equal(new, t)
    assert all(not p.requires_grad for p in model.target_encoder.parameters())


def test_laom_target_gets_no_gradient_and_fdm_input_is_detached():
    model = make_model("laom", aug=False)
    batch = make_batch()
    fdm_inputs = []
    model.fdm.register_forward_pre_hook(lambda module, args: fdm_inputs.append(args[0]))
    loss, _ = model.lam_loss(batch, None)[:2]
    (x,) = fdm_inputs  # (B, E + D): [embedding of o_t, latent]
    e = model.encoder.flat_dim
    params = list(model.encoder.parameters())

    def encoder_grads(part: torch.Tensor) -> list[torch.Tensor]:
        grads = torch.autograd.grad(part, params, torch.ones_like(part), retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]

    # no gradient reaches the encoder through the FDM's embedding input (it is detached) ...
    assert all(not g.any() for g in encoder_grads(x[:, :e]))
    # ... while the latent input does carry one (the encoder learns through the IDM)
    assert any(g.any() for g in encoder_grads(x[:, e:]))
    loss.backward()
    assert all(p.grad is None for p in model.target_encoder.parameters())
    assert model.encoder.net[0].weight.grad is not None  # learns through the IDM path
    sup = make_model("laom-sup", target="stopgrad")
    assert sup.target_encoder is None


def test_augment_is_seeded_and_nearly_identity_at_zero_strength():
    x = torch.rand(4, 3, HW, HW)
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    c = augment(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    same = augment(x, torch.Generator().manual_seed(1), shift_px=0, rotate_deg=0, perspective=0)
    assert torch.allclose(same, x, atol=1e-5)
    shifted = augment(x, torch.Generator().manual_seed(1), shift_px=4, rotate_deg=0, perspective=0)
    assert (shifted - x).abs().mean() > 0.05


def test_fsq_codes_lie_on_grid_and_pass_gradients():
    fsq = FSQ(6, (5, 4))
    z = torch.randn(64, 6, generator=torch.Generator().manual_seed(0), requires_grad=True)
    codes = fsq.codes(z)
    # every level used by 64 gaussian inputs; an even level count is offset by half a step (FSQ's paper)
    assert set(codes[:, 0].tolist()) == {-1.0, -0.5, 0.0, 0.5, 1.0}  # 5 levels
    assert set(codes[:, 1].tolist()) == {-1.0, -0.5, 0.0, 0.5}  # 4 levels
    assert torch.equal(fsq(z), fsq.proj_out(codes))
    fsq(z).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    model = make_model("lapo", fsq_levels=(5, 5, 5))
    assert model.latent(make_batch()["obs_t"], make_batch()["obs_tk"]).shape == (4, 8)


def test_save_and_from_pretrained_roundtrip(tmp_path):
    model = make_model("laom-sup", frame_stack=2).eval()
    batch = make_batch(f=2)
    model.save_pretrained(tmp_path, {"note": "x"})
    loaded = load_lam(tmp_path)
    assert type(loaded) is type(model) and loaded.frame_stack == 2
    assert torch.equal(model.latent(batch["obs_t"], batch["obs_tk"]), loaded.latent(batch["obs_t"], batch["obs_tk"]))
    with pytest.raises(MasklamError):
        load_lam(tmp_path / "missing")
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(MasklamError):
        load_lam(tmp_path)


def test_a_checkpoint_written_before_the_pretrained_contract_still_loads(tmp_path):
    """config.json's layout is unchanged: run keys beside "model"; old files' extra keys (such as the removed
    LAMConfig.extra) are ignored."""
    import json

    model = make_model("lapo").eval()
    model.save_pretrained(tmp_path, {"method": "lapo", "step": 3})
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["step"] == 3 and config["model"]["method"] == "lapo"
    config["model"]["extra"] = {}
    (tmp_path / "config.json").write_text(json.dumps(config))
    batch = make_batch()
    loaded = load_lam(tmp_path)
    assert torch.equal(model.latent(batch["obs_t"], batch["obs_tk"]), loaded.latent(batch["obs_t"], batch["obs_tk"]))


def square_frames(positions: list[tuple[int, int]]) -> torch.Tensor:
    """(B, 1, HW, HW, 3) uint8: a grey square on black at each (y, x)."""
    x = torch.zeros(len(positions), 1, HW, HW, 3, dtype=torch.uint8)
    for i, (y, xx) in enumerate(positions):
        x[i, 0, y:y + 6, xx:xx + 6] = 200
    return x


def test_small_lapo_overfits_a_tiny_batch():
    model = make_model("lapo", seed=0, latent_dim=16)
    t = [(4, 4), (10, 20), (20, 8), (16, 16)]
    t1 = [(6, 4), (10, 18), (22, 10), (14, 16)]
    batch = dict(obs_t=square_frames(t), obs_t1=square_frames(t1), obs_tk=square_frames(t1))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    first = None
    for _ in range(60):
        loss, _ = model(batch)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10


def test_config_validation():
    with pytest.raises(MasklamError, match="unknown method 'vqvae'"):
        make_cfg("vqvae")
    with pytest.raises(MasklamError, match=r"mask_lambda must be in \[0, 1\], got 1.5"):
        make_cfg("masklam", mask_lambda=1.5)
    with pytest.raises(MasklamError, match="target must be 'ema' or 'stopgrad', got 'both'"):
        make_cfg("laom", target="both")
