"""Background videos for the skybox: a procedural generator (the default) and a DAVIS-2017 / video-folder loader.

Both sources share one interface, `VideoSource`: a list of integer video ids, `num_frames(id)` and
`frame(id, t) -> (R, R, 3) uint8` at the texture's face resolution R. Ids are global: the training
split's ids and the evaluation split's ids never overlap (procedural: train 0..59, eval 60..89), so a
`video_id` stored with a frame names one video, whichever split it came from.

Procedural videos are numpy only and deterministic per id: every random choice of video `i` comes from
`np.random.SeedSequence([_ENTROPY, split_code, i])`, so train and eval videos share no seed. A video is a
moving, textured scene (smooth multi-scale noise in a random palette, drifting and swaying) with several
moving, rotating, textured objects (ellipses and rounded boxes with their own noise or stripes) on top.
Frames are generated (or read) on first use and cached for the most recent `_KEEP_VIDEOS` videos only,
so memory stays small (an episode bounces over one video's ~100 frames, each reused ~10 times).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from masklam.errors import MasklamError

NUM_TRAIN_VIDEOS = 60
NUM_EVAL_VIDEOS = 30
SPLITS = ("train", "eval")
_ENTROPY = 0x6D61736B6C616D  # "masklam": the root of every procedural video's seed
_SPLIT_CODE = {"train": 0, "eval": 1}
_KEEP_VIDEOS = 2

# The DAVIS-2017 validation videos (the standard split), used when the dataset's own
# ImageSets/2017/val.txt is not there; every other video in JPEGImages/480p is a training video.
DAVIS17_VAL = (
    "bike-packing blackswan bmx-trees breakdance camel car-roundabout car-shadow cows dance-twirl dog "
    "dogs-jump drift-chicane drift-straight goat gold-fish horsejump-high india judo kite-surf lab-coat "
    "libby loading mbike-trick motocross-jump paragliding-launch parkour pigs scooter-black shooting soapbox"
).split()


class VideoSource:
    """Interface of a split's background videos at face resolution `size`."""

    size: int
    ids: list[int]
    _cache: dict[int, dict[int, np.ndarray]]

    def num_frames(self, video_id: int) -> int:
        raise NotImplementedError

    def frame(self, video_id: int, t: int) -> np.ndarray:
        """Frame `t` of video `video_id`: (size, size, 3) uint8 (cached for the latest videos)."""
        if video_id not in self.ids:
            raise MasklamError(f"video id {video_id} is not in this split (ids {self.ids[0]}..{self.ids[-1]})")
        if not 0 <= t < self.num_frames(video_id):
            raise MasklamError(f"frame {t} out of range for video {video_id} ({self.num_frames(video_id)} frames)")
        frames = self._cache.pop(video_id, {})
        self._cache[video_id] = frames  # most recent last
        while len(self._cache) > _KEEP_VIDEOS:
            self._cache.pop(next(iter(self._cache)))
        if t not in frames:
            frames[t] = self._load(video_id, t)
        return frames[t]

    def _load(self, video_id: int, t: int) -> np.ndarray:
        raise NotImplementedError


def video_seed(split: str, index: int) -> np.random.SeedSequence:
    """The seed sequence of procedural video `index` (0-based within its split)."""
    return np.random.SeedSequence([_ENTROPY, _SPLIT_CODE[split], index])


def split_ids(split: str) -> list[int]:
    """Global ids of the procedural split: train 0..59, eval 60..89."""
    if split == "train":
        return list(range(NUM_TRAIN_VIDEOS))
    return list(range(NUM_TRAIN_VIDEOS, NUM_TRAIN_VIDEOS + NUM_EVAL_VIDEOS))


def _smooth_noise(rng: np.random.Generator, n: int, slope: float) -> np.ndarray:
    """(n, n) periodic noise with a 1/f**slope spectrum, scaled to [0, 1]."""
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.rfftfreq(n)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    spec = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f**slope
    spec[0, 0] = 0.0
    x = np.fft.irfft2(spec, s=(n, n))
    x -= x.min()
    return x / max(float(x.max()), 1e-8)


