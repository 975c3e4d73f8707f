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
    """MaskLAM's columns, one row per frame; an episode ends at terminated (even ones) or truncated (odd ones).
    ends="terminated": a `terminated` column only, set at each episode's end; "none": `terminated` only, never
    set (DMC's time-limit episodes in DCS data)."""
    cols: dict[str, list] = {}
    for i, ep in enumerate(eps):
        n = len(ep["action"])
        for key, value in ep.items():
            if value.ndim >= 3:  # images
                cells = [v.astype(np.uint8).tolist() if nested else png(v) for v in value]
            else:
                cells = value.tolist()
            cols.setdefault(key, []).extend(cells)
        last = (np.arange(n) == n - 1) & (ends != "none")
        term = last & (i % 2 == 0 or ends != "both")
        cols.setdefault("terminated", []).extend(term.tolist())
        if ends == "both":
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
    assert (info["trajectories"], info["steps"], info["img_hw"],
            info["masks"]) == (3, 12, (H, H), ["masks", "sam2_masks"])
    assert info["bytes"] == path.stat().st_size and info["attrs"]["format"] == "masklam-parquet"


def test_shards_of_a_directory_form_one_table_and_nested_list_images_read_too(tmp_path: Path) -> None:
    eps = episodes([4, 6, 2], seed=1)
    t = table(eps, nested=True)
    (tmp_path / "task").mkdir()
    pq.write_table(t.slice(0, 7), tmp_path / "task" / "train-00000-of-00002.parquet")  # episode 1 straddles them
    pq.write_table(t.slice(7), tmp_path / "task" / "train-00001-of-00002.parquet")
    check_loaded(load_dataset(tmp_path / "task", mask_key="masks", progress=False), eps)
    (tmp_path / "task" / "train-00001-of-00002.parquet").rename(tmp_path / "shard1")  # an interrupted download
    for where in (tmp_path / "task", tmp_path / "task" / "train"):
        with pytest.raises(MasklamError, match=r"shards missing \(1 of 2\)"):
            load_dataset(where, progress=False)
    (tmp_path / "shard1").rename(tmp_path / "task" / "train-00001-of-00002.parquet")
    # rows after the last terminal flag: a last, unfinished episode; a parquet file is known by its content
    unfinished = table(eps).slice(0, 8)
    pq.write_table(unfinished, tmp_path / "data.bin")
    data = load_dataset(tmp_path / "data.bin", progress=False)
    assert data.traj_lengths.tolist() == [4, 4]


