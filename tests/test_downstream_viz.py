"""`masklam viz`: the 2-D projection of latents, latent-action transfer, FSQ code usage, on a tiny file and LAMs."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from masklam.cli import main as cli_main
from masklam.downstream import viz
from masklam.models import LAMConfig, build_lam
from masklam.models.lam import load_lam

torch.set_num_threads(1)


def tiny_file(path: Path, trajs: int = 4, length: int = 6, actions: bool = True) -> Path:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.attrs.update(domain_name="cheetah", task_name="run", version=1)  # ours: actions as stored
        for i in range(trajs):
            g = f.create_group(str(i))
            g.create_dataset("obs", data=rng.integers(0, 256, (length, 16, 16, 3), dtype=np.uint8))
            g.create_dataset("states", data=rng.normal(size=(length, 3)).astype(np.float32))
            act = rng.normal(size=(length, 2)) if actions else np.zeros((length, 2))
            g.create_dataset("actions", data=act.astype(np.float32))
    return path


def tiny_lam(tmp_path: Path, method: str, data: Path, **kw) -> Path:
    torch.manual_seed(0)
    lam = build_lam(LAMConfig(method=method, action_dim=2, state_dim=3, img_hw=16, latent_dim=4, head_dim=16,
                              head_blocks=1, **kw))
    lam.save_pretrained(tmp_path / method, {"data": [str(data)]})
    return tmp_path / method


def quantizer_inputs(lam, data: Path) -> torch.Tensor:
    """What the LAM's FSQ quantiser receives for every transition (o_t, o_t+1) of the file: (N, latent_dim)."""
    inputs = []
    hook = lam.quantizer.register_forward_hook(lambda m, inp, out: inputs.append(inp[0]))
    with h5py.File(data) as f, torch.no_grad():
        for name in f:
            obs = f[name]["obs"][()]
            lam.latent(obs[:-1, None], obs[1:, None])
    hook.remove()
    return torch.cat(inputs)


def test_pixel_lam_with_fsq_writes_every_view(tmp_path, capsys):
    data = tiny_file(tmp_path / "d.h5")
    run = tiny_lam(tmp_path, "lapo", data, fsq_levels=(3, 2))
    lam = load_lam(run, "cpu").eval()
    z = quantizer_inputs(lam, data)  # an untrained LAM's latents all fall on one code: centre and spread them
    with torch.no_grad():
        lam.quantizer.proj_in.weight.div_((z - z.mean(0)).std() * 0.3)
        lam.quantizer.proj_in.bias.copy_(-lam.quantizer.proj_in.weight @ z.mean(0))
    lam.save_pretrained(run, {"data": [str(data)]})
    assert cli_main(["viz", "--lam", str(run), "--device", "cpu"]) == 0
    out = run / "viz"
    summary = json.loads((out / "viz.json").read_text())
    assert summary["transitions"] == 4 * 5 and summary["trajectories"] == 4
    assert summary["config"]["seed"] == 0 and summary["config"]["max_trajs"] == 20  # how it ran
    assert summary["coloured_by"] == ["true action dim 0", "true action dim 1"]
    assert set(summary["figures"]) >= {"latents", "transfer", "codes"}
    for name in summary["figures"].values():
        assert (out / name).stat().st_size > 1000
    fsq = summary["fsq"]  # against the FSQ codes of all 20 transitions (o_t, o_t+1), counted here as code tuples
    lam = load_lam(run, "cpu").eval()
    with torch.no_grad():
        codes = list(map(tuple, lam.quantizer.codes(quantizer_inputs(lam, data)).tolist()))
    counts = np.array(list(Counter(codes).values()), np.float64)
    p = counts / counts.sum()
    assert len(codes) == 20 and fsq["codes"] == 6 and fsq["used"] == len(counts) >= 3
    assert fsq["perplexity"] == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    assert "codes used, perplexity" in capsys.readouterr().out


