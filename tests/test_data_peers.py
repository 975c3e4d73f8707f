"""The papers' own data layouts, written tiny here (the real data cannot be downloaded): MaskLAM's parquet
datasets and LAOM's HDF5 files, read by `load_dataset` and trained on by `masklam pretrain`."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from masklam.data import load_dataset
from masklam.errors import MasklamError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
Image = pytest.importorskip("PIL.Image")

H = 16


def episodes(lengths: list[int], seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Random episodes: clean and distracted frames, simulator and SAM masks, states, actions, rewards."""
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        clean = rng.integers(0, 255, (n, H, H, 3), dtype=np.uint8)
        mask = rng.random((n, H, H)) < 0.2
        out.append(dict(observation=clean, observation_distracted=255 - clean, mask=mask,
                        pred_mask=rng.random((n, H, H)) < 0.3, pred_mask_distracted=rng.random((n, H, H)) < 0.4,
                        state=rng.normal(size=(n, 5)).astype(np.float32),
                        action=rng.uniform(-1, 1, (n, 3)).astype(np.float32),
                        reward=rng.random(n).astype(np.float32)))
    return out


def png(img: np.ndarray) -> dict[str, object]:
    """A Hugging Face `Image` cell: {bytes: PNG, path: None} (masks as 0/255 'L' images, like MaskLAM's)."""
    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8) * 255 if img.dtype == bool else img).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def table(eps: list[dict[str, np.ndarray]], nested: bool = False, ends: str = "both") -> pa.Table:
    """MaskLAM's columns, one row per frame; an episode ends at terminated (even ones) or truncated (odd ones)."""
    cols: dict[str, list] = {}
    for i, ep in enumerate(eps):
        n = len(ep["action"])
        for key, value in ep.items():
            if value.ndim >= 3:  # images
                cells = [v.astype(np.uint8).tolist() if nested else png(v) for v in value]
            else:
                cells = value.tolist()
            cols.setdefault(key, []).extend(cells)
        last = np.arange(n) == n - 1
        term = last & (i % 2 == 0 or ends == "terminated")
        cols.setdefault("terminated", []).extend(term.tolist())
        cols.setdefault("truncated", []).extend((last & ~term).tolist())
    return pa.table(cols)


def check_loaded(data, eps: list[dict[str, np.ndarray]], obs: str = "observation_distracted",
                 mask: str | None = "mask") -> None:
    assert data.num_trajectories == len(eps)
    for i, ep in enumerate(eps):
        traj = data.trajectory(i)
        assert np.array_equal(traj["obs"], ep[obs])
        assert np.array_equal(traj["actions"], ep["action"]) and np.array_equal(traj["states"], ep["state"])
        assert np.array_equal(traj["rewards"], ep["reward"])
        if mask:
            assert traj["masks"].dtype == bool and np.array_equal(traj["masks"], ep[mask])
    assert data.traj_returns == pytest.approx([ep["reward"].astype(np.float64).sum() for ep in eps], rel=1e-5)


def test_masklam_parquet_file_yields_episodes_frames_actions_and_either_mask(tmp_path: Path) -> None:
    eps = episodes([5, 3, 4])
    path = tmp_path / "tiny.parquet"
    pq.write_table(table(eps), path)
    check_loaded(load_dataset(path, mask_key="masks", progress=False), eps)
    check_loaded(load_dataset(path, mask_key="sam2_masks", progress=False), eps, mask="pred_mask_distracted")
    check_loaded(load_dataset(path, mask_key="sam2_masks", progress=False, observations="clean"), eps,
                 obs="observation", mask="pred_mask")
    data = load_dataset(path, mask_key="masks_student", traj_ids=[2], progress=False)
    assert data.masks is None and data.num_frames == 4 and np.array_equal(data.obs, eps[2]["observation_distracted"])
    with pytest.raises(MasklamError, match="has no 'masks_student'"):
        data.require_masks()
    from masklam.data.info import summarize

    info = summarize(path)  # `masklam info tiny.parquet`
    assert (info["trajectories"], info["steps"], info["img_hw"], info["masks"]) == (3, 12, (H, H), ["masks", "sam2_masks"])
    assert info["bytes"] == path.stat().st_size and info["attrs"]["format"] == "masklam-parquet"


def test_shards_of_a_directory_form_one_table_and_nested_list_images_read_too(tmp_path: Path) -> None:
    eps = episodes([4, 6, 2], seed=1)
    t = table(eps, nested=True)
    (tmp_path / "task").mkdir()
    pq.write_table(t.slice(0, 7), tmp_path / "task" / "train-00000-of-00002.parquet")  # episode 1 straddles them
    pq.write_table(t.slice(7), tmp_path / "task" / "train-00001-of-00002.parquet")
    check_loaded(load_dataset(tmp_path / "task", mask_key="masks", progress=False), eps)
    # rows after the last terminal flag: a last, unfinished episode; a parquet file is known by its content
    unfinished = table(eps).slice(0, 8)
    pq.write_table(unfinished, tmp_path / "data.bin")
    data = load_dataset(tmp_path / "data.bin", progress=False)
    assert data.traj_lengths.tolist() == [4, 4]