def test_the_memory_check_counts_the_parquet_shards_the_reader_holds(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from masklam.data import dataset

    pq.write_table(table(episodes([4, 6, 2], seed=1)), tmp_path / "d.parquet")
    asked = []
    monkeypatch.setattr(dataset, "check_memory", lambda need, what: asked.append(need))
    load_dataset(tmp_path / "d.parquet", traj_ids=[2], progress=False)  # 2 frames, from a file read whole
    assert asked[0] > (tmp_path / "d.parquet").stat().st_size


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
    with pytest.raises(MasklamError, match="no .h5, .hdf5 or .parquet files"):
        load_dataset(tmp_path / "empty")
    # without pyarrow: how to install it
    pq.write_table(good, tmp_path / "good.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MasklamError, match=r"needs pyarrow: pip install 'pyarrow>=14'"):
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


def test_laom_hdf5_file_loads_without_conversion(tmp_path: Path) -> None:
    trajs = write_laom_file(tmp_path / "laom.hdf5")
    data = load_dataset(tmp_path / "laom.hdf5", mask_key="masks", progress=False)
    assert data.num_trajectories == 6 and data.rewards is None and data.masks is None
    assert np.array_equal(data.trajectory(3)["obs"], trajs[3]["obs"])
    assert np.array_equal(data.trajectory(3)["actions"], np.clip(trajs[3]["actions"], -1, 1))  # as executed
    assert data.meta["difficulty"] == "easy" and data.traj_returns.tolist() == [1.5] * 6
    with pytest.raises(MasklamError, match="has no 'masks'"):
        data.require_masks()  # MaskLAM needs masks that LAOM's files lack
    with pytest.raises(MasklamError, match="observations='clean'"):
        load_dataset(tmp_path / "laom.hdf5", observations="clean")


def test_pretrain_runs_on_the_papers_data(tmp_path: Path, capsys: pytest.CaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from masklam import cli
    from masklam.data import peers

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
    # probing the clean run on an HDF5 file given with --data: the run's observations are the parquet file's
    assert cli.main(["probe", str(tmp_path / "lapo-clean"), "--data", str(tmp_path / "laom.hdf5"), "--no-write",
                     "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "masklam-sam" / "config.json").read_text())["observations"] == "distracted"
    # DCS parquet without episode flags: the run's --episode-length also reads the data `masklam probe` checks
    monkeypatch.setattr(peers, "MAX_EPISODE", 10)
    pq.write_table(table(episodes([12] * 6), ends="none"), tmp_path / "dcs.parquet")
    assert cli.main(["pretrain", "--data", str(tmp_path / "dcs.parquet"), "--method", "lapo", "--episode-length", "12",
                     "--recon-samples", "0", *small, "--out", str(tmp_path / "dcs")]) == 0
    assert cli.main(["probe", str(tmp_path / "dcs"), "--no-write", "--device", "cpu"]) == 0


def test_episodes_end_at_terminated_alone_or_every_episode_length_rows(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from masklam.data import peers
    from masklam.train.config import PretrainConfig

    eps = episodes([5, 5, 5], seed=3)
    pq.write_table(table(eps, ends="terminated"), tmp_path / "term.parquet")  # no truncated column
    check_loaded(load_dataset(tmp_path / "term.parquet", mask_key="masks", progress=False), eps)
    # DCS: `terminated` never set (time-limit episodes): episode_length cuts the rows
    pq.write_table(table(eps, ends="none"), tmp_path / "dcs.parquet")
    check_loaded(load_dataset(tmp_path / "dcs.parquet", mask_key="masks", progress=False, episode_length=5), eps)
    # cut at the flags too: 5 + 5 + 5 rows with a flag after row 4 and episode_length 3 -> 3, 2, 3, 2, 3, 2
    assert load_dataset(tmp_path / "term.parquet", progress=False, episode_length=3).traj_lengths.tolist() == \
        [3, 2] * 3
    # a table no longer than one plausible episode is one; a longer one without flags is an error, not one trajectory
    assert load_dataset(tmp_path / "dcs.parquet", progress=False).traj_lengths.tolist() == [15]
    monkeypatch.setattr(peers, "MAX_EPISODE", 10)
    with pytest.raises(MasklamError, match=r"no row sets 'terminated' or 'truncated' in 15 rows.*episode_length") as e:
        load_dataset(tmp_path / "dcs.parquet", progress=False)
    assert "\n" not in str(e.value)
    pq.write_table(table(eps, ends="none").drop_columns(["terminated"]), tmp_path / "noflags.parquet")
    assert load_dataset(tmp_path / "noflags.parquet", progress=False, episode_length=5).num_trajectories == 3
    # pretrain takes it (--episode-length) and records it
    assert PretrainConfig(method="lapo", data=[tmp_path], out=tmp_path,
                          episode_length=1000).to_dict()["episode_length"] == 1000
    assert PretrainConfig(method="lapo", data=[tmp_path], out=tmp_path).to_dict()["episode_length"] is None


def encoded(mask: np.ndarray, mode: str) -> dict[str, object]:
    """A mask image cell in PIL mode `mode`: 'P' (palette index 1 = agent, a dark palette colour), '1', 16-bit,
    'RGB' (white agent)."""
    im = Image.fromarray(mask.astype(np.uint8))
    if mode == "P":
        im.putpalette([0, 0, 0, 40, 0, 0] + [0] * 762)  # an "L" image with a palette: "P"; 1 -> dark red (gray ~12)
    elif mode == "1":
        im = Image.fromarray(mask.astype(bool))
    elif mode == "I":
        im = Image.fromarray(mask.astype(np.uint16))  # 16-bit PNG: read back as "I;16" or "I"
    elif mode == "RGB":
        im = Image.fromarray(np.repeat(mask.astype(np.uint8)[..., None] * 255, 3, axis=-1))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def test_palette_binary_integer_and_rgb_masks_read_as_agent_masks(tmp_path: Path) -> None:
    eps = episodes([3, 4], seed=4)
    good = table(eps)
    masks = np.concatenate([ep["mask"] for ep in eps])
    for mode in ("P", "1", "I", "RGB"):
        t = good.set_column(good.schema.get_field_index("mask"), "mask", [[encoded(m, mode) for m in masks]])
        pq.write_table(t, tmp_path / f"{mode}.parquet")
        data = load_dataset(tmp_path / f"{mode}.parquet", mask_key="masks", progress=False)
        assert np.array_equal(data.masks, masks), mode
    assert Image.open(io.BytesIO(encoded(masks[0], "P")["bytes"])).mode == "P"
    # a mask column with no agent pixel anywhere: one line, not silently empty masks
    t = good.set_column(good.schema.get_field_index("mask"), "mask", [[png(np.zeros((H, H), bool))] * len(masks)])
    pq.write_table(t, tmp_path / "empty.parquet")
    with pytest.raises(MasklamError, match="'mask' masks are empty"):
        load_dataset(tmp_path / "empty.parquet", mask_key="masks", progress=False)
    assert load_dataset(tmp_path / "empty.parquet", progress=False).num_trajectories == 2  # masks unused: fine


def test_a_directory_of_several_splits_needs_one_chosen(tmp_path: Path) -> None:
    train, test = episodes([4, 3], seed=5), episodes([2], seed=6)
    d = tmp_path / "task"
    d.mkdir()
    t = table(train)
    pq.write_table(t.slice(0, 5), d / "train-00000-of-00002.parquet")
    pq.write_table(t.slice(5), d / "train-00001-of-00002.parquet")
    pq.write_table(table(test), d / "test-00000-of-00001.parquet")
    with pytest.raises(MasklamError, match=r"holds the shards of several splits \(test, train\); give one") as e:
        load_dataset(d, progress=False)
    assert "\n" not in str(e.value)
    check_loaded(load_dataset(d / "train", mask_key="masks", progress=False), train)
    check_loaded(load_dataset(str(d / "train-*"), mask_key="masks", progress=False), train)
    check_loaded(load_dataset(d / "test", mask_key="masks", progress=False), test)
    with pytest.raises(MasklamError, match="no such file"):
        load_dataset(d / "validation", progress=False)
    other = tmp_path / "other"  # shards not named by split: one table, as before
    other.mkdir()
    pq.write_table(t.slice(0, 5), other / "a.parquet")
    pq.write_table(t.slice(5), other / "b.parquet")
    check_loaded(load_dataset(other, mask_key="masks", progress=False), train)


def test_stage_keys_fingerprint_a_shard_directory_by_its_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from masklam.downstream.cache import stage_key

    monkeypatch.chdir(tmp_path)
    Path("a.h5").write_bytes(b"x" * 10)
    os.utime("a.h5", ns=(1_700_000_000_000_000_000,) * 2)
    # a plain file's key: the literal computed before shard directories were fingerprinted (keys unchanged)
    # (pretraining's code version 3 was then added by the kind's name; the trainer passes it now)
    assert stage_key("pretrain", {"data": ["a.h5"], "x": 1}, version=3) == "d9ecdd393f84e888"
    assert stage_key("pretrain", {"data": "a.h5", "x": 1}, version=3) == "e6471d6097f29f5b"
    eps = episodes([3, 3])
    Path("task").mkdir()
    pq.write_table(table(eps), "task/train-00000-of-00001.parquet")
    key = stage_key("pretrain", {"data": ["task"]})
    assert stage_key("pretrain", {"data": ["task/train"]}) != key  # the split's shards, under another name
    split_key = stage_key("pretrain", {"data": ["task/train"]})
    pq.write_table(table(eps[:1]), "task/train-00000-of-00001.parquet")  # rewritten shards: new keys
    assert stage_key("pretrain", {"data": ["task"]}) != key
    assert stage_key("pretrain", {"data": ["task/train"]}) != split_key


def test_odd_column_types_are_one_line_errors(tmp_path: Path) -> None:
    good = table(episodes([3, 2]))
    n = good.num_rows

    def error(col: str, values: list, match: str) -> None:
        t = good.set_column(good.schema.get_field_index(col), col, [values])
        pq.write_table(t, tmp_path / "odd.parquet")
        with pytest.raises(MasklamError, match=match) as e:
            load_dataset(tmp_path / "odd.parquet", mask_key="masks", progress=False)
        assert "\n" not in str(e.value)

    error("terminated", ["no"] * n, "column 'terminated' must hold bool or integer flags, not string")
    error("reward", ["1"] * n, "column 'reward' must hold numbers, not string")
    error("action", [["a", "b", "c"]] * n, "column 'action' must hold lists of numbers")
    error("observation_distracted", [1] * n, "column 'observation_distracted' must hold images")
    error("mask", ["x"] * n, "column 'mask' must hold images")


def test_a_directory_of_laom_hdf5_files_loads(tmp_path: Path) -> None:
    (tmp_path / "laom").mkdir()
    trajs = write_laom_file(tmp_path / "laom" / "cheetah.hdf5", n=2, length=4)
    data = load_dataset(tmp_path / "laom", progress=False)
    assert data.num_trajectories == 2 and np.array_equal(data.trajectory(1)["obs"], trajs[1]["obs"])


def test_parquet_data_record_no_task_and_are_no_clean_experiment_data(tmp_path: Path) -> None:
    from masklam.downstream.evaluate import env_spec
    from masklam.downstream.experiment import ExperimentConfig
    from masklam.downstream.targets import env_meta_of

    pq.write_table(table(episodes([3, 3])), tmp_path / "tiny.parquet")
    meta = load_dataset(tmp_path / "tiny.parquet", progress=False).meta
    env = env_meta_of(dict(meta), {})
    assert "task" not in env and env["img_size"] == H  # not "None-None"
    with pytest.raises(MasklamError, match="no task recorded with the policy.*pass --task"):
        env_spec(env, "id")
    assert env_spec(env, "id", task="cheetah-run").task == "cheetah-run"
    # BC and decoding read a parquet file's distracted frames: under `clean` it would train the upper bound on them
    base = dict(out=tmp_path, tasks=["cheetah-run"], methods=["lapo-clean"])
    for clean in (str(tmp_path / "tiny.parquet"), [str(tmp_path / "tiny.parquet")]):
        with pytest.raises(MasklamError, match="data.cheetah-run.clean: .* holds distracted and clean frames"):
            ExperimentConfig(**base, data={"cheetah-run": {"train": [str(tmp_path / "tiny.parquet")], "clean": clean}})
    ExperimentConfig(**base, data={"cheetah-run": {"train": [str(tmp_path / "tiny.parquet")], "collect_clean": {}}})
    # one split of a directory of shards (DIR/train) is data an experiment finds
    from masklam.downstream.experiment import _datasets

    (tmp_path / "hf").mkdir()
    pq.write_table(table(episodes([3, 3])), tmp_path / "hf" / "train-00000-of-00001.parquet")
    cfg = ExperimentConfig(out=tmp_path, tasks=["cheetah-run"], methods=["lapo"],
                           data={"cheetah-run": {"train": [str(tmp_path / "hf" / "train")]}})
    assert _datasets(cfg) == {"cheetah-run": {"train": [str(tmp_path / "hf" / "train")]}}


def test_the_peers_unclipped_actions_read_clipped_with_one_notice_and_ours_as_stored(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """LAOM's HDF5 and MaskLAM's parquet data store the policy's output before the environment clipped it (their
    loaders clip to [-1, 1]): load_dataset and `masklam import` read them clipped, noting it once per file; our
    files (which carry a `version` attr) store executed actions and are read as stored."""
    from masklam.data.hdf5 import FORMAT_VERSION
    from masklam.data.importer import ImportConfig, run_import

    trajs = write_laom_file(tmp_path / "laom.hdf5")
    raw = np.concatenate([t["actions"] for t in trajs])
    assert np.abs(raw).max() > 1.5  # the fixture leaves the bounds
    data = load_dataset(tmp_path / "laom.hdf5", progress=False)
    assert np.array_equal(data.actions, np.clip(raw, -1, 1))
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 1 and "laom.hdf5" in notes[0] and "read clipped" in notes[0]

    eps = episodes([5, 4])
    for ep in eps:
        ep["action"] = ep["action"] * 3
    pq.write_table(table(eps), tmp_path / "wide.parquet")
    data = load_dataset(tmp_path / "wide.parquet", progress=False)
    assert np.array_equal(data.actions, np.clip(np.concatenate([ep["action"] for ep in eps]), -1, 1))
    assert capsys.readouterr().err.count("wide.parquet") == 1

    run_import(ImportConfig(src=tmp_path / "laom.hdf5", out=tmp_path / "imported.h5", img_size=H, progress=False))
    imported = load_dataset(tmp_path / "imported.h5", progress=False)
    assert np.array_equal(imported.actions, np.clip(raw, -1, 1))  # stored executed, so read as they are
    assert imported.meta["actions_clipped_to"] == [-1.0, 1.0]  # an import from before the clipping cannot resume
    with h5py.File(tmp_path / "imported.h5", "a") as f:
        del f.attrs["actions_clipped_to"]
    with pytest.raises(MasklamError, match="without actions_clipped_to"):
        run_import(ImportConfig(src=tmp_path / "laom.hdf5", out=tmp_path / "imported.h5", img_size=H, progress=False))

    eps[1]["action"][2, 0] = np.inf  # clipping leaves NaN and inf to the finiteness check
    pq.write_table(table(eps), tmp_path / "inf.parquet")
    with pytest.raises(MasklamError, match="trajectory 1: actions holds inf at frame 2"):
        load_dataset(tmp_path / "inf.parquet", progress=False)

    with h5py.File(tmp_path / "laom.hdf5", "a") as f:  # the same file, marked as ours: actions as stored
        f.attrs["version"] = FORMAT_VERSION
    assert np.array_equal(load_dataset(tmp_path / "laom.hdf5", progress=False).actions, raw)
