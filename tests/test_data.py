"""The HDF5 layout, reading (ours and LAOM's files), windows, splits, `masklam info`: synthetic files only."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest

from masklam.data import (Trajectory, WindowSampler, labeled_subset, load_dataset, read_layout,
                          read_trajectory, split_trajectories, write_trajectory)
from masklam.data.info import format_summary, main as info_main, summarize
from masklam.errors import MasklamError

H = W = 8
S, A = 5, 2


def make_traj(traj: int, length: int, masks: bool = True) -> Trajectory:
    """Frames that say who they are: obs[t, 0, 0] = (traj, t, 7), states[t, :2] = (traj, t)."""
    rng = np.random.default_rng(traj)
    obs = rng.integers(0, 256, (length, H, W, 3), dtype=np.uint8)
    obs[:, 0, 0, 0], obs[:, 0, 0, 1], obs[:, 0, 0, 2] = traj, np.arange(length), 7
    states = rng.standard_normal((length, S)).astype(np.float32)
    states[:, 0], states[:, 1] = traj, np.arange(length)
    actions = rng.uniform(-1, 1, (length, A)).astype(np.float32)
    rewards = np.full(length, 0.5, np.float32)
    m = rng.random((length, H, W)) < 0.3 if masks else None
    extras = {"video_id": np.full(length, traj, np.int32),
              "camera": rng.standard_normal((length, 3)).astype(np.float32)}
    return Trajectory(obs, states, actions, rewards, m, extras, seed=100 + traj)


def write_ours(path: Path, lengths: list[int], first_id: int = 0, masks: bool = True) -> list[Trajectory]:
    trajs = [make_traj(first_id + i, n, masks) for i, n in enumerate(lengths)]
    with h5py.File(path, "w") as f:
        f.attrs.update(domain_name="cheetah", task_name="run", img_hw=H, split="train", distractors="laom",
                       seed=0, version=1)
        for i, traj in enumerate(trajs):
            write_trajectory(f, str(i), traj)
    return trajs


def write_laom(path: Path, lengths: list[int]) -> None:
    """A file in LAOM's published layout: obs/states/actions only, contiguous, their file attrs."""
    with h5py.File(path, "w") as f:
        f.attrs.update(domain_name="cheetah", task_name="run", difficulty="scale_easy_video_hard", dynamic=True,
                       img_hw=H, split="train", dataset_return=123.0)
        for i, n in enumerate(lengths):
            t = make_traj(i, n, masks=False)
            g = f.create_group(str(i))
            g.create_dataset("obs", data=t.obs)
            g.create_dataset("states", data=t.states)
            g.create_dataset("actions", data=t.actions * 1.5)  # LAOM stored pre-clipping actions
            g.attrs["traj_return"] = 10.0 * i


def test_write_read_roundtrip_layout_and_dtypes(tmp_path: Path) -> None:
    path = tmp_path / "d.h5"
    trajs = write_ours(path, [6, 9])
    with h5py.File(path) as f:
        g = f["1"]
        assert g["obs"].dtype == np.uint8 and g["obs"].shape == (9, H, W, 3)
        assert g["obs"].chunks == (1, H, W, 3) and g["obs"].compression == "lzf"
        assert g["masks"].dtype == bool and g["masks"].chunks == (1, H, W)
        assert g["states"].dtype == np.float32 and g["actions"].dtype == np.float32 and g["rewards"].shape == (9,)
        assert g.attrs["traj_return"] == pytest.approx(4.5) and g.attrs["seed"] == 101
        back = read_trajectory(g)
    np.testing.assert_array_equal(back.obs, trajs[1].obs)
    np.testing.assert_array_equal(back.masks, trajs[1].masks)
    np.testing.assert_array_equal(back.extras["camera"], trajs[1].extras["camera"])
    lay = read_layout(path)
    assert lay.names == ["0", "1"] and lay.lengths.tolist() == [6, 9] and lay.img_hw == (H, W)
    assert (lay.state_dim, lay.action_dim) == (S, A) and lay.has("masks") and lay.has("video_id")