def _palette(rng: np.random.Generator, field: np.ndarray, k: int) -> np.ndarray:
    """Colour a [0, 1] field (..., ) with k random colours interpolated along it -> (..., 3) float32."""
    colors = rng.uniform(0.0, 1.0, size=(k, 3))
    pos = np.linspace(0.0, 1.0, k)
    out = np.stack([np.interp(field, pos, colors[:, c]) for c in range(3)], axis=-1)
    return out.astype(np.float32)


@dataclass
class _Object:
    texture: np.ndarray  # (P, P, 3) float32, indexed by object-local coordinates
    radii: np.ndarray  # (2,) half-axes in pixels
    power: float  # 2 = ellipse, 4+ = rounded box
    pos: np.ndarray  # (2,) start position (y, x) in pixels
    vel: np.ndarray  # (2,) pixels per frame
    angle: float
    spin: float  # radians per frame
    wobble: np.ndarray  # (2,) amplitude of a sinusoidal detour, pixels
    wobble_freq: float


class ProceduralVideos(VideoSource):
    """The embedded default: 60 train / 30 eval natural-looking synthetic videos."""

    def __init__(self, split: str = "train", size: int = 128, num_frames: tuple[int, int] = (60, 120)):
        if split not in SPLITS:
            raise MasklamError(f"unknown video split {split!r}; one of: {', '.join(SPLITS)}")
        self.split, self.size, self._frame_range = split, size, num_frames
        self.ids = split_ids(split)
        self._specs: dict[int, dict] = {}
        self._cache = {}

    def seed_of(self, video_id: int) -> np.random.SeedSequence:
        """The seed sequence that determines video `video_id`."""
        return video_seed(self.split, self.ids.index(video_id))

    def _spec(self, video_id: int) -> dict:
        if video_id not in self._specs:
            if video_id not in self.ids:
                raise MasklamError(f"video id {video_id} is not in the {self.split} split")
            rng = np.random.default_rng(self.seed_of(video_id))
            n = 2 * self.size
            field = 0.7 * _smooth_noise(rng, n, rng.uniform(1.2, 2.2)) + 0.3 * _smooth_noise(rng, n, 0.9)
            scene = _palette(rng, field, int(rng.integers(2, 5)))
            speed = rng.uniform(0.3, 2.5)
            heading = rng.uniform(0, 2 * np.pi)
            objects = [self._make_object(rng) for _ in range(int(rng.integers(3, 7)))]
            self._specs[video_id] = dict(
                scene=scene,
                drift=speed * np.array([np.sin(heading), np.cos(heading)]),
                sway=rng.uniform(0, 0.1 * self.size, size=2),
                sway_freq=rng.uniform(0.02, 0.1),
                brightness=rng.uniform(0.7, 1.1),
                flicker=rng.uniform(0.0, 0.08),
                objects=objects,
                length=int(rng.integers(self._frame_range[0], self._frame_range[1] + 1)),
            )
            while len(self._specs) > 4 * _KEEP_VIDEOS:  # ~0.8 MB each; regenerating one costs ~20 ms
                self._specs.pop(next(iter(self._specs)))
        return self._specs[video_id]

    def _make_object(self, rng: np.random.Generator) -> _Object:
        s = self.size
        radii = rng.uniform(0.06 * s, 0.22 * s, size=2)
        p = int(np.ceil(2 * radii.max())) + 2
        if rng.random() < 0.5:  # stripes
            yy, xx = np.mgrid[0:p, 0:p] / p
            theta = rng.uniform(0, np.pi)
            field = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(1.5, 5) * (xx * np.cos(theta) + yy * np.sin(theta)))
        else:
            field = _smooth_noise(rng, p, rng.uniform(0.8, 2.0))
        return _Object(
            texture=_palette(rng, field, 2),
            radii=radii,
            power=float(rng.choice([2.0, 2.0, 4.0, 8.0])),
            pos=rng.uniform(0, s, size=2),
            vel=rng.normal(0, 1, size=2) * rng.uniform(0.3, 3.0),
            angle=rng.uniform(0, 2 * np.pi),
            spin=rng.normal(0, 0.05),
            wobble=rng.uniform(0, 0.15 * s, size=2),
            wobble_freq=rng.uniform(0.03, 0.15),
        )

    def num_frames(self, video_id: int) -> int:
        return int(self._spec(video_id)["length"])

    def _load(self, video_id: int, t: int) -> np.ndarray:
        s = self.size
        spec = self._spec(video_id)
        n = spec["scene"].shape[0]
        off = spec["drift"] * t + spec["sway"] * np.sin(spec["sway_freq"] * t)
        rows = (np.arange(s) + int(round(off[0]))) % n
        cols = (np.arange(s) + int(round(off[1]))) % n
        img = spec["scene"][rows[:, None], cols[None, :]].copy()  # (s, s, 3) float32
        img *= spec["brightness"] * (1.0 + spec["flicker"] * np.sin(0.3 * t))
        for ob in spec["objects"]:
            self._paint(img, ob, t)
        return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    def _paint(self, img: np.ndarray, ob: _Object, t: int) -> None:
        """Draw object `ob` at time t into img (s, s, 3) in place (positions bounce off the borders)."""
        s = self.size
        raw = ob.pos + ob.vel * t + ob.wobble * np.sin(ob.wobble_freq * t + ob.angle)
        pos = s - np.abs(np.mod(raw, 2 * s) - s)  # bounce inside [0, s]
        ang = ob.angle + ob.spin * t
        r = float(ob.radii.max()) + 1
        y0, y1 = int(max(pos[0] - r, 0)), int(min(pos[0] + r + 1, s))
        x0, x1 = int(max(pos[1] - r, 0)), int(min(pos[1] + r + 1, s))
        if y1 <= y0 or x1 <= x0:
            return
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dy, dx = yy - pos[0], xx - pos[1]
        c, si = np.cos(ang), np.sin(ang)
        u, v = c * dx + si * dy, -si * dx + c * dy  # object-local coordinates
        d = np.abs(u / ob.radii[1]) ** ob.power + np.abs(v / ob.radii[0]) ** ob.power
        alpha = np.clip((1.0 - d) * 8.0, 0.0, 1.0)[..., None]
        p = ob.texture.shape[0]
        tu = np.clip((u + p / 2).astype(np.int64), 0, p - 1)
        tv = np.clip((v + p / 2).astype(np.int64), 0, p - 1)
        patch = img[y0:y1, x0:x1]
        patch += alpha * (ob.texture[tv, tu] - patch)