def test_bad_parquet_data_are_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    eps = episodes([3, 3])
    good = table(eps)

    def error(t: pa.Table, match: str, **kw) -> None:
        pq.write_table(t, tmp_path / "bad.parquet")
        with pytest.raises(MasklamError, match=match) as e:
            load_dataset(tmp_path / "bad.parquet", progress=False, **kw)
        assert "\n" not in str(e.value)

    actions = good.column("action").to_pylist()
    actions[4][1] = float("nan")
    error(good.set_column(good.schema.get_field_index("action"), "action", [actions]),
          r"trajectory 1: actions holds nan at frame 1")
    states = good.column("state").to_pylist()
    states[2] = states[2][:4]
    error(good.set_column(good.schema.get_field_index("state"), "state", [states]), "state has 4 values at row 2")
    error(good.drop_columns(["action"]), "lacks the column 'action'")
    error(good.drop_columns(["observation_distracted"]), "no 'observation_distracted' column.*observations=clean")
    error(good.drop_columns(["terminated", "truncated"]), "neither a 'terminated' nor a 'truncated'")
    big = good.column("observation").to_pylist()
    big[4] = png(np.zeros((H, H + 2, 3), np.uint8))
    error(good.set_column(good.schema.get_field_index("observation"), "observation", [big]),
          "trajectory 1: observation has a 16x18 image at frame 1", observations="clean")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MasklamError, match="no .h5 or .parquet files"):
        load_dataset(tmp_path / "empty")
    # without pyarrow: how to install it
    pq.write_table(good, tmp_path / "good.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MasklamError, match=r"needs pyarrow: pip install 'masklam\[papers\]'"):
        load_dataset(tmp_path / "good.parquet")


def write_laom_file(path: Path, n: int = 6, length: int = 10) -> list[dict[str, np.ndarray]]:
    """LAOM's published layout: its attrs, obs/states/actions only (contiguous, uncompressed), traj_return."""
    rng = np.random.default_rng(2)
    trajs = []
    with h5py.File(path, "w") as f:
        f.attrs.update(domain_name="cheetah", task_name="run", difficulty="easy", dynamic=True, img_hw=H,
                       split="train", dataset_return=1.5)
        for i in range(n):
            t = dict(obs=rng.integers(0, 255, (length, H, H, 3), dtype=np.uint8),
                     states=rng.normal(size=(length, 17)).astype(np.float32),
                     actions=rng.normal(0, 1.2, (length, 6)).astype(np.float32))  # LAOM stored unclipped actions
            g = f.create_group(str(i))
            for k, v in t.items():
                g.create_dataset(k, data=v)
            g.attrs["traj_return"] = 1.5
            trajs.append(t)
    return trajs


def test_laom_hdf5_file_loads_as_it_is(tmp_path: Path) -> None:
    trajs = write_laom_file(tmp_path / "laom.hdf5")
    data = load_dataset(tmp_path / "laom.hdf5", mask_key="masks", progress=False)
    assert data.num_trajectories == 6 and data.rewards is None and data.masks is None
    assert np.array_equal(data.trajectory(3)["obs"], trajs[3]["obs"])
    assert np.array_equal(data.trajectory(3)["actions"], trajs[3]["actions"])
    assert data.meta["difficulty"] == "easy" and data.traj_returns.tolist() == [1.5] * 6
    with pytest.raises(MasklamError, match="has no 'masks'"):
        data.require_masks()  # MaskLAM needs masks that LAOM's files lack
    with pytest.raises(MasklamError, match="observations='clean'"):
        load_dataset(tmp_path / "laom.hdf5", observations="clean")


def test_pretrain_runs_on_the_papers_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import torch

    from masklam import cli

    torch.set_num_threads(1)
    pq.write_table(table(episodes([12] * 6)), tmp_path / "tiny.parquet")
    write_laom_file(tmp_path / "laom.hdf5", length=12)
    small = ["--updates", "2", "--batch-size", "4", "--latent-dim", "8", "--encoder-scale", "1", "--log-every", "1",
             "--probe-batch-size", "16", "--no-tensorboard", "--no-progress", "--heldout", "0.2"]
    runs = {"masklam-sam": ["--data", str(tmp_path / "tiny.parquet"), "--method", "masklam", "--mask-key",
                            "sam2_masks", "--recon-samples", "0"],
            "lapo-clean": ["--data", str(tmp_path / "tiny.parquet"), "--method", "lapo", "--observations", "clean",
                           "--recon-samples", "0"],
            "laom": ["--data", str(tmp_path / "laom.hdf5"), "--method", "laom", "--head-dim", "16",
                     "--head-blocks", "1"]}
    for name, args in runs.items():
        assert cli.main(["pretrain", *args, *small, "--out", str(tmp_path / name)]) == 0
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert np.isfinite(metrics["probe_nmse"]) and np.isfinite(metrics["train/loss"])
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert config["total_steps"] == 2 and len(config["heldout_trajectories"]) == 1
    assert json.loads((tmp_path / "lapo-clean" / "config.json").read_text())["observations"] == "clean"
    assert "observations" not in json.loads((tmp_path / "masklam-sam" / "config.json").read_text())