def test_load_concatenates_with_offsets(tmp_path: Path) -> None:
    trajs = write_ours(tmp_path / "d.h5", [6, 9, 4])
    data = load_dataset(tmp_path / "d.h5", mask_key="masks")
    assert data.num_trajectories == 3 and data.num_frames == 19
    assert data.traj_starts.tolist() == [0, 6, 15] and data.traj_lengths.tolist() == [6, 9, 4]
    assert data.obs.flags.c_contiguous and data.obs.dtype == np.uint8
    for i, traj in enumerate(trajs):
        got = data.trajectory(i)
        np.testing.assert_array_equal(got["obs"], traj.obs)
        np.testing.assert_array_equal(got["actions"], traj.actions)
        np.testing.assert_array_equal(got["masks"], traj.masks)
    assert data.traj_returns.tolist() == pytest.approx([3.0, 4.5, 2.0])
    assert data.meta["task_name"] == "run" and data.require_masks() is data.masks


def test_traj_ids_select_and_shards_read_as_one(tmp_path: Path) -> None:
    write_ours(tmp_path / "a.h5", [5, 6])
    write_ours(tmp_path / "b.h5", [7], first_id=2)
    both = load_dataset([tmp_path / "a.h5", tmp_path / "b.h5"])
    assert both.num_trajectories == 3 and both.sources[2] == (str(tmp_path / "b.h5"), "0")
    assert both.states[both.traj_starts[2], 0] == 2  # trajectory 2 is b.h5's first
    from_dir = load_dataset(tmp_path)  # a directory of shards, sorted by name
    np.testing.assert_array_equal(from_dir.obs, both.obs)
    sub = load_dataset([tmp_path / "a.h5", tmp_path / "b.h5"], traj_ids=[2, 0])
    assert sub.traj_lengths.tolist() == [7, 5] and sub.states[0, 0] == 2 and sub.states[7, 0] == 0
    with pytest.raises(MasklamError, match="traj_ids"):
        load_dataset(tmp_path / "a.h5", traj_ids=[2])


def test_laom_layout_without_masks_reads_and_mask_methods_fail_clearly(tmp_path: Path) -> None:
    path = tmp_path / "laom.h5"
    write_laom(path, [6, 8])
    data = load_dataset(path, mask_key="masks")
    assert data.masks is None and data.rewards is None and data.num_frames == 14
    assert data.traj_returns.tolist() == [0.0, 10.0] and data.meta["difficulty"] == "scale_easy_video_hard"
    batch = WindowSampler(data, frame_stack=3, max_offset=2).sample(16, np.random.default_rng(0))
    assert batch["obs_t"].shape == (16, 3, H, W, 3) and "mask_t1" not in batch
    with pytest.raises(MasklamError, match="laom.h5.*masks"):
        WindowSampler(data, need_masks=True)
    # mixing a masked shard with an unmasked one: masks are dropped, and the error names the unmasked file
    write_ours(tmp_path / "ours.h5", [5])
    mixed = load_dataset([tmp_path / "ours.h5", path], mask_key="masks")
    with pytest.raises(MasklamError, match="laom.h5"):
        mixed.require_masks()


def test_windows_never_cross_trajectory_ends(tmp_path: Path) -> None:
    write_ours(tmp_path / "d.h5", [3, 12, 5, 4, 9])
    data = load_dataset(tmp_path / "d.h5", mask_key="masks")
    K, F = 3, 2
    sampler = WindowSampler(data, traj_ids=[0, 1, 2, 3, 4], frame_stack=F, max_offset=K, need_masks=True)
    assert sampler.num_windows == sum(max(n - K, 0) for n in [3, 12, 5, 4, 9])
    b = sampler.sample(4000, np.random.default_rng(1))
    traj, t = b["state_t"][:, 0].astype(int), b["state_t"][:, 1].astype(int)
    lengths = data.traj_lengths[traj]
    assert (t + K <= lengths - 1).all() and not (traj == 0).any()  # length 3 has no window with K=3
    assert set(b["k"].tolist()) == {1, 2, 3}
    for key, offset in (("obs_t", 0), ("obs_t1", 1), ("obs_tk", b["k"])):
        last = b[key][:, -1, 0, 0]  # (B, 3): (traj, frame, 7) of each stack's last frame
        assert (last[:, 0] == traj).all() and (last[:, 1] == t + offset).all()
        prev = b[key][:, -2, 0, 0]
        assert (prev[:, 0] == traj).all() and (prev[:, 1] == np.maximum(t + offset - 1, 0)).all()
    np.testing.assert_array_equal(b["mask_t1"][:, -1], data.masks[b["index"] + 1])
    # the masks mirror the frame stacks: every frame of obs_t / obs_tk has its own mask
    start = data.traj_starts[traj]
    np.testing.assert_array_equal(b["mask_t"][:, -2], data.masks[np.maximum(b["index"] - 1, start)])
    np.testing.assert_array_equal(b["mask_tk"][:, -1], data.masks[b["index"] + b["k"]])
    assert b["mask_t"].shape == b["obs_t"].shape[:-1]
    np.testing.assert_array_equal(b["action_t"], data.actions[b["index"]])
    assert (t == 0).any() and (b["obs_t"][t == 0, 0] == b["obs_t"][t == 0, 1]).all()  # first frame repeated
    # the reference sampler's off-by-one: the last start of a trajectory must still leave t+K inside it
    assert t[traj == 1].max() == 12 - 1 - K