VIDEO_SUFFIXES = (".jpg", ".jpeg", ".png")
"""frame files of a video folder (sorted by name = frame order)"""


def davis_images(root: str | Path) -> Path | None:
    """The frame folder of a DAVIS-2017 root (`JPEGImages/480p`, or `JPEGImages/Full-Resolution`), else None."""
    for sub in ("480p", "Full-Resolution"):
        if (Path(root).expanduser() / "JPEGImages" / sub).is_dir():
            return Path(root).expanduser() / "JPEGImages" / sub
    return None


def video_folders(root: str | Path) -> tuple[Path, dict[str, list[Path]]]:
    """The video folders under `root` -> (the folder holding them, {video name: sorted frame files}).

    Layouts: DAVIS (`root/JPEGImages/480p/<video>/*.jpg`, or `JPEGImages/Full-Resolution`), or any folder of
    videos (`root/<video>/*.jpg|*.jpeg|*.png`). MasklamError (one line) for a missing folder or one without
    videos, so callers can check a `background_path` before any work.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MasklamError(f"no background videos: {root} is not a folder (expected a DAVIS-2017 root with "
                           "JPEGImages/480p/<video>/*.jpg, or a folder of <video>/*.jpg folders)")
    img_dir = davis_images(root) or root
    videos = {p.name: sorted(f for f in p.iterdir() if f.suffix.lower() in VIDEO_SUFFIXES)
              for p in sorted(img_dir.iterdir()) if p.is_dir()}
    videos = {k: v for k, v in videos.items() if v}
    if not videos:
        raise MasklamError(f"no background videos: {img_dir} holds no <video>/*.jpg folders")
    return img_dir, videos


def video_split_names(root: str | Path, names: list[str]) -> tuple[list[str], list[str]]:
    """(train, eval) video names of a video folder, disjoint, each sorted. In order of precedence:

    1. `root/ImageSets/2017/{train,val}.txt` (DAVIS-2017's own split files; either one alone: the rest is
       the other split);
    2. a DAVIS-2017 root (its layout, `davis_images`): the standard DAVIS-2017 split, the `DAVIS17_VAL`
       videos held out, every other one for training (a train-only download has no eval videos);
    3. any other folder of videos (DAVIS names or not): every third video by sorted name (the 3rd, 6th, ...)
       is held out, like the procedural videos' 60 train / 30 eval; two videos: the second is held out; one:
       training only.
    """
    names = sorted(names)
    sets = Path(root).expanduser() / "ImageSets" / "2017"
    val_file, train_file = sets / "val.txt", sets / "train.txt"
    if val_file.is_file() or train_file.is_file():
        val = set(val_file.read_text().split()) if val_file.is_file() else None
        train = set(train_file.read_text().split()) if train_file.is_file() else None
        if train is None:
            train = set(names) - val
        if val is None:
            val = set(names) - train
    elif davis_images(root) is not None:
        val = set(DAVIS17_VAL)
        train = set(names) - val
    else:
        val = {n for i, n in enumerate(names) if i % 3 == 2 or (len(names) == 2 and i == 1)}
        train = set(names) - val
    train_names = [n for n in names if n in train]
    return train_names, [n for n in names if n in val and n not in train]


class DavisVideos(VideoSource):
    """Videos of a folder: DAVIS-2017 (`root/JPEGImages/480p/<video>/*.jpg`) or any `root/<video>/*.jpg`.

    The train/eval split is `video_split_names`'s (DAVIS's standard split for DAVIS). Ids index the sorted
    training names first, then the held-out names, so the two splits' ids are disjoint. Frames are read with
    PIL on first use, resized to (size, size), and cached.
    """

    def __init__(self, root: str | Path, split: str = "train", size: int = 128):
        if split not in SPLITS:
            raise MasklamError(f"unknown video split {split!r}; one of: {', '.join(SPLITS)}")
        img_dir, videos = video_folders(root)
        train, val = video_split_names(root, list(videos))
        names = train + val
        self.size, self.split = size, split
        self._names = names
        self._files = videos
        self.ids = list(range(len(train))) if split == "train" else list(range(len(train), len(names)))
        if not self.ids:
            raise MasklamError(f"no {split} videos in {img_dir} (its {len(videos)} videos are all in the "
                               f"{'eval' if split == 'train' else 'train'} split)")
        self._cache = {}

    def name(self, video_id: int) -> str:
        """The folder name of a video id."""
        return self._names[video_id]

    def num_frames(self, video_id: int) -> int:
        return len(self._files[self._names[video_id]])

    def _load(self, video_id: int, t: int) -> np.ndarray:
        from PIL import Image

        path = self._files[self._names[video_id]][t]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
                return np.asarray(im, dtype=np.uint8)
        except OSError as e:
            raise MasklamError(f"cannot read background frame {path}: {e}") from None


VIDEO_SPLIT_OF = {"id": "train", "ood": "eval"}
"""an evaluation split (in-distribution, out-of-distribution) -> the background videos it plays"""


def check_background_path(path: str | Path, split: str = "train") -> None:
    """A missing `background_path` folder, one without videos, or one without `split` videos, as one line
    (callers check before any work)."""
    DavisVideos(path, split, 16)


def load_videos(split: str = "train", size: int = 128, path: str | Path | None = None) -> VideoSource:
    """The background videos of a split: procedural by default, DAVIS-2017 (or any folder of videos) from `path`."""
    if path is None:
        return ProceduralVideos(split, size)
    return DavisVideos(path, split, size)
