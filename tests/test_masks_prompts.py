"""`masklam masks` prompts on foreign video: --point, --box x0,y0,x1,y1, --auto (the agent found from motion),
files that name no task, and --preview. MobileSAM is a stand-in here (the real model's point prompt is tested in
test_masks_mobilesam.py)."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from masklam import cli
from masklam.cli import main as cli_main
from masklam.masks import auto, mobilesam
from masklam.masks.command import split_commas
from masklam.masks.iou import mask_iou
from masklam.masks.preview import overlay, preview_path
from maskfiles import write_mask_file

RED, PINK = (230, 60, 40), (250, 20, 90)


@pytest.fixture(autouse=True)
def masks_command(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "masks", ("masklam.masks.command", cli.COMMANDS["masks"][1]))


def agent_video(num_frames: int = 12, hw: int = 64, seed: int = 0, x: int = 20, y: int = 24):
    """A 12x12 'agent' that flickers between two reds (it moves where the camera follows it) over a background
    that changes a little each frame, and a static grey band at the bottom (a floor)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 120, (hw, hw, 3)).astype(np.int16)
    frames = np.clip(base[None] + rng.integers(-4, 5, (num_frames, hw, hw, 3)), 0, 255).astype(np.uint8)
    frames[:, 52:58] = 90
    truth = np.zeros((num_frames, hw, hw), bool)
    truth[:, y:y + 12, x:x + 12] = True
    for t in range(num_frames):
        frames[t][truth[t]] = RED if t % 2 == 0 else PINK
    return frames, truth


def is_red(frames: torch.Tensor) -> torch.Tensor:
    return (frames[..., 0] > 200) & (frames[..., 1] < 100)


class PromptStub:
    """Stands in for MobileSAM. segment: the red pixels inside a box prompt, or within 16 px of a point prompt.
    candidates (for --auto): per point, [unused, the red object if the point is on it else a 3x3 block there,
    that plus a 16x16 background block (a leak), a band across the frame (the floor)]."""

    def __init__(self):
        self.prompts = []

    def embed(self, frames):
        return torch.from_numpy(np.asarray(frames))

    def segment(self, embeddings, boxes, frame_hw, multimask=False):
        prompt = [float(v) for v in boxes[0]]
        self.prompts.append(tuple(round(v, 1) for v in prompt))
        near = torch.zeros(frame_hw, dtype=torch.bool)
        if len(prompt) == 4:
            x0, y0, x1, y1 = (int(round(v)) for v in prompt)
            near[y0:y1, x0:x1] = True
        else:
            yy, xx = torch.meshgrid(torch.arange(frame_hw[0]), torch.arange(frame_hw[1]), indexing="ij")
            near = (xx - prompt[0]) ** 2 + (yy - prompt[1]) ** 2 <= 16 ** 2
        return torch.where(is_red(embeddings[0]) & near, 1.0, -1.0)[None].float(), torch.ones(1)

    def candidates(self, embeddings, prompts, frame_hw):
        red = is_red(embeddings[0])
        out = -torch.ones(len(prompts), 4, *frame_hw)
        for i, (x, y) in enumerate(np.asarray(prompts).astype(int)):
            obj = red.clone() if red[y, x] else torch.zeros(frame_hw, dtype=torch.bool)
            if not red[y, x]:
                obj[max(0, y - 1):y + 2, max(0, x - 1):x + 2] = True
            leak = obj.clone()
            leak[0:16, 40:56] = True
            band = torch.zeros(frame_hw, dtype=torch.bool)
            band[50:60] = True
            for j, m in enumerate((obj, obj, leak, band)):
                out[i, j] = torch.where(m, 1.0, -1.0)
        return out, torch.full((len(prompts), 4), 0.9)


@pytest.fixture
def stub(monkeypatch):
    model = PromptStub()
    monkeypatch.setattr(mobilesam, "load_mobilesam", lambda path, device="cpu": model)
    return model


def imported_file(path: Path, videos) -> Path:
    """Like `masklam import` writes: obs only (no task attrs, states, actions or masks)."""
    with h5py.File(path, "w") as f:
        for i, obs in enumerate(videos):
            f.create_group(str(i)).create_dataset("obs", data=obs)
    return path