def test_all_windows_visits_every_start_once_in_order(tmp_path: Path) -> None:
    write_ours(tmp_path / "d.h5", [4, 7, 2])
    data = load_dataset(tmp_path / "d.h5")
    sampler = WindowSampler(data, traj_ids=[1, 2], max_offset=5)
    batches = list(sampler.all_windows(batch_size=3, k=1))
    rows = np.concatenate([b["index"] for b in batches])
    expected = [4 + t for t in range(6)] + [11]  # trajectory 1: t = 0..5, trajectory 2: t = 0
    assert rows.tolist() == expected and all(len(b["index"]) <= 3 for b in batches)
    assert all((b["k"] == 1).all() for b in batches)
    with pytest.raises(MasklamError, match="no windows"):
        WindowSampler(data, traj_ids=[2], max_offset=2)


def test_sampling_is_deterministic_given_the_generator(tmp_path: Path) -> None:
    write_ours(tmp_path / "d.h5", [10, 10])
    sampler = WindowSampler(load_dataset(tmp_path / "d.h5"), max_offset=3)
    a, b = sampler.sample(32, np.random.default_rng(5)), sampler.sample(32, np.random.default_rng(5))
    c = sampler.sample(32, np.random.default_rng(6))
    np.testing.assert_array_equal(a["index"], b["index"])
    assert not np.array_equal(a["index"], c["index"])


def test_split_and_labeled_subset_are_deterministic_disjoint_and_nested() -> None:
    train, held = split_trajectories(50, heldout=0.1, seed=3)
    assert len(held) == 5 and len(train) == 45
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(50))
    again = split_trajectories(50, heldout=0.1, seed=3)
    assert np.array_equal(train, again[0]) and not np.array_equal(held, split_trajectories(50, 0.1, seed=4)[1])
    subsets = [set(labeled_subset(train, n, seed=0).tolist()) for n in (2, 4, 8, 16, 32)]
    assert all(small < big for small, big in zip(subsets, subsets[1:]))
    assert subsets[-1] <= set(train.tolist())
    assert set(labeled_subset(train, 8, seed=1).tolist()) != subsets[2]
    with pytest.raises(MasklamError, match="labeled"):
        labeled_subset(train, 46, seed=0)
    with pytest.raises(MasklamError, match="heldout"):
        split_trajectories(10, heldout=1.5)


def test_missing_garbage_and_truncated_files_fail_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(MasklamError, match="no such file: .*nope.h5"):
        load_dataset(tmp_path / "nope.h5")
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an hdf5 file at all" * 100)
    with pytest.raises(MasklamError, match="garbage.h5 is not a readable HDF5 file"):
        load_dataset(garbage)
    good = tmp_path / "good.h5"
    write_ours(good, [20, 20])
    cut = tmp_path / "cut.h5"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(MasklamError, match="cut.h5") as err:
        load_dataset(cut)
    assert "\n" not in str(err.value)


def test_a_flipped_byte_in_a_frame_is_an_error_not_silent_data(tmp_path: Path) -> None:
    path = tmp_path / "flip.h5"
    write_ours(path, [6, 6])
    with h5py.File(path) as f:
        offset = f["1/obs"].id.get_chunk_info(3).byte_offset
    raw = bytearray(path.read_bytes())
    raw[offset + 10] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(MasklamError, match="flip.h5: cannot read trajectory 1/obs"):
        load_dataset(path)