def test_laom_has_no_transfer_grid_and_says_why(tmp_path, capsys):
    data = tiny_file(tmp_path / "d.h5", actions=False)
    run = tiny_lam(tmp_path, "laom", data)
    assert cli_main(["viz", "--lam", str(run), "--data", str(data), "--out", str(tmp_path / "v"),
                     "--device", "cpu"]) == 0
    summary = json.loads((tmp_path / "v" / "viz.json").read_text())
    assert "transfer" not in summary["figures"] and "no pixel decoder" in summary["transfer"]
    assert summary["coloured_by"] == ["episode", "time step"]  # no varying actions
    assert "fsq" not in summary and "no pixel decoder" in capsys.readouterr().out


def test_pca_code_indices_and_code_stats():
    rng = np.random.default_rng(0)
    line = np.outer(rng.normal(size=50), [1.0, 2.0, -1.0]) + 1e-3 * rng.normal(size=(50, 3))
    proj, ratio = viz.pca_2d(line)
    assert proj.shape == (50, 2) and ratio[0] > 0.999
    assert np.allclose(np.abs(np.corrcoef(proj[:, 0], line[:, 0])[0, 1]), 1.0, atol=1e-4)
    levels = torch.tensor([3.0, 4.0])
    # level 3: values -1, 0, 1 -> digits 0, 1, 2; level 4: values -1, -0.5, 0, 0.5 -> digits 0..3 (radix 3)
    codes = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [0.0, 0.5], [1.0, 0.5]])
    assert viz.code_indices(codes, levels).tolist() == [0, 2, 1 + 3 * 3, 2 + 3 * 3]
    assert viz.code_stats(np.array([0, 1, 2, 3]), 12) == {"codes": 12, "used": 4, "usage": 4 / 12,
                                                          "perplexity": pytest.approx(4.0)}
    assert viz.code_stats(np.zeros(9, np.int64), 12)["perplexity"] == pytest.approx(1.0)


def test_bad_options_are_one_line(tmp_path, capsys):
    assert cli_main(["viz", "--lam", str(tmp_path), "--max-trajs", "1"]) == 2
    assert "--max-trajs must be >= 2" in capsys.readouterr().err
    assert cli_main(["viz", "--lam", str(tmp_path / "none"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "latent action model" in err


def test_data_that_do_not_fit_the_lam_and_broken_weights_are_one_line(tmp_path, capsys):
    """Frames of another size are refused before any work (as `masklam probe` refuses them); a LAM whose weights
    are NaN gives latents it cannot project: one line, not an SVD failure; a negative seed is one line."""
    from safetensors.torch import load_file, save_file

    data = tiny_file(tmp_path / "d.h5")
    run = tiny_lam(tmp_path, "lapo", data)
    with h5py.File(tmp_path / "big.h5", "w") as f:
        f.attrs.update(domain_name="cheetah", task_name="run", version=1)
        for i in range(2):
            f[f"{i}/obs"] = np.zeros((4, 32, 32, 3), np.uint8)
            f[f"{i}/states"], f[f"{i}/actions"] = np.zeros((4, 3), np.float32), np.zeros((4, 2), np.float32)
    assert cli_main(["viz", "--lam", str(run), "--data", str(tmp_path / "big.h5"), "--device", "cpu",
                     "--out", str(tmp_path / "v1")]) == 2
    assert "trained on 16x16 frames" in capsys.readouterr().err and not (tmp_path / "v1").exists()
    weights = load_file(str(run / "model.safetensors"))
    save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in weights.items()},
              str(run / "model.safetensors"))
    assert cli_main(["viz", "--lam", str(run), "--device", "cpu", "--out", str(tmp_path / "v2")]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("masklam")]  # past the bar
    assert len(err) == 1 and "latents of" in err[0] and "not finite" in err[0] and not (tmp_path / "v2").exists()
    assert cli_main(["viz", "--lam", str(run), "--seed", "-1"]) == 2
    assert "seed must lie in" in capsys.readouterr().err
