"""SAM 2 video segmentation without the transformers processors: our preprocessing, box prompt, propagation.

transformers' ``Sam2VideoModel`` runs without torchvision, but its processors do not, so this module does
their work: frames are resized to the model's square input (1024 for the released checkpoints) with
bilinear interpolation and normalised with the ImageNet mean/std; the box prompt is scaled from frame pixels
to that square; the low-resolution mask logits come back to the frame's ``H x W`` by bilinear upsampling.

Propagation follows ``Sam2VideoModel.propagate_in_video_iterator`` frame by frame, with two changes that keep
a 1000-frame trajectory cheap and leave the result unchanged: the image encoder runs on ``batch`` frames at
once (their features go into the session's cache), and per-frame outputs older than the model's memory
window are dropped (the 1024x1024 high-resolution mask kept per frame would otherwise cost 4 MB a frame).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from masklam.errors import MasklamError

if TYPE_CHECKING:  # transformers is an optional dependency (extra "sam2"), imported only when used
    from transformers import Sam2VideoModel

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_ID = "facebook/sam2.1-hiera-tiny"
OBJ_ID = 1  # the one object (the agent) we track


def _transformers():
    """The transformers module, or a one-line MasklamError saying how to install it."""
    try:
        import transformers
        from transformers.models.sam2_video import modeling_sam2_video  # noqa: F401
    except ImportError:
        raise MasklamError("SAM 2 masks need transformers>=5: pip install 'masklam[sam2]' (in a checkout: "
                           "bash install.sh --sam2)") from None
    return transformers


def how_to_get_weights(path: Path) -> str:
    """One line telling a user how to fetch the hiera-tiny weights on a machine with internet."""
    return (f"on a machine with internet run: python -c \"from transformers import Sam2VideoModel; "
            f"Sam2VideoModel.from_pretrained('{WEIGHTS_ID}').save_pretrained('{path}')\" "
            f"(or: hf download {WEIGHTS_ID} --local-dir {path}) and copy {path} here")


def load_model(weights: str | Path, device: torch.device | str = "cpu") -> "Sam2VideoModel":
    """Load SAM 2 from a local HF-format directory (config.json + model.safetensors) or a .safetensors file.

    A bare ``.safetensors`` file uses the ``config.json`` beside it, or else the default config (hiera-tiny).
    Nothing is ever downloaded.
    """
    transformers = _transformers()
    path = Path(weights)
    if not path.exists():
        raise MasklamError(f"SAM 2 weights not found at {path}; {how_to_get_weights(path)}")
    try:
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise MasklamError(f"{path} has no config.json: not a HF-format SAM 2 directory; "
                                   f"{how_to_get_weights(path)}")
            model = transformers.Sam2VideoModel.from_pretrained(path, local_files_only=True)
        else:
            model = _load_state_file(transformers, path)
    except MasklamError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MasklamError(f"cannot load SAM 2 weights from {path} ({first})") from None
    return model.to(device).eval()


def _load_state_file(transformers, path: Path) -> "Sam2VideoModel":
    from safetensors.torch import load_file

    config_file = path.parent / "config.json"
    if config_file.is_file():
        config = transformers.Sam2VideoConfig.from_json_file(str(config_file))
    else:
        config = transformers.Sam2VideoConfig()
    model = transformers.Sam2VideoModel(config)
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise MasklamError(f"{path} does not fit "
                           f"Sam2VideoModel({'config.json' if config_file.is_file() else 'hiera-tiny'}):"
                           f" {len(missing)} missing tensors (e.g. {missing[:1]}), {len(unexpected)} unexpected")
    return model


def preprocess_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, size, size) float32: bilinear resize, [0, 1], ImageNet mean/std."""
    x = frames.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W) in [0, 1]
    if x.shape[-2:] != (size, size):
        # antialias only acts when shrinking (frames larger than the model's input), like the HF processor's resize
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def scale_box(box: tuple[float, float, float, float], frame_hw: tuple[int, int], size: int) -> torch.Tensor:
    """A box ``(x0, y0, x1, y1)`` in pixels of an ``H x W`` frame -> (1, 1, 2, 2) corners in the size x size input."""
    height, width = frame_hw
    x0, y0, x1, y1 = box
    sx, sy = size / width, size / height
    return torch.tensor([[[[x0 * sx, y0 * sy], [x1 * sx, y1 * sy]]]], dtype=torch.float32)


def upsample_logits(logits: torch.Tensor, frame_hw: tuple[int, int]) -> torch.Tensor:
    """(N, 1, h, w) low-resolution mask logits -> (N, H, W) logits at the frame size (bilinear); mask = logits > 0."""
    return F.interpolate(logits.float(), size=tuple(frame_hw), mode="bilinear", align_corners=False)[:, 0]


