"""`masklam label --lam RUN --data DATA --out OUT`: every frame's latent action, written into a copy of the data.

``latent_action[t]`` is the LAM's latent of the transition (o_t, o_{t+1}) (k = 1, frame stacks as the LAM was
trained, its agent masks where it takes them); the last frame of an episode, which has no successor, gets
the latent of (o_{T-1}, o_{T-1}) (a repeated frame), so there is one row per frame. With ``--decoder`` (an
action decoder over the LAM's latents: input ``latent``, latent_dim equal to the LAM's) ``decoded_action[t]``
= decoder(latent_action[t]) as well.

- DATA a LeRobot dataset (v3.0 or v2.x) -> OUT a copy of it with the new feature ``latent_action`` (and
  ``decoded_action``) in every data file, meta/info.json and meta/stats.json (its videos and images hard links to
  the source's, where the file system allows); frames are read at the LAM's size (``--resize``: centre crop or
  letterbox, as `masklam import`).
- DATA an HDF5 dataset -> OUT (.h5) a copy with ``latent_action (T, D)`` (and ``decoded_action (T, A)``) in
  every trajectory group.
- DATA video (a file or a folder of them) or a folder of image folders -> OUT (.h5): imported first as the LAM's
  training data were, then labelled as an HDF5 dataset (`masklam.downstream.label_video`).
Batched (``--batch-size``), on the GPU when there is one (``--device auto``). OUT appears only complete.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from masklam.args import parse
from masklam.devices import resolve_device
from masklam.errors import MasklamError, note_once
from masklam.files import config_record, read_json, write_json
from masklam.locks import output_lock

LATENT, DECODED = "latent_action", "decoded_action"


@dataclass
class LabelConfig:
    """Write every frame's latent action (and decoded action) into a copy of a LeRobot dataset or HDF5 file: row t
    is the transition from frame t to t+1; an episode's last row, which has no next frame, is the latent of its last
    frame paired with itself."""

    lam: Path
    """latent action model: a run directory (written by `masklam pretrain`) or a Hugging Face Hub repo id"""
    data: Path
    """a LeRobot dataset directory (v3.0 or v2.x) or its Hugging Face Hub repo id ("user/name": fetched whole into
    the Hugging Face cache), an HDF5 dataset file, or video (a file or a folder of them; a folder of image folders),
    imported first as the LAM's training data were"""
    out: Path
    """output: a directory for a LeRobot dataset, a .h5 file for HDF5 or video (must not exist)"""
    decoder: Path | None = None
    """an action decoder over the LAM's latents (input 'latent'); adds decoded_action"""
    camera: str | None = None
    """LeRobot dataset: the camera the LAM sees (default: the camera of the LAM's training data when the dataset has
    one of that name, else its only one)"""
    resize: Literal["crop", "letterbox"] | None = None
    """how frames of another size become the LAM's square input, as `masklam import` (default: as the LAM's
    training data were imported, else crop)"""
    batch_size: int = 256
    """transitions per forward pass"""
    any_fps: bool = False
    """label data whose frame rate differs from the LAM's training video (its latents then span another interval)"""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, cuda:N"""
    revision: str | None = None
    """Hub dataset (--data a repo id): the branch, tag or commit to fetch; default: main."""
    fps: float | None = None
    """video: the frame rate it is imported at before labelling (default: the LAM's training video's where it has one
    and the video is at least as fast, else the video's own); image folders: the rate they were recorded at"""
    recursive: bool = False
    """video: a folder's videos (or image folders) in its subfolders too, as `masklam import --recursive`"""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise MasklamError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.fps is not None and not self.fps > 0:
            raise MasklamError(f"--fps must be > 0, got {self.fps}")


CHUNK = 4096
"""Frames labelled at a time: memory holds a chunk of an episode, not the episode (an hour of 30 fps video at 128 px
is 5 GB of frames)."""


@torch.no_grad()
def episode_latents(lam: Any, obs: np.ndarray | Iterator[np.ndarray], masks: np.ndarray | None, batch_size: int,
                    chunk: int = CHUNK) -> np.ndarray:
    """(T, H, W, 3) uint8 frames, or an iterator of (H, W, 3) ones [+ (T, H, W) bool masks] -> (T, D) float32
    latents of (o_t, o_{t+1}); the last row is that of (o_{T-1}, o_{T-1}). Frames are read `chunk` at a time, each
    chunk after the first with the frame_stack - 1 frames before it, so the result is the whole episode's."""
    context = max(lam.frame_stack - 1, 0)
    out: list[np.ndarray] = []
    before: list[np.ndarray] = []  # the frames just before the chunk (fewer at the episode's start: its clamp)
    buf: list[np.ndarray] = []  # the chunk, and the first frame after it
    start = 0  # episode index of buf[0]
    for frame in obs:
        buf.append(frame)
        if len(buf) == chunk + 1:
            out.append(_chunk_latents(lam, before, buf, masks, start, batch_size, last=False))
            before = (before + buf[:chunk])[-context:] if context else []
            start, buf = start + chunk, buf[chunk:]
    if buf:
        out.append(_chunk_latents(lam, before, buf, masks, start, batch_size, last=True))
    if not out:
        raise MasklamError("an episode without frames has no latent actions")
    return np.concatenate(out)


def latent_actions(lam: Any, frames: np.ndarray, masks: np.ndarray | None = None, resize: str | None = None,
                   batch_size: int = 256) -> np.ndarray:
    """Every frame's latent action from frames in memory (a notebook's `masklam label`): (T, H, W, 3) uint8 of any
    size, made square at the LAM's size as `masklam import --resize` makes them (default: as the LAM's training data
    were imported, where its run records it, else crop) [+ (T, H, W) bool agent masks, for a LAM that reads them]
    -> (T, D) float32. Row t is (o_t, o_{t+1}); the last row (o_{T-1}, o_{T-1}). `lam`: a LatentActionModel, its
    run directory or a Hub repo id."""
    from masklam.data.video import Resizer
    from masklam.models.lam import load_lam
    from masklam.train.checkpoint import lam_config

    if isinstance(lam, (str, Path)):
        resize = resize or lam_config(lam).get("data_resize")
        lam = load_lam(lam)
    resize = resize or "crop"
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise MasklamError(f"frames must be (T, H, W, 3) uint8 with T >= 1, got {frames.shape} {frames.dtype}")
    takes_masks = bool(getattr(lam.cfg, "mask_channel", False))
    if takes_masks != (masks is not None):
        raise MasklamError("this LAM reads agent masks: pass masks (T, H, W) bool" if takes_masks else
                           "this LAM reads no masks (it was not trained with --mask-channel): pass masks=None")
    if masks is not None and (np.shape(masks) != frames.shape[:3] or np.asarray(masks).dtype != bool):
        raise MasklamError(f"masks must be (T, H, W) bool like the frames {frames.shape[:3]}, got "
                           f"{np.shape(masks)} {np.asarray(masks).dtype}")
    size = int(lam.cfg.img_hw)
    if frames.shape[1:3] != (size, size):
        resizer = Resizer(size, resize)
        frames = np.stack([resizer.array(f) for f in frames])  # (T, size, size, 3)
        masks = None if masks is None else np.stack([resizer.mask(m) for m in np.asarray(masks)])
    was = lam.training
    lam.eval()
    try:
        return episode_latents(lam, frames, masks, batch_size)
    finally:
        lam.train(was)


def _chunk_latents(lam: Any, before: list[np.ndarray], buf: list[np.ndarray], masks: np.ndarray | None, start: int,
                   batch_size: int, last: bool) -> np.ndarray:
    """Latents of the windows at t = start .. start + len(buf) - 2 (and, when `last`, of the final frame paired
    with itself): the frames `before` give their stacks' history."""
    from masklam.data import TrajectoryData, WindowSampler

    obs = np.stack(before + buf + (buf[-1:] if last else []))  # (C + L [+ 1], H, W, 3)
    if masks is not None:
        masks = masks[start - len(before):start + len(buf)]
        masks = np.concatenate([masks, masks[-1:]]) if last else masks
    n = len(obs)
    data = TrajectoryData(obs=obs, actions=np.zeros((n, 0), np.float32), states=np.zeros((n, 0), np.float32),
                          rewards=None, masks=masks, traj_starts=np.zeros(1, np.int64),
                          traj_lengths=np.array([n], np.int64), traj_returns=np.full(1, np.nan), sources=[],
                          meta={"files": []}, mask_key="masks" if masks is not None else None).masks_taken()
    sampler = WindowSampler(data, frame_stack=lam.frame_stack, max_offset=1, need_masks=masks is not None)
    out = [lam.label(batch).float().cpu().numpy() for batch in sampler.all_windows(batch_size, k=1)]
    return np.concatenate(out).astype(np.float32)[len(before):]  # (L - 1, D), or (L, D) when last


class Labeller:
    """A frozen LAM (and decoder) turning one episode's frames into its per-frame label arrays."""

    def __init__(self, cfg: LabelConfig) -> None:
        from masklam.downstream.decoder import ActionDecoder
        from masklam.models.lam import load_lam
        from masklam.train.checkpoint import lam_config, mask_key_of

        self.device = resolve_device(cfg.device)
        self.lam = load_lam(cfg.lam, self.device)
        run = lam_config(cfg.lam)
        self.mask_key = mask_key_of(run)
        self.data_fps = run.get("data_fps")
        self.size = int(self.lam.cfg.img_hw)
        self.batch_size = cfg.batch_size
        self.decoder = None
        if cfg.decoder is not None:
            self.decoder = ActionDecoder.from_pretrained(cfg.decoder, self.device)
            dims = self.decoder.dims
            from masklam.downstream.decode import lam_source

            if dims.get("source") != lam_source(cfg.lam):
                raise MasklamError(f"{cfg.decoder} was not trained on the latents of {cfg.lam} (it reads "
                                   f"{dims.get('source') or 'a latent policy'}): train one with `masklam decode "
                                   f"--lam {cfg.lam} --data DATA --labels N --out DIR`")
            if dims["input"] != "latent" or dims["latent_dim"] != self.lam.latent_dim:
                raise MasklamError(f"{cfg.decoder}: a decoder reading {dims['input']} of width {dims['latent_dim']}; "
                                   f"labelling needs one over the LAM's latents (input latent, width "
                                   f"{self.lam.latent_dim})")

    def __call__(self, obs: np.ndarray | Iterator[np.ndarray], masks: dict[str, np.ndarray], where: str
                 ) -> dict[str, np.ndarray]:
        """(T, S, S, 3) frames (or an iterator of them) and their masks -> {latent_action (T, D)[, decoded_action
        (T, A)]}."""
        mask = None
        if self.mask_key is not None:
            if self.mask_key not in masks:
                raise MasklamError(f"{where} has no {self.mask_key!r} masks; this LAM takes them as input")
            mask = masks[self.mask_key]
            if not mask.any():  # the segmenter found no agent in this episode: labelled, and said once
                note_once(("empty-masks", where), f"{where}: its {self.mask_key!r} masks are empty in every frame (the "
                          "segmenter found no agent there); labelled as it is")
        z = episode_latents(self.lam, obs, mask, self.batch_size)
        out = {LATENT: z}
        if self.decoder is not None:
            with torch.no_grad():
                a = self.decoder(torch.from_numpy(z).to(self.device)).clamp(-1, 1)
            out[DECODED] = a.float().cpu().numpy()
        return out


def _label_source(cfg: LabelConfig, labeller: Labeller, source: Any) -> dict[str, list[np.ndarray]]:
    """Labels of every item of the source, in item order: {name: [(T, D) per item]}."""
    from masklam.data.video import Resizer

    resizer = Resizer(labeller.size, cfg.resize)
    items = source.items()
    out: dict[str, list[np.ndarray]] = {}
    bar = tqdm(total=sum(int(i.length or 0) for i in items), unit="frame", desc="label", disable=not cfg.progress)
    try:
        for item in items:
            ep = source.read(item, resizer)
            labels = labeller(_counted(ep.frames, bar), ep.masks, f"{item.path} ({item.name})")  # streamed
            for key, value in labels.items():
                out.setdefault(key, []).append(value)
    finally:
        bar.close()
    return out


def _counted(frames: Iterator[np.ndarray], bar: Any) -> Iterator[np.ndarray]:
    """The frames, each counted on the progress bar as it is read."""
    for frame in frames:
        bar.update(1)
        yield frame


def label(cfg: LabelConfig) -> Path:
    """Write the labelled copy ``cfg.out``; returns it."""
    from masklam.data.formats import DESCRIPTIONS, detect
    from masklam.data.sources import open_source

    from masklam.data.hub import fetch_dataset, is_hub_dataset

    if cfg.out.exists():
        raise MasklamError(f"{cfg.out} already exists; remove it or choose another --out")
    if is_hub_dataset(cfg.data):  # the whole dataset (every camera): the labelled copy is all of it
        from masklam.train.checkpoint import lam_config

        if cfg.recursive:
            raise MasklamError(f"--recursive reads the subfolders of a folder of videos; {cfg.data} is a Hub dataset")
        lam_config(cfg.lam)  # a wrong --lam is one line before a download
        cfg = dataclasses.replace(cfg, data=fetch_dataset(str(cfg.data), revision=cfg.revision, whole=True).path)
    elif cfg.revision is not None:
        raise MasklamError(f"--revision picks a Hub dataset's version; {cfg.data} is a local path")
    if detect(cfg.data, recursive=cfg.recursive) in VIDEO_KINDS:
        return _label_video(cfg)
    if cfg.fps is not None:
        raise MasklamError(f"--fps resamples video before labelling; {cfg.data} is labelled at its own rate (resample "
                           f"it with masklam import {cfg.data} --fps {cfg.fps:g} --out DATA.h5)")
    cfg = as_trained(cfg)
    source = open_source(cfg.data, cfg.camera, recursive=cfg.recursive)
    try:
        if source.kind not in ("lerobot", "hdf5"):
            raise MasklamError(f"{cfg.data} is {DESCRIPTIONS[source.kind]}; label writes into a LeRobot dataset or "
                               f"an HDF5 file (masklam import {cfg.data} --out DATA.h5 first)")
        if source.kind == "hdf5" and cfg.out.suffix != ".h5":
            raise MasklamError(f"--out must end in .h5 for an HDF5 dataset, got {cfg.out}")
        if source.kind == "lerobot" and cfg.out.suffix.lower() in (".h5", ".hdf5"):
            raise MasklamError(f"--out is the labelled LeRobot dataset's directory; {cfg.out} is named like an HDF5 "
                               "file (label writes a LeRobot dataset as one)")
        with output_lock(cfg.out, ", or choose another --out"):
            label_into(cfg, source, config_record(cfg), Labeller(cfg))
    finally:
        source.close()
    return cfg.out


VIDEO_KINDS = ("videos", "frames")
"""Formats `label` imports before labelling (`masklam.data.formats.FORMATS`): `masklam.downstream.label_video`."""


def _label_video(cfg: LabelConfig) -> Path:
    """`label` for video or image folders: imported as the LAM's training data were made (`label_video.imported`),
    labelled as an HDF5 dataset, the import removed."""
    from masklam.data.sources import open_source
    from masklam.downstream.label_video import check_request, imported, work_folder

    check_request(cfg)
    labeller = Labeller(cfg)  # the LAM and --decoder checked first (a decoder given as --lam: one line)
    cfg = as_trained(cfg)
    with output_lock(cfg.out, ", or choose another --out"):
        frames, fps = imported(cfg, labeller)
        source = open_source(frames)
        try:
            record = config_record(dataclasses.replace(cfg, fps=fps))  # the rate it was labelled at
            label_into(dataclasses.replace(cfg, data=frames), source, record, labeller)
        finally:
            source.close()
        shutil.rmtree(work_folder(cfg.out))
    return cfg.out


def label_into(cfg: LabelConfig, source: Any, record: dict[str, Any], labeller: Labeller) -> None:
    """Label every item of `source` (LeRobot or HDF5) and write the copy ``cfg.out`` (`record`: how, kept in it);
    called holding ``cfg.out``'s lock."""
    if cfg.out.exists():  # written by another run since label() looked
        raise MasklamError(f"{cfg.out} already exists; remove it or choose another --out")
    if not cfg.any_fps:
        from masklam.train.checkpoint import check_fps

        check_fps(cfg.lam, labeller.data_fps, cfg.data, source.fps)
    _check_space(cfg, source, labeller)
    labels = _label_source(cfg, labeller, source)
    if source.kind == "lerobot":
        _write_lerobot(cfg, source, labels, record)
    else:
        _write_hdf5(cfg, source, labels, record)


def _check_space(cfg: LabelConfig, source: Any, labeller: Labeller) -> None:
    """One line before labelling when OUT's disk cannot hold the copy: the source (a LeRobot dataset's videos and
    images only where a trial link shows they will be linked, `_media_linked`) and the labels (float32 per frame)."""
    from masklam.resources import check_free_space

    data = Path(cfg.data)
    if data.is_dir():
        files = [Path(d) / name for d, _, names in os.walk(data, followlinks=True) for name in names]  # as copytree
        media = [f for f in files if _is_media(f, data)]
        linked = set(media) if media and _can_link(media[0], cfg.out) else set()
        need = sum(f.stat().st_size for f in files if f not in linked)
    else:
        need = data.stat().st_size
    width = labeller.lam.latent_dim + (int(labeller.decoder.dims["action_dim"]) if labeller.decoder else 0)
    need += 4 * width * sum(int(item.length or 0) for item in source.items())
    check_free_space(cfg.out, need, f"the labelled copy {cfg.out}")


def _can_link(src: Path, out: Path) -> bool:
    """Whether a hard link of `src` can be made beside `out` (same file system, and allowed: Linux refuses links to
    files one may not write, fs.protected_hardlinks); the trial link is removed at once."""
    parent = next(p for p in out.absolute().parents if p.exists())
    trial = parent / f".{out.name}.link-{os.getpid()}"
    try:
        os.link(src, trial)
    except OSError:
        return False
    trial.unlink()
    return True


def as_trained(cfg: LabelConfig) -> LabelConfig:
    """`cfg` with the camera and resize mode of the LAM's training data (its config.json's data_camera, data_resize,
    from the imported file) where not given; a given one that differs is noted (the LAM then sees other frames)."""
    from masklam.data.lerobot import lerobot_cameras
    from masklam.data.formats import detect
    from masklam.train.checkpoint import lam_config

    run = lam_config(cfg.lam)
    camera, resize = run.get("data_camera"), run.get("data_resize")
    for name, given, trained in (("camera", cfg.camera, camera), ("resize", cfg.resize, resize)):
        if given is not None and trained and given != trained:
            note_once(("label-" + name, str(cfg.lam)), f"the LAM {cfg.lam} was trained on frames imported with "
                      f"--{name} {trained}; labelling with --{name} {given}")
    if cfg.camera is None and camera and detect(cfg.data) == "lerobot":
        if camera in lerobot_cameras(read_json(Path(cfg.data) / "meta" / "info.json")):
            cfg = dataclasses.replace(cfg, camera=camera)
    return dataclasses.replace(cfg, resize=cfg.resize or resize or "crop")


def _note_replaced(cfg: LabelConfig) -> None:
    note_once(("replaced-latents", str(cfg.out)), f"{cfg.data} held {LATENT} from an earlier labelling; {cfg.out} "
              f"holds this LAM's ({cfg.lam}) in its place")


def _note_stale_decoded(cfg: LabelConfig) -> None:
    note_once(("stale-decoded", str(cfg.out)), f"{cfg.data} held {DECODED} from an earlier labelling; left out of "
              f"{cfg.out} (it decoded other latents): pass --decoder to decode these")


def _write_lerobot(cfg: LabelConfig, source: Any, labels: dict[str, list[np.ndarray]], record: dict[str, Any]
                   ) -> None:
    from masklam.data.lerobot_writer import add_feature, drop_feature

    tmp = cfg.out.with_name(cfg.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(cfg.data, tmp, copy_function=_media_linked(Path(cfg.data)))
        if LATENT in read_json(tmp / "meta" / "info.json")["features"]:
            _note_replaced(cfg)
        indices = [item.ref.index for item in source.items()]
        for key, values in labels.items():
            add_feature(tmp, key, dict(zip(indices, values)))
        if DECODED not in labels and DECODED in read_json(tmp / "meta" / "info.json")["features"]:
            drop_feature(tmp, DECODED)  # decoded from an earlier labelling's latents: not these
            _note_stale_decoded(cfg)
        info = read_json(tmp / "meta" / "info.json")
        write_json(tmp / "meta" / "info.json", {**info, "masklam_label": record}, indent=4)
        os.replace(tmp, cfg.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _is_media(path: Path, root: Path) -> bool:
    """Whether `path` is one of the LeRobot dataset at `root`'s videos or images (files label never rewrites)."""
    return path.is_relative_to(root / "videos") or path.is_relative_to(root / "images")


def _media_linked(root: Path) -> Callable[[str, str], Any]:
    """copytree's copy function for a LeRobot dataset at `root`: its videos and images hard-linked, not copied (label
    rewrites only data/ and meta/, each file by a new one, so the source's media stay as they were, and a dataset of
    hours of video is not on the disk twice); everything else copied, and media too where a link cannot be made
    (another file system)."""
    def copy(src: str, dst: str) -> Any:
        if _is_media(Path(src), root):
            try:
                os.link(src, dst)
                return dst
            except OSError:
                pass
        return shutil.copy2(src, dst)

    return copy


def _write_hdf5(cfg: LabelConfig, source: Any, labels: dict[str, list[np.ndarray]], record: dict[str, Any]
                ) -> None:
    from masklam.data.hdf5 import write_atomically
    from masklam.models.pretrained import source_name

    with write_atomically(cfg.out, start_from=cfg.data) as f:
        stale = False
        for i, item in enumerate(source.items()):
            group = f[item.ref]
            if LATENT in group:
                _note_replaced(cfg)
            for key, values in labels.items():
                if key in group:
                    del group[key]
                group.create_dataset(key, data=values[i], fletcher32=True)
            if DECODED not in labels and DECODED in group:  # decoded from an earlier labelling's latents
                del group[DECODED]
                stale = True
        if stale:
            _note_stale_decoded(cfg)
        f.attrs["latent_lam"] = source_name(cfg.lam)
        if cfg.decoder is not None:
            f.attrs["action_decoder"] = source_name(cfg.decoder)
        elif "action_decoder" in f.attrs:  # an earlier labelling's, whose decoded_action is gone
            del f.attrs["action_decoder"]
        f.attrs["label_config"] = json.dumps(record)  # how the labels were made


def main(argv: list[str]) -> int:
    cfg = parse(LabelConfig, argv)
    out = label(cfg)
    print(f"{out}: {LATENT}{' and ' + DECODED if cfg.decoder else ''} for every frame of {cfg.data}")
    return 0