# --- --auto ---------------------------------------------------------------------------------------------------

def test_motion_energy_and_peaks_find_the_flickering_agent():
    frames, truth = agent_video()
    energy = auto.motion_energy(frames)
    assert energy.shape == (64, 64)
    assert energy[truth[0]].min() > 4 * energy[~truth[0]].max()  # the agent changes, the rest barely
    peaks = auto.energy_peaks(energy, n=4)
    assert len(peaks) >= 1 and all(truth[0][int(y), int(x)] for x, y in peaks)
    assert not auto.motion_energy(frames[:1]).any()


def test_choose_prefers_the_whole_moving_object_to_leaks_parts_and_frame_spanning_regions():
    frames, truth = agent_video()
    energy = auto.motion_energy(frames)
    agent = truth[0]
    part = np.zeros_like(agent)
    part[24:30, 20:26] = True  # a quarter of the agent
    leak = agent.copy()
    leak[0:20, 36:60] = True  # the agent and a piece of background
    band = np.zeros_like(agent)
    band[50:60] = True
    tiny = np.zeros_like(agent)
    tiny[25, 25] = True
    candidates = np.stack([part, leak, band, tiny, agent])
    assert auto.choose(candidates, np.ones(5), energy) == 4
    assert auto.choose(candidates[[2, 3]], np.ones(2), energy) is None  # only a floor and a speck: refused
    assert auto.spans_frame(candidates).tolist() == [False, False, True, False, False]


def test_auto_masks_an_imported_video_with_a_box_found_per_trajectory(tmp_path, stub, capsys):
    videos = [agent_video(seed=0, x=20)[0], agent_video(seed=1, x=34, y=10)[0]]
    path = imported_file(tmp_path / "v.h5", videos)
    assert cli_main(["masks", "--segmenter", "mobilesam", "--data", str(path), "--weights", "w.pt", "--auto"]) == 0
    assert "no simulator masks" in capsys.readouterr().out
    with h5py.File(path) as f:
        assert f.attrs["masks_mobilesam_prompt"] == "auto"
        made = json.loads(f.attrs["masks_mobilesam_config"])  # how they were made, beyond prompt and weights
        assert (made["segmenter"], made["prompt"], made["key"]) == ("mobilesam", "auto", "masks_mobilesam")
        for name, (x, y) in (("0", (20, 24)), ("1", (34, 10))):
            truth = np.zeros((12, 64, 64), bool)
            truth[:, y:y + 12, x:x + 12] = True
            assert mask_iou(f[name]["masks_mobilesam"][()], truth) == 1.0
            x0, y0, x1, y1 = f[name].attrs["masks_mobilesam_prompt"]  # the agent's box, 10% (>= 1 px) wider
            assert (x0, y0, x1, y1) == pytest.approx((x - 1.2, y - 1.2, x + 13.2, y + 13.2))