def _session_class():
    base = _transformers().models.sam2_video.modeling_sam2_video.Sam2VideoInferenceSession

    class LazyVideoSession(base):
        """A session over a uint8 video that preprocesses a frame only when asked, instead of storing the
        whole video as T x 3 x 1024 x 1024 floats (12 MB a frame)."""

        def __init__(self, video: Any, size: int, device: torch.device, cache_size: int):
            super().__init__(video=None, video_height=int(video.shape[1]), video_width=int(video.shape[2]),
                             inference_device=device, inference_state_device=device, video_storage_device=device,
                             dtype=torch.float32, max_vision_features_cache_size=cache_size)
            self.video = video  # (T, H, W, 3) uint8: an array or an HDF5 dataset, read a batch at a time
            self.size = size

        @property
        def num_frames(self) -> int:
            return int(self.video.shape[0])

        def get_frame(self, frame_idx: int) -> torch.Tensor:
            return self.pixels(frame_idx, frame_idx + 1)[0]

        def pixels(self, start: int, stop: int) -> torch.Tensor:
            """Frames start..stop-1 as the model's input, (B, 3, size, size) on the inference device."""
            frames = torch.from_numpy(np.ascontiguousarray(self.video[start:stop]))  # (B, H, W, 3) uint8
            return preprocess_frames(frames.to(self.inference_device), self.size)

    return LazyVideoSession


def _encode_frames(model: "Sam2VideoModel", session, start: int, stop: int) -> None:
    """Run the image encoder on frames start..stop-1 in one batch and put each frame's features in the cache."""
    out = model.get_image_features(session.pixels(start, stop), return_dict=True)
    # fpn_hidden_states / fpn_position_encoding: per level (h*w, B, C)
    for j, frame_idx in enumerate(range(start, stop)):
        session.cache.cache_vision_features(frame_idx, {
            "vision_feats": [f[:, j:j + 1] for f in out.fpn_hidden_states],
            "vision_pos_embeds": [p[:, j:j + 1] for p in out.fpn_position_encoding],
        })


def memory_window(model: "Sam2VideoModel") -> int:
    """How many past frames' outputs the model reads: mask memories and object pointers."""
    return max(int(model.num_maskmem), int(model.config.max_object_pointers_in_encoder))


@torch.inference_mode()
def segment_video(model: "Sam2VideoModel", video: Any, box: tuple[float, float, float, float],
                  batch: int = 8, progress: Callable[[int], object] | None = None,
                  masks_only: bool = False) -> np.ndarray:
    """Track the object inside ``box`` on frame 0 through ``video`` (T, H, W, 3) uint8 (an array, or an HDF5
    dataset read ``batch`` frames at a time) -> (T, H, W) float32 logits (``masks_only``: the masks, bool, a
    quarter of their memory).

    The mask is ``logits > 0``. ``batch`` frames go through the image encoder at once; ``progress(n)`` is
    called after every ``n`` finished frames.
    """
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise MasklamError(f"video must be (T, H, W, 3) uint8, got {video.shape} {video.dtype}")
    num_frames, height, width = video.shape[:3]
    out = np.zeros((num_frames, height, width), bool if masks_only else np.float32)
    if num_frames == 0:
        return out
    device = next(model.parameters()).device
    size = int(model.config.image_size)
    session = _session_class()(video, size, device, cache_size=batch)
    obj_idx = session.obj_id_to_idx(OBJ_ID)
    session.add_point_inputs(obj_idx, 0, {
        "point_coords": scale_box(box, (height, width), size),  # (1, 1, 2, 2): the box's two corners
        "point_labels": torch.tensor([[[2, 3]]], dtype=torch.int32),  # SAM's labels for box corners
    })
    session.obj_with_new_inputs = [OBJ_ID]
    window = memory_window(model)
    outputs = session.output_dict_per_obj[obj_idx]["non_cond_frame_outputs"]
    for start in range(0, num_frames, batch):
        stop = min(num_frames, start + batch)
        _encode_frames(model, session, start, stop)
        for frame_idx in range(start, stop):
            result = model(inference_session=session, frame_idx=frame_idx)
            # pred_masks: (1, 1, size/4, size/4) logits of the one object
            logits = upsample_logits(result.pred_masks, (height, width))[0].cpu().numpy()
            out[frame_idx] = logits > 0 if masks_only else logits
            outputs.pop(frame_idx + 1 - window, None)  # no later frame reads this one
        if progress is not None:
            progress(stop - start)
    return out
