"""SAM 2 masks: our preprocessing maths, the propagation against transformers' own loop, and the command's
file handling (shapes, resume after a crash, errors). A tiny random SAM 2 stands in for hiera-tiny: its masks
are meaningless, so only plumbing and maths are asserted, never mask quality."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from masklam import cli
from masklam.errors import MasklamError
from masklam.masks import command as cmd
from masklam.masks.command import add_masks
from masklam.masks.iou import mask_iou
from masklam.masks.store import TASK_BOXES, default_box, parts_dir
from maskfiles import write_mask_file

transformers = pytest.importorskip("transformers")
from masklam.masks import sam2 as segmenter  # noqa: E402  (needs transformers)
from masklam.masks.sam2 import load_model, preprocess_frames, scale_box, segment_video, upsample_logits  # noqa: E402


@pytest.fixture(autouse=True)
def masks_command(monkeypatch):
    """`masklam masks` is masklam.masks.command (a no-op once cli.py's table names it)."""
    monkeypatch.setitem(cli.COMMANDS, "masks", ("masklam.masks.command", cli.COMMANDS["masks"][1]))


MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def tiny_config(size: int = 128) -> "transformers.Sam2VideoConfig":
    """A ~1.3M-parameter SAM 2 with the real architecture (memory dims stay 64: transformers hard-codes them)."""
    d = 128  # must exceed the 64-dim memory so object pointers get split like hiera-tiny's
    return transformers.Sam2VideoConfig(
        vision_config=dict(
            model_type="sam2_vision_model",
            backbone_config=dict(model_type="sam2_hiera_det_model", hidden_size=16, image_size=[size, size],
                                 blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[16, 32, 64, 128],
                                 num_attention_heads_per_stage=[1, 1, 1, 1], window_size_per_stage=[4, 4, 4, 4],
                                 global_attention_blocks=[3], window_positional_embedding_background_size=[2, 2]),
            backbone_channel_list=[128, 64, 32, 16], fpn_hidden_size=d, initializer_range=0.2,
            backbone_feature_sizes=[[size // 4] * 2, [size // 8] * 2, [size // 16] * 2]),
        prompt_encoder_config=dict(hidden_size=d, image_size=size, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=d, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=d),
        image_size=size, memory_attention_hidden_size=d, memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64, memory_attention_rope_feat_sizes=[size // 16] * 2,
        memory_encoder_hidden_size=d, mask_downsampler_embed_dim=d, memory_fuser_embed_dim=d,
        memory_fuser_intermediate_dim=64, num_maskmem=3, max_object_pointers_in_encoder=4,
        initializer_range=0.2)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """A tiny random SAM 2 saved in HF format (config.json + model.safetensors), seeded without global state."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.Sam2VideoModel(tiny_config())
    out = tmp_path_factory.mktemp("sam2") / "tiny"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_model(tiny_weights):
    torch.set_num_threads(1)
    return load_model(tiny_weights, "cpu")


def video(num_frames: int, seed: int, hw: tuple[int, int] = (64, 64)) -> np.ndarray:
    """A moving bright square on a noisy background, (T, H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 80, (num_frames, *hw, 3), dtype=np.uint8)
    for t in range(num_frames):
        frames[t, 20:40, 10 + 2 * t:30 + 2 * t] = 230
    return frames


def write_file(path: Path, lengths=(3, 4), with_masks: bool = True, domain: str = "cheetah") -> Path:
    videos = [video(length, seed=i) for i, length in enumerate(lengths)]
    return write_mask_file(path, [(obs, obs[..., 0] > 200 if with_masks else None) for obs in videos], domain)


# --- the maths we do instead of the processors -------------------------------------------------------------

def test_preprocess_resize_and_normalise_by_hand():
    img = np.array([[[0, 255, 10], [100, 50, 200]], [[30, 60, 90], [255, 0, 5]]], np.uint8)  # (2, 2, 3)
    out = preprocess_frames(torch.from_numpy(img[None]), 4).numpy()
    assert out.shape == (1, 3, 4, 4) and out.dtype == np.float32
    # bilinear 2 -> 4, half-pixel centres: source coordinate (d + 0.5) / 2 - 0.5, clamped to the edge
    a = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    for c in range(3):
        expected = (a @ (img[..., c] / 255.0) @ a.T - MEAN[c]) / STD[c]
        np.testing.assert_allclose(out[0, c], expected, atol=1e-5)


def test_preprocess_constant_frame_and_same_size():
    frames = np.full((2, 5, 7, 3), (10, 128, 250), np.uint8)
    out = preprocess_frames(torch.from_numpy(frames), 16).numpy()
    expected = (np.array([10, 128, 250]) / 255.0 - MEAN) / STD
    np.testing.assert_allclose(out, np.broadcast_to(expected[None, :, None, None], (2, 3, 16, 16)), atol=1e-5)
    same = preprocess_frames(torch.from_numpy(video(1, 0, (8, 8))), 8).numpy()
    np.testing.assert_allclose(same[0, 1], (video(1, 0, (8, 8))[0, ..., 1] / 255.0 - MEAN[1]) / STD[1], atol=1e-5)


def test_scale_box_to_model_input():
    assert scale_box((8, 16, 40, 48), (64, 64), 1024).tolist() == [[[[128, 256], [640, 768]]]]
    # a wide frame: x scales by size / W, y by size / H (axes not swapped)
    assert scale_box((32, 12, 64, 24), (48, 128), 1024).tolist() == [[[[256, 256], [512, 512]]]]


def test_upsample_logits_bilinear_by_hand():
    rng = np.random.default_rng(0)
    low = rng.normal(size=(1, 1, 256, 256)).astype(np.float32)
    out = upsample_logits(torch.from_numpy(low), (64, 64)).numpy()
    assert out.shape == (1, 64, 64)
    # shrinking 4x with half-pixel centres samples at 4d + 1.5: the mean of rows/cols 4d+1 and 4d+2
    pick = low[0, 0][1::4][:, 1::4] + low[0, 0][2::4][:, 1::4] + low[0, 0][1::4][:, 2::4] + low[0, 0][2::4][:, 2::4]
    np.testing.assert_allclose(out[0], pick / 4, atol=1e-5)


def test_mask_iou_by_hand():
    a = np.zeros((3, 4, 4), bool)
    b = np.zeros((3, 4, 4), bool)
    a[0, :2] = True  # 8 px
    b[0, 1:3] = True  # 8 px, 4 shared -> 4 / 12
    a[1] = True  # 16 px vs none -> 0
    # frame 2: both empty -> 1
    assert mask_iou(a, b) == pytest.approx((4 / 12 + 0 + 1) / 3)
    assert mask_iou(a, a) == 1.0


def test_default_box_per_domain():
    assert default_box("cheetah", (64, 64)) == pytest.approx(tuple(v * 64 for v in TASK_BOXES["cheetah"]))
    x0, y0, x1, y1 = default_box("unknown", (100, 200))
    assert (x0, y0, x1, y1) == pytest.approx((40, 20, 160, 80))
    for fx0, fy0, fx1, fy1 in TASK_BOXES.values():
        assert 0 <= fx0 < fx1 <= 1 and 0 <= fy0 < fy1 <= 1


# --- propagation -------------------------------------------------------------------------------------------

def reference_logits(model, frames: np.ndarray, box) -> np.ndarray:
    """transformers' own loop: a session holding the whole preprocessed video, propagate_in_video_iterator."""
    session_cls = transformers.models.sam2_video.modeling_sam2_video.Sam2VideoInferenceSession
    pixels = preprocess_frames(torch.from_numpy(frames), model.config.image_size)
    session = session_cls(video=pixels, video_height=64, video_width=64, dtype=torch.float32)
    obj = session.obj_id_to_idx(1)
    session.add_point_inputs(obj, 0, {"point_coords": scale_box(box, (64, 64), model.config.image_size),
                                      "point_labels": torch.tensor([[[2, 3]]], dtype=torch.int32)})
    session.obj_with_new_inputs = [1]
    outs = [upsample_logits(o.pred_masks, (64, 64))[0].numpy()
            for o in model.propagate_in_video_iterator(session, start_frame_idx=0)]
    return np.stack(outs)


def test_segment_video_matches_transformers_loop(tiny_model):
    frames = video(10, seed=3)  # longer than the memory window (4): pruning is exercised
    box = (10, 20, 30, 40)
    seen = []
    ours = segment_video(tiny_model, frames, box, batch=4, progress=seen.append)
    assert ours.shape == (10, 64, 64) and ours.dtype == np.float32
    assert seen == [4, 4, 2]
    assert ours.std() > 0  # not a constant map: the comparison below means something
    np.testing.assert_allclose(ours, reference_logits(tiny_model, frames, box), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(segment_video(tiny_model, frames, box, batch=1), ours, rtol=1e-4, atol=1e-3)


def test_segment_video_reads_an_hdf5_dataset_a_batch_at_a_time(tiny_model, tmp_path, monkeypatch):
    """Memory: the tracker reads `batch` frames at a time from the file and keeps bool masks, not the video and
    float logits."""
    frames = video(10, seed=3)
    box = (10, 20, 30, 40)
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["obs"] = frames
    want = segment_video(tiny_model, frames, box, batch=4) > 0
    reads, real_getitem = [], h5py.Dataset.__getitem__
    real_array = h5py.Dataset.__array__
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda self, key: (
        lambda out: (reads.append(len(out) if np.ndim(out) == 4 else 1), out)[1])(real_getitem(self, key)))
    monkeypatch.setattr(h5py.Dataset, "__array__", lambda self, *a, **kw: (  # np.asarray(dataset): a whole read
        reads.append(len(self)), real_array(self, *a, **kw))[1])
    with h5py.File(tmp_path / "v.h5") as f:
        got = segment_video(tiny_model, f["obs"], box, batch=4, masks_only=True)
    assert got.dtype == bool and np.array_equal(got, want)
    assert max(reads) <= 4 and sum(reads) == 10


def test_load_from_safetensors_file(tiny_weights, tiny_model):
    model = load_model(tiny_weights / "model.safetensors")  # uses the config.json beside it
    for (name, p), (_, q) in zip(model.state_dict().items(), tiny_model.state_dict().items()):
        assert torch.equal(p, q), name


# --- the command ---------------------------------------------------------------------------------------------

def test_command_adds_masks_to_every_group(tmp_path, tiny_weights, tiny_model, capsys):
    path = write_file(tmp_path / "d.h5")
    assert cmd.main(["--data", str(path), "--weights", str(tiny_weights), "--device", "cpu", "--batch", "2"]) == 0
    box = default_box("cheetah", (64, 64))
    with h5py.File(path) as f:
        for name, length in (("0", 3), ("1", 4)):
            ds = f[name]["sam2_masks"]
            assert ds.shape == (length, 64, 64) and ds.dtype == bool
            want = segment_video(tiny_model, f[name]["obs"][()], box, batch=2) > 0  # its own frames, the box
            assert np.array_equal(ds[()], want), name
            iou = f[name].attrs["sam2_masks_iou"]
            assert iou == pytest.approx(mask_iou(ds[()], f[name]["masks"][()]))
            assert f[name]["obs"].shape == (length, 64, 64, 3)  # the rest is kept
        np.testing.assert_allclose(f.attrs["sam2_masks_prompt"], default_box("cheetah", (64, 64)))
    assert not parts_dir(path, "sam2_masks").exists()
    assert "IoU vs simulator masks over 2 trajectories" in capsys.readouterr().out


def test_each_trajectory_gets_the_masks_of_its_own_frames_and_box(tmp_path, tiny_weights, monkeypatch):
    """The random tiny model segments nothing, so the wiring is checked with logits that follow the frames: the
    red channel above 200 (the agent square). Masks are the logits > 0, of each trajectory's own frames."""
    path = write_file(tmp_path / "d.h5", lengths=(3, 4, 2))
    boxes = []

    def red_logits(model, obs, box, batch=8, progress=None, masks_only=False):
        boxes.append(tuple(box))
        logits = obs[()][..., 0].astype(np.float32) - 200.0  # (T, H, W)
        return logits > 0 if masks_only else logits

    monkeypatch.setattr(segmenter, "segment_video", red_logits)
    assert cmd.main(["--data", str(path), "--weights", str(tiny_weights), "--device", "cpu"]) == 0
    with h5py.File(path) as f:
        for name in ("0", "1", "2"):
            obs = f[name]["obs"][()]
            assert np.array_equal(f[name]["sam2_masks"][()], obs[..., 0] > 200) and obs[..., 0].max() > 200
            assert f[name].attrs["sam2_masks_iou"] == pytest.approx(1.0)  # the simulator masks are the same square
    assert boxes == [pytest.approx(default_box("cheetah", (64, 64)))] * 3


def test_resume_after_crash_and_skip_done(tmp_path, tiny_weights, monkeypatch):
    path = write_file(tmp_path / "d.h5", lengths=(2, 2, 2))
    real = segmenter.segment_video
    calls = []

    def crash_on_second(model, obs, box, batch=8, progress=None, masks_only=False):
        calls.append(obs.shape[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(model, obs, box, batch=batch, progress=progress, masks_only=masks_only)

    monkeypatch.setattr(segmenter, "segment_video", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        add_masks(path, tiny_weights, device="cpu")
    with h5py.File(path) as f:  # the file itself is untouched, trajectory 0 waits as a part
        assert not any("sam2_masks" in f[name] for name in f)
    assert sorted(p.name for p in parts_dir(path, "sam2_masks").glob("*.h5")) == ["0.h5"]

    calls.clear()
    monkeypatch.setattr(segmenter, "segment_video", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    ious = add_masks(path, tiny_weights, device="cpu")
    assert len(calls) == 2 and sorted(ious) == ["0", "1", "2"]

    calls.clear()
    with h5py.File(path, "a") as f:  # a group without masks is the only one redone
        del f["1"]["sam2_masks"]
    add_masks(path, tiny_weights, device="cpu")
    assert len(calls) == 1
    add_masks(path, tiny_weights, device="cpu")
    assert len(calls) == 1


def test_file_without_simulator_masks(tmp_path, tiny_weights, capsys):
    path = write_file(tmp_path / "d.h5", lengths=(2,), with_masks=False)
    assert add_masks(path, tiny_weights, box=(0, 0, 64, 64), device="cpu", key="sam2_b") == {}
    with h5py.File(path) as f:
        assert f["0"]["sam2_b"].shape == (2, 64, 64) and "sam2_b_iou" not in f["0"].attrs


@pytest.mark.parametrize("args, message", [
    (["--weights", "{tmp}/nowhere"], "facebook/sam2.1-hiera-tiny"),
    (["--weights", "{tmp}"], "no config.json"),
    (["--weights", "{w}", "--box", "0", "0", "80", "10"], "outside"),
])
def test_errors_are_one_line(tmp_path, tiny_weights, args, message):
    path = write_file(tmp_path / "d.h5", lengths=(2,))
    argv = ["--data", str(path)] + [a.format(tmp=tmp_path, w=tiny_weights) for a in args]
    with pytest.raises(MasklamError, match=message) as e:
        cmd.main(argv)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("field, value, message", [
    ("box", (5, 0, 1, 10), "x0 < x1"), ("batch", 0, "--batch"), ("key", "masks", "--key"),
    ("key", "a/b", "--key"), ("device", "warp", "unknown device"),
])
def test_config_validation(field, value, message):
    with pytest.raises(MasklamError, match=message):
        cmd.MasksConfig(data=Path("d.h5"), weights=Path("w"), **{field: value})


@pytest.mark.parametrize("args", [["--batch", "0"], ["--box", "5", "0", "1", "10"]])
def test_cli_rejects_bad_value_in_one_line(args, capsys):
    from masklam.cli import main

    assert main(["masks", "--data", "d.h5", "--weights", "w"] + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("masklam: error: --") and err.count("\n") == 1


def test_bad_files_and_changed_box(tmp_path, tiny_weights, capsys):
    from masklam.cli import main

    assert main(["masks", "--data", str(tmp_path / "none.h5"), "--weights", str(tiny_weights)]) == 2
    assert "no such file" in capsys.readouterr().err
    path = tmp_path / "noobs.h5"
    with h5py.File(path, "w") as f:
        f.create_group("0").create_dataset("states", data=np.zeros((2, 3), np.float32))
    with pytest.raises(MasklamError, match="lacks .*obs"):
        add_masks(path, tiny_weights, device="cpu")
    path = write_file(tmp_path / "d.h5", lengths=(2,))
    add_masks(path, tiny_weights, box=(0, 0, 32, 32), device="cpu")
    with pytest.raises(MasklamError, match="made with box"):
        add_masks(path, tiny_weights, box=(0, 0, 40, 40), device="cpu")


def test_point_and_auto_reach_sam2_as_mobilesams_frame0_box(tmp_path, tiny_weights, monkeypatch):
    """SAM 2 is prompted with a box: --auto gives it find_agent's box, --point the box of MobileSAM's frame-0 mask
    of the point; either is stored per trajectory (MobileSAM and find_agent stand in: their own tests are theirs)."""
    import masklam.masks.auto as auto
    import masklam.masks.mobilesam as mobilesam
    import masklam.masks.weights as weights

    monkeypatch.setattr(weights, "ensure", lambda name: tmp_path / f"{name}.pt")
    monkeypatch.setattr(mobilesam, "load_mobilesam", lambda path, device: f"model of {path.name}")
    monkeypatch.setattr(auto, "find_agent", lambda model, video, name: (1.0, 2.0, 30.0, 40.0))

    def frame0_mask(model, video, prompt, *args, **kwargs):
        assert model == "model of mobilesam.pt" and len(video) == 1 and tuple(prompt) == (10.0, 12.0)
        mask = np.zeros((1, 64, 64), bool)
        mask[0, 8:18, 5:15] = True  # rows 8..17, columns 5..14 around the point
        return mask

    monkeypatch.setattr(mobilesam, "track", frame0_mask)
    boxes = []
    real = segmenter.segment_video
    monkeypatch.setattr(segmenter, "segment_video",
                        lambda model, video, box, **kw: boxes.append(tuple(box)) or real(model, video, box, **kw))
    for prompt, want in ((["--auto"], (1.0, 2.0, 30.0, 40.0)), (["--point", "10,12"], (4.0, 7.0, 16.0, 19.0))):
        path = write_file(tmp_path / f"{prompt[0][2:]}.h5")
        boxes.clear()
        assert cli.main(["masks", "--data", str(path), "--weights", str(tiny_weights), "--device", "cpu",
                         *prompt]) == 0
        assert boxes == [want, want]  # one per trajectory
        with h5py.File(path) as f:
            for name in ("0", "1"):
                np.testing.assert_allclose(f[name].attrs["sam2_masks_prompt"], want)
                assert f[name]["sam2_masks"].shape[1:] == (64, 64)