def edited(path: Path, edit: Callable[[h5py.File], None]) -> Path:
    """A file of two 5-frame trajectories at `path`, changed by `edit`."""
    write_ours(path, [5, 5])
    with h5py.File(path, "a") as f:
        edit(f)
    return path


def test_inconsistent_shapes_fail_naming_file_and_trajectory(tmp_path: Path) -> None:
    def short_states(f):
        del f["1/states"]
        f["1/states"] = np.zeros((4, S), np.float32)

    def other_size(f):
        del f["1/obs"]
        f["1/obs"] = np.zeros((5, H, W + 1, 3), np.uint8)

    def float_obs(f):
        del f["0/obs"]
        f["0/obs"] = np.zeros((5, H, W, 3), np.float32)

    def bad_masks(f):
        del f["0/masks"]
        f["0/masks"] = np.zeros((5, H, 2 * W), bool)

    def no_actions(f):
        del f["1/actions"]

    for name, edit, pattern in [("a.h5", short_states, "a.h5: trajectory 1: states"),
                                ("b.h5", other_size, "b.h5: trajectory 1: obs"),
                                ("c.h5", float_obs, "c.h5: trajectory 0: obs must be"),
                                ("d.h5", bad_masks, r"d.h5: trajectory 0: masks must be \(T,8,8\) bool, the size of "
                                 r"its frames \(obs \(T,8,8,3\)\), got \(T,8,16\) bool"),
                                ("e.h5", no_actions, "e.h5: trajectory 1 lacks actions")]:
        with pytest.raises(MasklamError, match=pattern):
            load_dataset(edited(tmp_path / name, edit))
    empty = tmp_path / "empty.h5"
    h5py.File(empty, "w").close()
    with pytest.raises(MasklamError, match="no trajectories"):
        read_layout(empty)
    write_ours(tmp_path / "x.h5", [5])
    with h5py.File(tmp_path / "y.h5", "w") as f:
        f.attrs["task_name"] = "walk"
        write_trajectory(f, "0", make_traj(0, 5))
    with pytest.raises(MasklamError, match="task_name"):
        load_dataset([tmp_path / "x.h5", tmp_path / "y.h5"])


def test_info_summarises_a_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "d.h5"
    write_ours(path, [6, 10])
    s = summarize(path)
    assert (s["trajectories"], s["steps"], s["length_min"], s["length_max"]) == (2, 16, 6, 10)
    assert s["return_mean"] == pytest.approx(4.0) and s["return_std"] == pytest.approx(1.0)
    assert s["masks"] == ["masks"] and s["img_hw"] == (H, W) and s["task"] == "cheetah-run"
    assert s["bytes"] == path.stat().st_size
    assert info_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "trajectories  2" in out and "4.0 +- 1.0" in out and "masks         masks" in out
    write_laom(tmp_path / "laom.h5", [6])
    assert "none (methods that need masks" in format_summary(summarize(tmp_path / "laom.h5"))
    with pytest.raises(MasklamError, match="give one or more dataset files"):
        info_main([])
    (tmp_path / "shards").mkdir()
    write_ours(tmp_path / "shards" / "a.h5", [5])
    write_ours(tmp_path / "shards" / "b.h5", [7])
    assert info_main([str(tmp_path / "shards")]) == 0  # a folder of shards: each one
    out = capsys.readouterr().out
    assert "a.h5" in out and "b.h5" in out


def test_a_file_given_twice_or_malformed_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "shards").mkdir()
    write_ours(tmp_path / "shards" / "a.h5", [5, 5])
    with pytest.raises(MasklamError, match="a.h5 is given twice"):  # its trajectories could land on both sides
        load_dataset([tmp_path / "shards", tmp_path / "shards" / "a.h5"])
    bad = tmp_path / "bad.h5"
    write_ours(bad, [5])
    with h5py.File(bad, "a") as f:
        del f["0/obs"]
        f.create_group("0/obs")  # a group where the frames should be
    with pytest.raises(MasklamError, match="bad.h5 is corrupted"):
        read_layout(bad)


