"""bc.py and decode.py on a tiny synthetic dataset: learning, targets, save/load, resume, decoder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from masklam.downstream import bc as bc_mod
from masklam.downstream.agent import LatentAgent, load_policy
from masklam.downstream.bc import BCConfig, train_bc
from masklam.downstream.decode import DecodeConfig, train_decoder
from masklam.downstream.decoder import ActionDecoder, fit_decoder
from masklam.downstream.policy import ImagePolicy
from masklam.downstream.targets import make_target_fn
from masklam.errors import MasklamError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def toy(write_toy, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy(tmp_path_factory.mktemp("toy") / "toy.h5")


def _cfg(toy: Path, out: Path, **kw) -> BCConfig:
    base = dict(data=(toy,), out=out, target="action", frame_stack=1, batch_size=32, lr=1e-3, updates=30,
                heldout=0.2, hidden=32)
    base.update(kw)
    return BCConfig(**base)


def test_fit_decoder_learns_known_map() -> None:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(8, 2, generator=g)
    z = torch.randn(2000, 8, generator=g)
    a = torch.tanh(z @ W / 2)
    dec, _ = fit_decoder(z[:1500], a[:1500], updates=800, batch_size=256, lr=3e-3, seed=1)
    with torch.no_grad():
        mse = float(((dec(z[1500:]) - a[1500:]) ** 2).mean())
    assert mse < 0.03 * float(a.var(0).mean())
    dec2, _ = fit_decoder(z[:1500], a[:1500], updates=50, batch_size=256, lr=3e-3, seed=1)
    dec3, _ = fit_decoder(z[:1500], a[:1500], updates=50, batch_size=256, lr=3e-3, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(dec2.parameters(), dec3.parameters()))
    with pytest.raises(MasklamError):
        fit_decoder(z[:0], a[:0])


def test_bc_learns_readable_action_and_roundtrips(toy: Path, tmp_path: Path) -> None:
    m = train_bc(_cfg(toy, tmp_path / "bc", updates=150), progress=False)
    # constant predictor: MSE ~ 0.16 per dim; action 1 is a function of o_t, so BC must beat it clearly
    assert m["bc/heldout_mse"] < 0.12 and m["bc/updates"] == 150
    pol = ImagePolicy.from_pretrained(tmp_path / "bc")
    assert pol.env_meta["task"] == "toy-bright" and pol.env_meta["img_size"] == 16
    obs = np.random.default_rng(0).integers(0, 255, (5, 1, 16, 16, 3), dtype=np.uint8)
    act = pol.select_action(obs)
    assert act.shape == (5, 2) and np.abs(act).max() <= 1
    np.testing.assert_array_equal(load_policy(tmp_path / "bc").select_action(obs), act)


def test_bc_resume_matches_uninterrupted(toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        cut_sampling) -> None:
    train_bc(_cfg(toy, tmp_path / "full", updates=12, save_every=4), progress=False)
    with cut_sampling(7), pytest.raises(KeyboardInterrupt):
        train_bc(_cfg(toy, tmp_path / "cut", updates=12, save_every=4), progress=False)
    assert torch.load(tmp_path / "cut" / "resume" / "train_state.pt", weights_only=False)["step"] == 4
    train_bc(_cfg(toy, tmp_path / "cut", updates=12, save_every=4), progress=False)
    a, b = ImagePolicy.from_pretrained(tmp_path / "full"), ImagePolicy.from_pretrained(tmp_path / "cut")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    with monkeypatch.context() as m:  # killed after the last checkpoint, before the policy was saved
        m.setattr(ImagePolicy, "save_pretrained", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            train_bc(_cfg(toy, tmp_path / "late", updates=12, save_every=4), progress=False)
    late = train_bc(_cfg(toy, tmp_path / "late", updates=12, save_every=4), progress=False)  # no update left
    assert late["bc/train_mse"] == full["bc/train_mse"] > 0  # the last update's loss, kept with the state
    with pytest.raises(MasklamError, match="updates=12"):
        train_bc(_cfg(toy, tmp_path / "cut", updates=13), progress=False)
    # where it runs and how often it checkpoints may change; a resume directory without its config resumes
    train_bc(_cfg(toy, tmp_path / "cut", updates=12, save_every=3, device="cpu"), progress=False)
    (tmp_path / "cut" / "resume" / "config.json").unlink()
    train_bc(_cfg(toy, tmp_path / "cut", updates=12), progress=False)
    b = ImagePolicy.from_pretrained(tmp_path / "cut")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_corrupt_or_mismatched_policy_and_decoder_are_one_line_errors(toy: Path, tmp_path: Path) -> None:
    import json

    train_bc(_cfg(toy, tmp_path / "bc", updates=2), progress=False)
    cfg = json.loads((tmp_path / "bc" / "config.json").read_text())
    # a config.json of an older version (with the dropped target_mean / target_std) still loads
    (tmp_path / "bc" / "config.json").write_text(json.dumps({**cfg, "target_mean": None, "target_std": None}))
    ImagePolicy.from_pretrained(tmp_path / "bc")
    (tmp_path / "bc" / "config.json").write_text(json.dumps({**cfg, "hidden": 64}))  # wrong architecture
    with pytest.raises(MasklamError, match="cannot load the policy") as e:
        ImagePolicy.from_pretrained(tmp_path / "bc")
    assert "\n" not in str(e.value)
    (tmp_path / "bc" / "config.json").write_text(json.dumps({"hidden": 64}))  # not a policy config
    with pytest.raises(MasklamError, match="bad config.json"):
        ImagePolicy.from_pretrained(tmp_path / "bc")
    (tmp_path / "bc" / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "bc" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(MasklamError, match="cannot load the policy") as e:
        load_policy(tmp_path / "bc")
    assert "\n" not in str(e.value)
    ActionDecoder(4, 2, hidden=8).save_pretrained(tmp_path / "dec")
    (tmp_path / "dec" / "config.json").write_text(json.dumps({"latent_dim": 4, "action_dim": 2, "hidden": 8,
                                                              "layers": 2, "input": "latent", "bogus": 1}))
    with pytest.raises(MasklamError, match="bad config.json"):
        ActionDecoder.from_pretrained(tmp_path / "dec")
    (tmp_path / "dec" / "config.json").write_text(json.dumps({"latent_dim": 4, "action_dim": 3, "hidden": 8}))
    with pytest.raises(MasklamError, match="cannot load the decoder"):
        ActionDecoder.from_pretrained(tmp_path / "dec")
    (tmp_path / "dec" / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(MasklamError, match="decoder"):
        ActionDecoder.from_pretrained(tmp_path / "dec")


def test_latent_bc_targets_and_decoder(toy: Path, tmp_path: Path, capsys) -> None:
    from masklam.models import LAMConfig, build_lam

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        lam = build_lam(LAMConfig(method="lapo", action_dim=2, state_dim=3, img_hw=16, latent_dim=4))
    lam.save_pretrained(tmp_path / "lam")
    cfg = _cfg(toy, tmp_path / "pol", target="latent", lam=tmp_path / "lam", updates=5)
    fn, dim, frames = make_target_fn(cfg.target, "cpu", lam=cfg.lam)
    from masklam.data import WindowSampler, load_dataset

    b = WindowSampler(load_dataset([toy]), [0], frame_stack=1).sample(4, np.random.default_rng(0))
    with torch.no_grad():
        expect = lam.eval().latent(b["obs_t"], b["obs_t1"])
    assert dim == 4 and frames == 1 and torch.allclose(fn(b), expect)
    train_bc(cfg, progress=False)
    with pytest.raises(MasklamError, match="decoder"):
        load_policy(tmp_path / "pol")
    m = train_decoder(DecodeConfig(policy=tmp_path / "pol", data=(toy,), out=tmp_path / "dec", labels=2, updates=20,
                                   heldout=0.2), progress=False)
    assert m["decode/labeled_transitions"] == 2 * 19 and np.isfinite(m["decode/heldout_mse"])
    # the held-out error, recomputed: every transition of the held-out trajectories, policy latent -> decoder
    from masklam.data import split_trajectories
    from masklam.downstream.decoder import ActionDecoder
    from masklam.downstream.policy import ImagePolicy

    data = load_dataset([toy])
    held = split_trajectories(data.num_trajectories, 0.2, seed=0)[1]
    policy = ImagePolicy.from_pretrained(tmp_path / "pol", "cpu").eval()
    decoder = ActionDecoder.from_pretrained(tmp_path / "dec", "cpu").eval()
    rows = np.concatenate([np.arange(data.traj_starts[i], data.traj_starts[i] + data.traj_lengths[i] - 1)
                           for i in held])  # o_t of every (o_t, a_t, o_t+1) in the held-out trajectories
    with torch.no_grad():
        pred = decoder(policy.predict(data.obs[rows][:, None])).clamp(-1, 1)
    actions = torch.from_numpy(data.actions[rows])
    mse = float(((pred - actions) ** 2).mean())
    assert len(held) and m["decode/heldout_mse"] == pytest.approx(mse, rel=1e-5)
    assert m["decode/heldout_nmse"] == pytest.approx(mse / float(actions.var(0).mean()), rel=1e-5)
    assert json.loads((tmp_path / "dec" / "metrics.json").read_text()) == pytest.approx(m)
    agent = load_policy(tmp_path / "pol", tmp_path / "dec")
    assert isinstance(agent, LatentAgent) and agent.frame_stack == 1
    act = agent.select_action(b["obs_t"])
    assert act.shape == (4, 2) and np.abs(act).max() <= 1
    train_decoder(DecodeConfig(lam=tmp_path / "lam", data=(toy,), out=tmp_path / "lam_dec", labels=2, updates=2,
                               heldout=0.2), progress=False)  # over the LAM's raw latents (for `masklam label`)
    with pytest.raises(MasklamError, match="trained on the latents of .* not on a latent policy's"):
        load_policy(tmp_path / "pol", tmp_path / "lam_dec")  # same width, other units: refused
    assert "--split-seed" not in capsys.readouterr().err  # the same split as the policy's: nothing to say
    train_decoder(DecodeConfig(policy=tmp_path / "pol", data=(toy,), out=tmp_path / "dec2", labels=2, updates=2),
                  progress=False)  # --heldout 0.1 where the policy held out 0.2
    assert (f"the policy {tmp_path / 'pol'} was trained with --heldout 0.2 --split-seed 0, the decoder holds out "
            "--heldout 0.1 --split-seed 0: its held-out error reads trajectories whose frames the policy trained on"
            ) in capsys.readouterr().err
    import shutil

    shutil.copy(toy, tmp_path / "labelled.h5")  # the same frames in a labelled set of its own: not the policy's data
    train_decoder(DecodeConfig(policy=tmp_path / "pol", data=(tmp_path / "labelled.h5",), out=tmp_path / "dec3",
                               labels=2, updates=2), progress=False)
    assert "--split-seed" not in capsys.readouterr().err


def test_latent_bc_standardises_targets(toy: Path, tmp_path: Path) -> None:
    """Latent BC regresses (z - mean) / std: a LAM with 100x smaller latents gives the same policy."""
    from masklam.downstream.targets import latent_stats
    from masklam.data import WindowSampler, load_dataset

    sampler = WindowSampler(load_dataset([toy]), None, frame_stack=1)
    fn = lambda b: torch.from_numpy(np.asarray(b["action_t"], np.float32)) * 3.0 + 1.0  # noqa: E731
    mean, std = latent_stats(fn, sampler, np.random.default_rng(0), windows=512, batch_size=128)
    z = fn(sampler.sample(4096, np.random.default_rng(1)))
    assert torch.allclose(mean, z.mean(0), atol=0.15) and torch.allclose(std, z.std(0), rtol=0.1)

    from masklam.models import LAMConfig, build_lam

    policies = {}
    for name, scale in (("big", 1.0), ("tiny", 0.01)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            lam = build_lam(LAMConfig(method="lapo", action_dim=2, state_dim=3, img_hw=16, latent_dim=4))
        with torch.no_grad():  # scale the IDM's output layer: latents `scale` times as large
            lam.idm_head.weight.mul_(scale)
            lam.idm_head.bias.mul_(scale)
        lam.save_pretrained(tmp_path / f"lam_{name}")
        # fp32: the two runs must match to rounding, which bf16 autocast (where native) would exceed
        train_bc(_cfg(toy, tmp_path / name, target="latent", lam=tmp_path / f"lam_{name}", updates=5, bf16=False),
                 progress=False)
        policies[name] = ImagePolicy.from_pretrained(tmp_path / name)
    big, tiny = policies["big"], policies["tiny"]
    assert all(torch.allclose(p, q, atol=1e-4) for p, q in zip(big.parameters(), tiny.parameters()))
    train_bc(_cfg(toy, tmp_path / "raw", target="latent", lam=tmp_path / "lam_tiny", updates=5, standardize=False,
                  bf16=False), progress=False)
    raw = ImagePolicy.from_pretrained(tmp_path / "raw")  # without standardisation the tiny LAM's policy differs
    assert not all(torch.allclose(p, q, atol=1e-4) for p, q in zip(big.parameters(), raw.parameters()))


def test_idm_relabels(toy: Path, tmp_path: Path, write_toy) -> None:
    """BC on IDM relabels regresses the IDM's clipped output: an IDM that always says (2, -0.3) relabels every
    window (1, -0.3), and the policy trained on the relabels learns that action, not the true ones."""
    train_bc(_cfg(toy, tmp_path / "idm", pair_input=True, labels=2, updates=5), progress=False)
    idm = ImagePolicy.from_pretrained(tmp_path / "idm")
    assert idm.cfg.pair_input and idm.cfg.out_dim == 2
    with pytest.raises(MasklamError):
        idm.select_action(np.zeros((1, 1, 16, 16, 3), np.uint8))
    with torch.no_grad():  # a constant IDM: its relabels are known without running any of the code under test
        idm.head[-1].weight.zero_()
        idm.head[-1].bias.copy_(torch.tensor([2.0, -0.3]))
    idm.save_pretrained(tmp_path / "const_idm")
    cfg = _cfg(toy, tmp_path / "bc_idm", target="idm", idm=tmp_path / "const_idm", updates=150, lr=3e-3)
    fn, dim, _ = make_target_fn(cfg.target, "cpu", idm=cfg.idm)
    rng = np.random.default_rng(0)
    b = {"obs_t": rng.integers(0, 255, (3, 1, 16, 16, 3), dtype=np.uint8),
         "obs_t1": rng.integers(0, 255, (3, 1, 16, 16, 3), dtype=np.uint8)}
    assert dim == 2 and torch.allclose(fn(b), torch.tensor([[1.0, -0.3]] * 3))  # clipped to [-1, 1]
    m = train_bc(cfg, progress=False)
    assert m["bc/heldout_mse"] < 0.01  # measured against the relabels
    pol = ImagePolicy.from_pretrained(tmp_path / "bc_idm")
    assert pol.cfg.target == "action" and not pol.cfg.pair_input
    from masklam.data import WindowSampler, load_dataset

    frames = WindowSampler(load_dataset([toy]), None, frame_stack=1).sample(16, np.random.default_rng(1))["obs_t"]
    np.testing.assert_allclose(pol.select_action(frames), [[1.0, -0.3]] * 16, atol=0.1)
    with pytest.raises(MasklamError, match="not an inverse dynamics model"):
        make_target_fn("idm", "cpu", idm=tmp_path / "bc_idm")
    big = write_toy(tmp_path / "big.h5", hw=32)  # frames the 16x16 IDM cannot read: one line, before work
    with pytest.raises(MasklamError, match="reads 16x16 frames, .*big.h5 has 32x32"):
        train_bc(_cfg(big, tmp_path / "bc_big", target="idm", idm=tmp_path / "const_idm"), progress=False)


def test_bad_config(toy: Path, tmp_path: Path) -> None:
    from masklam.downstream.experiment_config import ExperimentConfig
    from masklam.downstream.stages import EvalOptions

    with pytest.raises(MasklamError, match="--lam"):
        BCConfig(data=(toy,), out=tmp_path, target="latent")
    for make, message in ((lambda: _cfg(toy, tmp_path, seed=-1), "seed must lie in"),
                          (lambda: _cfg(toy, tmp_path, split_seed=2 ** 32), "split_seed must lie in"),
                          (lambda: DecodeConfig(data=(toy,), out=tmp_path, policy=tmp_path, split_seed=-1),
                           "split_seed must lie in"),
                          (lambda: EvalOptions(seed=-1), "seed must lie in"),  # before any stage trains
                          (lambda: ExperimentConfig(out=tmp_path, tasks=["t"], methods=["lapo"], seeds=[0, -1],
                                                    data={"t": {"train": [str(toy)]}}), r"seeds\[1\] must lie in")):
        with pytest.raises(MasklamError, match=message):
            make()
    with pytest.raises(MasklamError, match="labeled"):
        train_bc(_cfg(toy, tmp_path / "x", labels=50), progress=False)
    with pytest.raises(MasklamError, match="not a policy"):
        ImagePolicy.from_pretrained(tmp_path)
    assert bc_mod.main(["--data", str(toy), "--out", str(tmp_path / "cli"), "--target", "action", "--updates", "2",
                        "--frame-stack", "1", "--batch-size", "8"]) == 0


def test_the_decoder_is_both_papers_three_layer_mlp_by_default(tmp_path):
    from masklam.downstream.plan import plan_stages
    from masklam.downstream.stages import decode_stage

    def linears(dec: ActionDecoder) -> int:
        return sum(isinstance(m, torch.nn.Linear) for m in dec.modules())

    # LAOM's code: Linear, ReLU6, Linear, ReLU6, Linear (its "two-layer MLP with 256 hidden"); MaskLAM: 3-layer MLP
    assert linears(ActionDecoder(4, 2)) == 3 and DecodeConfig(data=("d.h5",), out=tmp_path, policy=tmp_path).layers == 3
    ActionDecoder(4, 2, hidden=8, layers=2).save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    del config["layers"]  # a decoder written when 2 was the only depth
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    assert linears(ActionDecoder.from_pretrained(tmp_path / "old")) == 2
    conf = {"policy": "p", "data": ["d.h5"], "labels": 4}
    with plan_stages() as plan:  # the depth is in the stage's key where the default gives it
        for layers in ({}, {"layers": 3}, {"layers": 2}):
            decode_stage(tmp_path, {**conf, **layers}, "cpu", False)
    assert [s.config["layers"] for s in plan.stages] == [3, 2]  # the default's and layers 3's: one stage


def test_decode_notes_a_split_over_data_the_lam_trained_on_in_part(tmp_path: Path, capsys) -> None:
    """The split is a function of the data list: a decoder over part of a LAM's data (or the same files in another
    order) holds out trajectories the LAM trained on, whatever --heldout and --split-seed; no advice then."""
    from masklam.downstream.decode import note_split

    a, b = str(tmp_path / "a.h5"), str(tmp_path / "b.h5")
    lam = tmp_path / "lam"
    lam.mkdir()
    cfg = DecodeConfig(lam=lam, data=(Path(a),), out=tmp_path / "d", labels=1)
    note_split(cfg, {"heldout": 0.1, "split_seed": 0, "data": [a, b]}, "the LAM", lam)
    err = capsys.readouterr().err
    assert f"was trained on {a}, {b}, in part the decoder's data" in err and "to hold out the same" not in err
    for other in ("same", "labelled"):  # each its own run: a note is said once per run
        (tmp_path / other).mkdir()
    note_split(cfg, {"heldout": 0.1, "split_seed": 0, "data": [a]}, "the LAM", tmp_path / "same")  # the same split
    note_split(cfg, {"heldout": 0.3, "split_seed": 0, "data": [b]}, "the LAM", tmp_path / "labelled")  # other data
    note_split(cfg, {"heldout": 0.3, "split_seed": 0, "data": [a]}, "the LAM", "user/lam")  # a Hub LAM: unknown
    assert "note:" not in capsys.readouterr().err
