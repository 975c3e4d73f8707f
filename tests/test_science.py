"""What makes the numbers trustworthy: the authors' recipe is wired as they run it, evaluation never replays
training episodes, the probe cannot do worse than the mean, and LAM -> latent BC -> decoder recovers actions."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from masklam.data import WindowSampler, load_dataset
from masklam.errors import MasklamError
from masklam.models import LAMConfig, build_lam
from masklam.train import PretrainConfig
from masklam.train.probe import RidgeProbe, cross_validate_ridge, probe_lam

torch.set_num_threads(1)
HW = 32


def lam(method: str = "masklam", seed: int = 0, **kw):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_lam(LAMConfig(method=method, action_dim=2, state_dim=3, img_hw=HW, latent_dim=8, **kw)).eval()


def batch(b: int = 4, f: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    frames = lambda: torch.randint(0, 256, (b, f, HW, HW, 3), generator=g, dtype=torch.uint8)  # noqa: E731
    masks = lambda: torch.rand(b, f, HW, HW, generator=g) < 0.2  # noqa: E731
    return dict(obs_t=frames(), obs_t1=frames(), obs_tk=frames(), mask_t=masks(), mask_t1=masks(), mask_tk=masks())


# --- the mask input channel ----------------------------------------------------------------------------------
def test_mask_channel_widens_the_first_convolutions():
    on, off = lam(frame_stack=3, mask_channel=True), lam(frame_stack=3)
    assert on.idm_encoder.net[0].in_channels == 2 * 4 * 3 and on.fdm_encoder.net[0].in_channels == 4 * 3
    assert off.idm_encoder.net[0].in_channels == 2 * 3 * 3 and off.fdm_encoder.net[0].in_channels == 3 * 3
    with pytest.raises(MasklamError, match="pixel LAMs"):
        LAMConfig(method="laom", action_dim=2, state_dim=3, mask_channel=True)


def test_mask_channel_latent_reads_the_masks_and_refuses_to_run_without_them():
    b = batch()
    on, off = lam(frame_stack=3, mask_channel=True), lam(frame_stack=3)
    other = dict(b, mask_t=~b["mask_t"])
    with torch.no_grad():
        assert not torch.allclose(on.label(b), on.label(other))  # the masks are an input
        assert torch.equal(off.label(b), off.label(other))  # without the channel they are ignored
        # the channel carries the mask itself: an all-agent mask differs from an empty one
        full = dict(b, mask_t=torch.ones_like(b["mask_t"]), mask_t1=torch.ones_like(b["mask_t1"]))
        empty = dict(b, mask_t=torch.zeros_like(b["mask_t"]), mask_t1=torch.zeros_like(b["mask_t1"]))
        assert not torch.allclose(on.label(full), on.label(empty))
    with pytest.raises(MasklamError, match="mask"):
        on.latent(b["obs_t"], b["obs_t1"])


def test_labelling_an_episode_whose_masks_are_empty_labels_it_and_says_so(capsys):
    """Training refuses masks that mark nothing anywhere; labelling many episodes one at a time does not stop at
    one whose segmenter found no agent: it labels it (the LAM reads the empty channel) and names it once."""
    from masklam.downstream.label import Labeller, episode_latents

    on = lam(frame_stack=3, mask_channel=True)
    obs = np.random.default_rng(0).integers(0, 256, (6, HW, HW, 3), dtype=np.uint8)
    empty, some = np.zeros((6, HW, HW), bool), np.zeros((6, HW, HW), bool)
    some[:, 4:9, 4:9] = True
    z = episode_latents(on, obs, empty, batch_size=4)
    assert z.shape == (6, 8) and not np.allclose(z, episode_latents(on, obs, some, batch_size=4))
    labeller = Labeller.__new__(Labeller)  # its frozen parts, without a LAM directory to load
    labeller.lam, labeller.mask_key, labeller.batch_size, labeller.decoder = on, "masks", 4, None
    for _ in range(2):
        assert np.allclose(labeller(obs, {"masks": empty}, "v.h5 (3)")["latent_action"], z)
    assert capsys.readouterr().err.count("v.h5 (3): its 'masks' masks are empty in every frame") == 1


def test_mask_channel_is_the_fourth_channel_of_each_frame():
    """inputs(): channel 4f + c is colour c of frame f, channel 4f + 3 its mask (frame-major, as frames_to_tensor)."""
    model, b = lam(frame_stack=3, mask_channel=True), batch(seed=7)
    x = model.inputs(b["obs_t"], b["mask_t"])  # (B, 12, H, W)
    assert x.shape == (4, 12, HW, HW)
    for f in range(3):
        assert torch.equal(x[:, 4 * f + 3], b["mask_t"][:, f].float())
        assert torch.equal(x[:, 4 * f:4 * f + 3], b["obs_t"][:, f].permute(0, 3, 1, 2).float() / 255)
    masks = b["mask_t"].to(torch.uint8)
    model.inputs(b["obs_t"], masks)
    assert masks.max() == 1  # the caller's masks are not scaled in place


def test_masklam_loss_ignores_the_background_of_the_target_with_the_paper_recipe():
    """Paper recipe (mask channel, weighted loss, per-batch normalisation): pixels of o_{t+1} off the agent's
    mask do not enter the loss; pixels on it do."""
    model = lam(frame_stack=3, mask_channel=True, mask_norm="batch").train()
    b = batch(seed=3)
    loss = model(b)[1]["train/loss"]
    bg = ~b["mask_t1"][:, -1, :, :, None].expand(-1, -1, -1, 3)
    moved = b["obs_t1"].clone()
    moved[:, -1] = torch.where(bg, torch.full_like(moved[:, -1], 77), moved[:, -1])
    assert torch.equal(model(dict(b, obs_t1=moved))[1]["train/loss"], loss)
    moved[:, -1] = torch.where(~bg, torch.full_like(moved[:, -1], 77), b["obs_t1"][:, -1])
    assert not torch.equal(model(dict(b, obs_t1=moved))[1]["train/loss"], loss)


def test_label_uses_the_one_step_transition_whatever_the_training_offset():
    model, b = lam("lapo", frame_stack=3), batch(seed=5)
    with torch.no_grad():
        z = model.label(b)
        assert torch.equal(z, model.latent(b["obs_t"], b["obs_t1"]))
        assert not torch.allclose(z, model.latent(b["obs_t"], b["obs_tk"]))


# --- the recipe ---------------------------------------------------------------------------------------------
def test_authors_recipe_sets_what_the_authors_code_sets(tmp_path):
    def cfg(method: str, **kw) -> PretrainConfig:
        return PretrainConfig(method=method, data=(tmp_path / "x.h5",), out=tmp_path, recipe="authors", **kw)

    m, lp = cfg("masklam"), cfg("lapo")
    for c in (m, lp):
        assert (c.frame_stack, c.optimizer, c.schedule, c.weight_decay) == (3, "adamw", "cosine", 0.01)
    assert (m.max_offset, m.idm_window, lp.max_offset, lp.idm_window) == (9, "pair", 1, "single")
    assert m.mask_channel and m.mask_norm == "batch" and not m.mask_target and m.mask_lambda == 0.0
    assert not lp.mask_channel
    assert m.lam_config(2, 3, 64).mask_channel and not lp.lam_config(2, 3, 64).mask_channel
    assert cfg("lapo", mask_channel=True).mask_channel  # the authors' ablation
    assert cfg("masklam", max_offset=1).max_offset == 1  # explicit values win over the recipe
    paper = PretrainConfig(method="masklam", data=(tmp_path / "x.h5",), out=tmp_path, recipe="paper")
    assert (paper.frame_stack, paper.max_offset, paper.mask_channel, paper.init) == (1, 1, False, "default")
    d = PretrainConfig(method="masklam", data=(tmp_path / "x.h5",), out=tmp_path)
    assert (d.frame_stack, d.max_offset, d.optimizer, d.mask_channel) == (1, 1, "adam", False)
    assert cfg("laom").max_offset == 10 and not cfg("laom").mask_channel  # LAOM keeps its own paper's recipe
    with pytest.raises(MasklamError, match="pixel LAMs"):
        PretrainConfig(method="laom", data=(tmp_path / "x.h5",), out=tmp_path, mask_channel=True)


def test_training_offsets_are_drawn_in_range_and_the_fdm_target_stays_at_t_plus_1(write_synthetic_dataset, tmp_path):

    data = load_dataset(write_synthetic_dataset(tmp_path / "d.h5", n_traj=4, length=24), mask_key="masks")
    sampler = WindowSampler(data, frame_stack=3, max_offset=9, need_masks=True)
    b = sampler.sample(3000, np.random.default_rng(0))
    assert set(b["k"].tolist()) == set(range(1, 10))
    np.testing.assert_array_equal(b["obs_t1"][:, -1], data.obs[b["index"] + 1])
    np.testing.assert_array_equal(b["obs_tk"][:, -1], data.obs[b["index"] + b["k"]])


def test_pretrain_probe_and_latent_bc_run_with_a_mask_channel_lam(small_cfg, write_synthetic_dataset, tmp_path):
    from masklam.downstream.bc import BCConfig, train_bc
    from masklam.train.pretrain import pretrain

    data = write_synthetic_dataset(tmp_path / "d.h5", n_traj=6, length=24)
    metrics = pretrain(small_cfg("masklam", data, tmp_path / "lam", recipe="authors", max_offset=4))
    assert np.isfinite(metrics["probe_nmse"]) and metrics["probe_ridge"] > 0
    m = train_bc(BCConfig(data=(data,), out=tmp_path / "bc", lam=tmp_path / "lam", updates=3, batch_size=8,
                          frame_stack=3, heldout=0.2), progress=False)
    assert np.isfinite(m["bc/heldout_mse"])
    # latent BC's target is the LAM's latent of each window read with its agent masks
    from masklam.data import WindowSampler, load_dataset
    from masklam.downstream.targets import make_target_fn
    from masklam.models import load_lam

    target_fn, dim, frames = make_target_fn("latent", "cpu", lam=tmp_path / "lam")
    batch = WindowSampler(load_dataset(data, mask_key="masks"), frame_stack=3, max_offset=1, need_masks=True).sample(
        8, np.random.default_rng(0))
    lam = load_lam(tmp_path / "lam").eval()
    with torch.no_grad():
        want = lam.label(batch).float()
        unmasked = lam.label({**batch, "mask_t": np.zeros_like(batch["mask_t"])}).float()
    got = target_fn(batch)
    assert got.shape == (8, dim) and frames == 3 and torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, unmasked, atol=1e-4)


# --- seed streams -------------------------------------------------------------------------------------------
def test_evaluation_never_replays_a_collected_episode():
    from functools import partial

    from masklam.seeding import stream_seed

    collect_seed, eval_seed = partial(stream_seed, "collect"), partial(stream_seed, "eval")

    for seed in range(4):
        collected = {collect_seed(seed, i) for i in range(200)}
        evaluated = {eval_seed(seed, i) for i in range(200)}
        assert not collected & evaluated
    # collection keeps its historical seeds (SeedSequence([seed, i])): datasets stay byte-identical
    assert collect_seed(3, 7) == int(np.random.SeedSequence([3, 7]).generate_state(1)[0])
    # a seed of 2**32 or more would take two entropy words and shift the stream tag: refused
    with pytest.raises(MasklamError, match="2\\*\\*32"):
        eval_seed(3 * 2**32 + 7, 2)


def test_evaluation_and_collection_first_frames_differ_for_the_same_user_seed():
    from functools import partial

    from masklam.seeding import stream_seed

    collect_seed, eval_seed = partial(stream_seed, "collect"), partial(stream_seed, "eval")
    from masklam.envs import make

    env = make("cheetah-run", distractors="laom", shadows=False, reflections=False)
    try:
        for i in range(3):
            a, ia = env.reset(seed=collect_seed(0, i))
            b, ib = env.reset(seed=eval_seed(0, i))
            assert not np.array_equal(a, b)
            assert not np.allclose(ia["state"], ib["state"])  # another start pose
            assert (ia["distractor"]["camera"] != ib["distractor"]["camera"]).any()  # another camera walk
    finally:
        env.close()


# --- the probe ----------------------------------------------------------------------------------------------
class NoiseLAM(torch.nn.Module):
    """A 'LAM' whose latent carries no information: seeded noise per window."""

    frame_stack, latent_dim, needs_masks = 1, 64, False

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self) -> torch.device:
        return self.w.device

    def label(self, windows: dict) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(windows["index"][0]))
        return torch.randn(len(windows["index"]), self.latent_dim, generator=g)


def test_a_latent_without_information_probes_at_about_one(write_synthetic_dataset, tmp_path):
    """4 x 60-frame trajectories and a 64-dim noise latent: a barely regularised fit reaches NMSE >> 1 on
    held-out data; the cross-validated ridge brings it back to ~1 (predicting the mean)."""

    data = load_dataset(write_synthetic_dataset(tmp_path / "d.h5", n_traj=5, length=60))
    train, held = np.arange(4), np.array([4])
    fixed = probe_lam(NoiseLAM(), data, train, held, ridge=1e-4, batch_size=32)
    cv = probe_lam(NoiseLAM(), data, train, held, batch_size=32)
    assert fixed["probe_nmse"] > 1.2
    assert 0.95 < cv["probe_nmse"] < 1.1 and cv["probe_ridge"] >= 10


def test_cross_validation_keeps_a_small_ridge_for_an_informative_latent():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 2, generator=g)
    folds = []
    for _ in range(5):
        x = torch.randn(300, 8, generator=g)
        p = RidgeProbe(8, 2)
        p.add(x, x @ w + 0.1 * torch.randn(300, 2, generator=g))
        folds.append(p)
    ridge, scores = cross_validate_ridge(folds)
    assert ridge <= 1e-2 and scores[ridge] < 0.01 and scores[1e6] > 0.9


# --- end to end: LAM -> latent BC -> decoder -----------------------------------------------------------------
def write_policy_dataset(path: Path, render, n_traj: int = 12, length: int = 40, seed: int = 0) -> Path:
    """A white square moving by 3 px per unit of a random action, on still stripes; the action is also shown
    in o_t (the brightness of two bars at the top, one per dimension), as an expert's intent would be: the
    action is readable from (o_t, o_{t+1}) by an IDM and predictable from o_t by a policy."""
    SIDE = render.side
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.attrs.update(domain_name="synthetic", task_name="policy", img_hw=HW, split="train", distractors="stripes",
                       seed=seed, version=1, action_repeat=1)
        for i in range(n_traj):
            pos, phase = rng.uniform(6, HW - SIDE - 2, size=2), rng.uniform(0, 6.28)
            obs, masks, states, actions = [], [], [], []
            for _ in range(length):
                action = np.clip(rng.uniform(-1, 1, size=2) - 0.1 * (pos - (HW - SIDE) / 2), -1, 1)
                frame, mask = render(pos, phase, HW)
                frame[:4, : HW // 2] = int(round((action[0] + 1) * 127.5))
                frame[:4, HW // 2:] = int(round((action[1] + 1) * 127.5))
                obs.append(frame), masks.append(mask), actions.append(action)
                states.append(np.concatenate([pos / HW, [np.sin(phase), np.cos(phase)]]))
                pos = np.clip(pos + 3.0 * action, 4, HW - SIDE)
            g = f.create_group(str(i))
            g["obs"], g["masks"] = np.stack(obs), np.stack(masks)
            g["states"], g["actions"] = np.asarray(states, np.float32), np.asarray(actions, np.float32)
            g["rewards"] = np.zeros(length, np.float32)
            g.attrs["traj_return"] = 0.0
    return path


@pytest.mark.slow
def test_lam_latent_bc_and_decoder_recover_actions_end_to_end(render_square, small_cfg, tmp_path):
    """The decoder's held-out NMSE of decoder(policy(o_t)) vs a_t is far below 1; a decoder that saw a constant
    input (no information from the policy) would score ~1."""
    from masklam.downstream.bc import BCConfig, train_bc
    from masklam.downstream.decode import DecodeConfig, train_decoder
    from masklam.downstream.decoder import fit_decoder
    from masklam.train.pretrain import pretrain

    data = write_policy_dataset(tmp_path / "d.h5", render_square)
    lam_metrics = pretrain(small_cfg("masklam", data, tmp_path / "lam", updates=200, batch_size=32, latent_dim=8,
                                     lr=1e-3, log_every=100, ckpt_every=200, recon_samples=0, heldout=0.2, bf16=False))
    assert lam_metrics["probe_nmse"] < 0.8  # measured 0.67
    train_bc(BCConfig(data=(data,), out=tmp_path / "bc", lam=tmp_path / "lam", updates=400, batch_size=32, lr=1e-3,
                      frame_stack=1, hidden=64, heldout=0.2, bf16=False), progress=False)
    dec = train_decoder(DecodeConfig(policy=tmp_path / "bc", data=(data,), out=tmp_path / "dec", labels=3,
                                     updates=600, batch_size=64, lr=3e-3, heldout=0.2), progress=False)
    assert dec["decode/heldout_nmse"] < 0.6  # measured 0.43
    # the control: the same decoder fit on a constant input cannot beat the mean
    a = torch.rand(200, 2) * 2 - 1
    const, _ = fit_decoder(torch.zeros(200, 8), a, updates=300, batch_size=64, lr=3e-3)
    with torch.no_grad():
        nmse = float((const(torch.zeros(200, 8)) - a).square().mean() / a.var(0).mean())
    assert nmse > 0.9


def test_decoder_inputs_read_what_they_say(tmp_path):
    """input 'hidden' reads the frozen policy's last hidden layer, 'latent+hidden' both; a 3-layer decoder has
    three linear layers; an agent refuses a decoder built for another input width."""
    from masklam.downstream.agent import LatentAgent
    from masklam.downstream.decoder import ActionDecoder, feature_dim, policy_features
    from masklam.downstream.policy import ImagePolicy, PolicyConfig

    torch.manual_seed(0)
    policy = ImagePolicy(PolicyConfig(out_dim=6, action_dim=2, frame_stack=1, img_hw=HW, hidden=16,
                                      target="latent")).eval()
    obs = torch.randint(0, 256, (5, 1, HW, HW, 3), dtype=torch.uint8)
    z, h = policy_features(policy, obs, "latent"), policy_features(policy, obs, "hidden")
    assert torch.allclose(z, policy.predict(obs)) and h.shape == (5, 16) and (h >= 0).all()  # after the ReLU
    assert torch.equal(policy_features(policy, obs, "latent+hidden"), torch.cat([z, h], 1))
    assert [feature_dim(policy, i) for i in ("latent", "hidden", "latent+hidden")] == [6, 16, 22]
    dec = ActionDecoder(22, 2, hidden=8, layers=3, input="latent+hidden")
    assert sum(isinstance(m, torch.nn.Linear) for m in dec.net) == 3
    dec.save_pretrained(tmp_path / "dec")
    agent = LatentAgent(policy, ActionDecoder.from_pretrained(tmp_path / "dec"))
    with torch.no_grad():
        expect = dec(torch.cat([z, h], 1)).clamp(-1, 1).numpy()
    np.testing.assert_allclose(agent.select_action(obs.numpy()), expect, atol=1e-6)
    with pytest.raises(MasklamError, match="width"):
        LatentAgent(policy, ActionDecoder(6, 2, input="hidden"))


def test_latent_actions_of_frames_in_memory_at_any_size(tmp_path):
    """The notebook's `masklam label`: frames of another size are made square as import makes them (masks too),
    a run directory loads, and bad input is one line."""
    from masklam.data.video import Resizer
    from masklam.downstream.label import episode_latents, latent_actions

    model = lam(frame_stack=3, mask_channel=True)
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (9, 48, 64, 3), dtype=np.uint8)
    big_masks = rng.random((9, 48, 64)) > 0.5
    resizer = Resizer(HW, "letterbox")
    small = np.stack([resizer.array(f) for f in big])
    small_masks = np.stack([resizer.mask(m) for m in big_masks])
    want = episode_latents(model, small, small_masks, batch_size=4)
    assert np.array_equal(latent_actions(model, big, big_masks, resize="letterbox", batch_size=4), want)
    assert not np.allclose(latent_actions(model, big, big_masks, batch_size=4), want)  # crop: other frames
    model.save_pretrained(tmp_path / "lam", {"data_resize": "letterbox"})  # how its training data were imported
    assert np.allclose(latent_actions(str(tmp_path / "lam"), big, big_masks), want, atol=1e-6)  # so by default
    with pytest.raises(MasklamError, match="this LAM reads agent masks"):
        latent_actions(model, small)
    with pytest.raises(MasklamError, match=r"frames must be \(T, H, W, 3\) uint8"):
        latent_actions(model, small.astype(np.float32), small_masks)
    with pytest.raises(MasklamError, match="masks must be"):
        latent_actions(model, small, small_masks[:, :8])
    with pytest.raises(MasklamError, match="reads no masks"):
        latent_actions(lam(frame_stack=1), small, small_masks)


@pytest.mark.parametrize("frame_stack, mask_channel", [(1, False), (3, True)])
def test_labelling_streams_an_episode_in_chunks_with_the_same_latents(frame_stack, mask_channel):
    """label reads an episode `chunk` frames at a time (memory: a chunk, not an hour of video); each chunk's
    windows see the frames before it, so the latents are the whole episode's, at every chunk size."""
    from masklam.downstream.label import episode_latents

    torch.manual_seed(0)
    model = lam(frame_stack=frame_stack, mask_channel=mask_channel)
    obs = np.random.default_rng(1).integers(0, 256, (11, HW, HW, 3), dtype=np.uint8)
    masks = np.random.default_rng(2).random((11, HW, HW)) > 0.5 if mask_channel else None
    whole = episode_latents(model, obs, masks, batch_size=4, chunk=100)
    assert whole.shape == (11, 8)
    # by hand: window t stacks o_(t-F+1..t) clamped at 0, the next stack o_(t-F+2..t+1); the last frame is its own next
    padded = np.concatenate([obs, obs[-1:]])
    stack = np.array([[max(t - frame_stack + 1 + i, 0) for i in range(frame_stack)] for t in range(12)])
    batch = {"obs_t": torch.from_numpy(padded[stack[:11]]), "obs_t1": torch.from_numpy(padded[stack[1:]])}
    if mask_channel:
        padded_masks = np.concatenate([masks, masks[-1:]])
        batch |= {"mask_t": torch.from_numpy(padded_masks[stack[:11]]),
                  "mask_t1": torch.from_numpy(padded_masks[stack[1:]])}
    with torch.no_grad():
        assert np.allclose(whole, model.label(batch).float().numpy(), atol=1e-5)
    for chunk in (1, 2, 5, 10, 11):
        got = episode_latents(model, iter(list(obs)), masks, batch_size=3, chunk=chunk)
        assert np.allclose(got, whole, atol=1e-5), chunk