def test_auto_leaves_a_still_videos_masks_empty_with_a_note_and_refuses_a_file_of_only_those(tmp_path, stub,
                                                                                              capsys):
    """One motionless clip does not stop a folder's masks: its masks are empty (prompt NaNs), with a note naming it;
    a file where --auto finds no agent at all is a one-line error."""
    moving, still = agent_video(seed=0, x=20)[0], np.repeat(agent_video()[0][:1], 4, axis=0)
    path = imported_file(tmp_path / "v.h5", [moving, still])
    assert cli_main(["masks", "--segmenter", "mobilesam", "--data", str(path), "--weights", "w", "--auto"]) == 0
    err = capsys.readouterr().err
    assert f"--auto found no motion in the first 4 frames of trajectory 1 of {path}" in err
    assert "its masks are left empty, and MaskLAM does not learn from it" in err
    with h5py.File(path) as f:
        assert f["0"]["masks_mobilesam"][()].any() and not f["1"]["masks_mobilesam"][()].any()
        assert np.isnan(f["1"].attrs["masks_mobilesam_prompt"]).all()
    only = imported_file(tmp_path / "s.h5", [still])
    assert cli_main(["masks", "--segmenter", "mobilesam", "--data", str(only), "--weights", "w", "--auto"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"masklam: error: --auto found no agent in any trajectory of {only} (see the notes); give --box "
                    "or --point")
    with h5py.File(only) as f:
        assert "masks_mobilesam" not in f["0"]
    # what it says to do works: its empty parts are gone, so another prompt starts over
    assert cli_main(["masks", "--segmenter", "mobilesam", "--data", str(only), "--weights", "w", "--box", "18",
                     "22", "34", "38"]) == 0
    with h5py.File(only) as f:
        assert f["0"]["masks_mobilesam"][()].any()


# --- --point, --box, files without a task --------------------------------------------------------------------

def test_point_prompt_and_comma_syntax(tmp_path, stub):
    frames, truth = agent_video()
    path = write_mask_file(tmp_path / "d.h5", [(frames, truth)])
    argv = ["masks", "--segmenter", "mobilesam", "--data", str(path), "--weights", "w", "--point", "25,30"]
    assert cli_main(argv) == 0
    assert stub.prompts[0] == (25.0, 30.0)  # frame 0: the point; then the previous mask's box
    assert len(stub.prompts[1]) == 4
    with h5py.File(path) as f:
        assert f["0"].attrs["masks_mobilesam_iou"] == 1.0
        np.testing.assert_allclose(f.attrs["masks_mobilesam_prompt"], (25, 30))
    assert split_commas(["--box", "1,2,3,4", "--point=5,6", "--key", "a,b"]) == [
        "--box", "1", "2", "3", "4", "--point", "5", "6", "--key", "a,b"]


@pytest.mark.parametrize("args, message", [
    ([], "names no task"),
    (["--box", "0,0,80,10"], "--box (0.0, 0.0, 80.0, 10.0) lies outside the 64x64 frames of"),
    (["--point", "10", "64"], "--point (10.0, 64.0) lies outside the 64x64 frames of"),
    (["--point", "1", "2", "--auto"], "give one prompt"),
])
def test_prompt_errors_are_one_line_naming_the_file(tmp_path, stub, args, message, capsys):
    path = imported_file(tmp_path / "v.h5", [agent_video()[0]])
    assert cli_main(["masks", "--segmenter", "mobilesam", "--data", str(path), "--weights", "w"] + args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    if "outside" in message or "no task" in message:
        assert str(path) in err
    assert not any(p.name.endswith(".parts") for p in tmp_path.iterdir())  # refused before any work


def test_resuming_with_another_prompt_is_refused(tmp_path, stub, capsys):
    path = imported_file(tmp_path / "v.h5", [agent_video()[0]])
    base = ["masks", "--segmenter", "mobilesam", "--data", str(path), "--weights", "w"]
    assert cli_main(base + ["--auto"]) == 0
    assert cli_main(base + ["--point", "25", "30"]) == 2
    assert "made with auto, not point [25.0, 30.0]" in capsys.readouterr().err


def interrupted_before_the_merge(monkeypatch, argv: list[str]) -> None:
    """`masklam masks argv` killed once every trajectory's part is written, before the merge."""
    from masklam.masks import command

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(command, "merge_parts", killed)
        assert cli_main(argv) == 130


def test_parts_of_an_older_version_of_the_file_are_made_again(tmp_path, stub, monkeypatch, capsys):
    path = imported_file(tmp_path / "v.h5", [agent_video(12)[0]])
    argv = ["masks", "--segmenter", "mobilesam", "--data", str(path), "--weights", "w", "--box", "16,20,36,40"]
    interrupted_before_the_merge(monkeypatch, argv)
    imported_file(path, [agent_video(8, seed=1)[0]])  # the file written anew meanwhile: 8 frames, not 12
    assert cli_main(argv) == 0
    assert "made from another version of" in capsys.readouterr().err
    with h5py.File(path) as f:
        assert f["0/masks_mobilesam"].shape == (8, 64, 64)


def test_resuming_with_other_weights_or_segmenter_is_refused(tmp_path, stub, monkeypatch, capsys):
    path = imported_file(tmp_path / "v.h5", [agent_video()[0]])
    argv = ["masks", "--segmenter", "mobilesam", "--data", str(path), "--weights", "w", "--box", "16,20,36,40"]
    interrupted_before_the_merge(monkeypatch, argv)
    capsys.readouterr()
    assert cli_main(argv[:-4] + ["--weights", "w2", "--box", "16,20,36,40"]) == 2
    assert "holds masks made with weights 'w', not 'w2'" in capsys.readouterr().err
    assert cli_main(argv + ["--frames-per-traj", "2", "--student"]) == 2  # the student would mix in its masks
    assert "made with segmenter 'mobilesam', not 'mobilesam student'" in capsys.readouterr().err
    assert cli_main(argv) == 0


# --- --preview ------------------------------------------------------------------------------------------------

def test_overlay_tints_the_mask_and_outlines_it():
    frame = np.full((8, 8, 3), 100, np.uint8)
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    out = overlay(frame, mask)
    assert (out[~mask] == 100).all()  # outside untouched
    assert (out[3:5, 3:5] == [177, 70, 70]).all()  # inside: half the frame, half the red tint
    assert (out[2, 2:6] == 255).all() and (out[5, 2:6] == 255).all()  # the outline


def test_preview_writes_a_png_grid(tmp_path, stub, capsys, monkeypatch):
    frames, truth = agent_video()
    path = write_mask_file(tmp_path / "d.h5", [(frames, truth), (frames, truth)])
    argv = ["masks", "--segmenter", "mobilesam", "--data", str(path), "--weights", "w", "--box", "18,22,34,38",
            "--preview"]
    import matplotlib.axes

    images, titles = [], []
    real_imshow, real_title = matplotlib.axes.Axes.imshow, matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow",
                        lambda ax, img, *a, **k: (images.append(np.asarray(img)), real_imshow(ax, img, *a, **k))[1])
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda ax, text, *a, **k: (titles.append(text), real_title(ax, text, *a, **k))[1])
    assert cli_main(argv) == 0
    out = preview_path(path, "masks_mobilesam")
    assert f"preview: {out}" in capsys.readouterr().out
    import matplotlib.image

    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 300  # 2 rows x 6 columns
    cells = []  # 2 trajectories x 6 frames spread over 12: each its frame with its mask over it, and the mask's IoU
    with h5py.File(path) as f:
        for n in ("0", "1"):
            for t in np.linspace(0, 11, 6).astype(int):
                m, iou = f[n]["masks_mobilesam"][t], mask_iou(f[n]["masks_mobilesam"][t][None], f[n]["masks"][t][None])
                cells.append((overlay(f[n]["obs"][t], m), f"traj {n} t{t}\nIoU {iou:.2f}"))
    assert len(images) == 12 and titles == [title for _, title in cells]
    assert all(np.array_equal(a, b) for a, (b, _) in zip(images, cells))
    from masklam.errors import MasklamError
    from masklam.masks.preview import write_preview

    with pytest.raises(MasklamError, match="has no 'masks_mobilesam' masks to preview"):
        write_preview(imported_file(tmp_path / "e.h5", [frames]), "masks_mobilesam", tmp_path / "p.png")


def test_replace_starts_over_from_an_interrupted_run_with_another_prompt(tmp_path):
    from masklam.errors import MasklamError
    from masklam.masks.store import plan

    frames, truth = agent_video()
    path = imported_file(tmp_path / "v.h5", [frames])
    first = plan(path, "masks_mobilesam", (1.0, 1.0, 8.0, 8.0), {"segmenter": "mobilesam"})
    (first.parts / "0.h5").write_bytes(b"a part made with the first box")
    with pytest.raises(MasklamError, match="pass that prompt to resume, or --replace"):
        plan(path, "masks_mobilesam", (2.0, 2.0, 9.0, 9.0), {"segmenter": "mobilesam"})
    again = plan(path, "masks_mobilesam", (2.0, 2.0, 9.0, 9.0), {"segmenter": "mobilesam"}, replace=True)
    assert again.todo() == ["0"]  # the old part is gone with its folder