@pytest.mark.parametrize("key, value", [("actions", np.nan), ("states", np.inf), ("actions", -np.inf),
                                        ("rewards", np.nan)])
def test_nan_or_inf_fails_on_loading_naming_file_trajectory_and_key(tmp_path: Path, key, value) -> None:
    path = tmp_path / "nan.h5"
    write_ours(path, [5, 6])
    with h5py.File(path, "a") as f:
        data = f[f"1/{key}"][()]
        data[3, ...] = value if data.ndim == 1 else data[3]
        if data.ndim > 1:
            data[3, 1] = value
        del f[f"1/{key}"]
        f[f"1/{key}"] = data
    with pytest.raises(MasklamError, match=rf"nan.h5: trajectory 1: {key} holds -?(nan|inf) at frame 3") as e:
        load_dataset(path, progress=False)
    assert "\n" not in str(e.value)
    assert load_dataset(path, traj_ids=[0], progress=False).num_trajectories == 1  # the clean one still loads


def test_empty_trajectories_and_bad_masks_fail_on_loading(tmp_path: Path) -> None:
    def empty_traj(f):
        for key in list(f["1"].keys()):
            value = f[f"1/{key}"][()]
            del f[f"1/{key}"]
            f[f"1/{key}"] = value[:0]

    def no_action_dims(f):
        for g in ("0", "1"):
            del f[f"{g}/actions"]
            f[f"{g}/actions"] = np.zeros((5, 0), np.float32)

    def uint8_masks(f):
        value = f["1/masks"][()]
        del f["1/masks"]
        f["1/masks"] = value.astype(np.uint8)

    def string_actions(f):
        for g in ("0", "1"):
            del f[f"{g}/actions"]
            f[f"{g}/actions"] = np.full((5, A), b"x", "S1")

    for name, edit, pattern in [("a.h5", empty_traj, "a.h5: trajectory 1 is empty"),
                                ("b.h5", no_action_dims, "b.h5: trajectory 0: actions must be"),
                                ("c.h5", uint8_masks,
                                 r"c.h5: trajectory 1: masks has shape \(5, 8, 8\) uint8, other .* bool"),
                                ("d.h5", string_actions, "d.h5: trajectory 0: actions must be")]:
        with pytest.raises(MasklamError, match=pattern):
            load_dataset(edited(tmp_path / name, edit), mask_key="masks", progress=False)


def test_a_file_with_masks_under_another_key_names_the_key_to_pass(tmp_path: Path) -> None:
    def renamed(f):
        for g in ("0", "1"):
            f.move(f"{g}/masks", f"{g}/masks_mobilesam")

    data = load_dataset(edited(tmp_path / "a.h5", renamed), mask_key="masks", progress=False)
    with pytest.raises(MasklamError, match=r"a.h5 has no 'masks' \(agent masks\) but has 'masks_mobilesam': pass "
                                           r"--mask-key masks_mobilesam to train on those"):
        data.require_masks()
    assert load_dataset(tmp_path / "a.h5", mask_key="masks_mobilesam", progress=False).require_masks().any()


def test_masks_empty_everywhere_are_an_error_and_empty_trajectories_a_note(tmp_path: Path, capsys) -> None:
    def no_agent(f):
        for g in ("0", "1"):
            f[f"{g}/masks"][...] = False

    data = load_dataset(edited(tmp_path / "a.h5", no_agent), mask_key="masks", progress=False)
    with pytest.raises(MasklamError, match=r"agent masks 'masks' of .*a.h5 are empty in every frame"):
        WindowSampler(data, np.arange(2), frame_stack=1, need_masks=True)
    WindowSampler(data, np.arange(2), frame_stack=1)  # a method without masks reads the file as before

    def one_without(f):
        f["1/masks"][...] = False

    data = load_dataset(edited(tmp_path / "b.h5", one_without), mask_key="masks", progress=False)
    WindowSampler(data, np.arange(2), frame_stack=1, need_masks=True)
    WindowSampler(data, np.arange(2), frame_stack=1, need_masks=True)
    err = capsys.readouterr().err
    assert err.count("1 of 2 trajectories have empty agent masks 'masks' in every frame (") == 1 and "b.h5:1" in err
