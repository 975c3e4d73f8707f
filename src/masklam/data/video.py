"""Frames in and out of video files and image files, with PyAV (the `av` wheel bundles FFmpeg: h264, AV1 via
libdav1d, VP9, ...), and the one resize every importer uses.

- `Resizer`: a frame of any size -> a square ``size x size`` RGB frame, by centre crop (``crop``: the short
  side fills the frame, the long side's ends are cut) or letterbox (``letterbox``: the long side fills the
  frame, black bars pad the short side); video frames are scaled inside FFmpeg (area interpolation) before
  they become arrays, so a large video costs little more than a small one.
- `VideoReader`: the frames of one file from a time on (seeking only when needed), as (H, W, 3) uint8.
- `VideoWriter`: (n, H, W, 3) uint8 frames -> an mp4 file (h264 with libx264, else mpeg4; or AV1).
Every decoding error is a one-line MasklamError naming the file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from masklam.errors import MasklamError

VIDEO_SUFFIXES = (".mp4", ".m4v", ".webm", ".mkv", ".avi", ".mov", ".gif", ".mpg", ".mpeg", ".mts", ".m2ts", ".ts",
                  ".wmv", ".flv", ".3gp")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SAME_RATE = 0.01
"""Frame rates within this fraction of each other are one rate (29.97 and 30 fps): import neither resamples nor
refuses between them, and label accepts video at either for a LAM trained on the other."""


def same_rate(a: float, b: float) -> bool:
    """True when frame rates `a` and `b` differ by at most SAME_RATE of the larger."""
    return abs(a - b) <= SAME_RATE * max(a, b)
RESIZE_MODES = ("crop", "letterbox")
CODECS = ("h264", "av1")


def _av() -> Any:
    try:
        import av
    except ImportError:  # pragma: no cover - a dependency
        raise MasklamError("reading video needs PyAV: pip install av") from None
    av.logging.set_level(av.logging.PANIC)  # FFmpeg's own warnings would interleave with the progress bar
    return av


def _errors() -> tuple[type[BaseException], ...]:
    av = _av()
    return (av.error.FFmpegError, OSError, ValueError, EOFError)


def _first_line(e: BaseException) -> str:
    """The first line of an error's text, without FFmpeg's "[Errno 1094995529] " code (its AVERROR, noise here)."""
    text = str(e).strip().splitlines()
    return re.sub(r"^\[Errno -?\d+\] ", "", text[0]) if text else type(e).__name__


class Resizer:
    """(H, W, 3) frames of any size -> (size, size, 3) uint8 by centre crop or letterbox (RESIZE_MODES)."""

    def __init__(self, size: int, mode: str = "crop") -> None:
        if size < 8:
            raise MasklamError(f"--img-size must be >= 8, got {size}")
        if mode not in RESIZE_MODES:
            raise MasklamError(f"unknown resize mode {mode!r}; one of {', '.join(RESIZE_MODES)}")
        self.size, self.mode = size, mode

    def scaled(self, h: int, w: int) -> tuple[int, int]:
        """The (height, width) a frame is scaled to before it is cropped or padded to the square."""
        side = min(h, w) if self.mode == "crop" else max(h, w)
        return max(1, round(h * self.size / side)), max(1, round(w * self.size / side))

    def square(self, img: np.ndarray) -> np.ndarray:
        """A frame (or mask) already scaled by `scaled` -> (size, size[, 3]): centre crop or centred black
        (False) padding."""
        h, w = img.shape[:2]
        s = self.size
        if (h, w) == (s, s):
            return np.ascontiguousarray(img)
        if self.mode == "crop":
            top, left = (h - s) // 2, (w - s) // 2
            return np.ascontiguousarray(img[top:top + s, left:left + s])
        out = np.zeros((s, s) + img.shape[2:], img.dtype)
        top, left = (s - h) // 2, (s - w) // 2
        out[top:top + h, left:left + w] = img
        return out

    def array(self, img: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (size, size, 3) uint8 (antialiased bilinear scaling)."""
        h, w = img.shape[:2]
        sh, sw = self.scaled(h, w)
        if (sh, sw) != (h, w):
            from PIL import Image

            img = np.asarray(Image.fromarray(img).resize((sw, sh), Image.BILINEAR))
        return self.square(img)

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) bool agent mask -> (size, size) bool, scaled nearest-neighbour like its frame."""
        h, w = mask.shape[:2]
        sh, sw = self.scaled(h, w)
        if (sh, sw) != (h, w):
            from PIL import Image

            mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((sw, sh), Image.NEAREST)) > 127
        return self.square(np.asarray(mask, bool))

    def video_frame(self, frame: Any, pixel_aspect: float = 1.0) -> np.ndarray:
        """A decoded av.VideoFrame -> (size, size, 3) uint8, scaled by FFmpeg (bilinear), upright (`upright`), its
        pixels square (`pixel_aspect`: the stream's sample aspect ratio, width over height of a stored pixel)."""
        turns = quarter_turns(frame)
        width = max(1, round(frame.width * pixel_aspect))  # as displayed, before turning
        h, w = (width, frame.height) if turns % 2 else (frame.height, width)  # as displayed
        sh, sw = self.scaled(h, w)
        if (sh, sw) == (h, w) and width == frame.width:
            return self.square(upright(frame.to_ndarray(format="rgb24"), turns))
        stored_h, stored_w = (sw, sh) if turns % 2 else (sh, sw)
        scaled = frame.reformat(width=stored_w, height=stored_h, format="rgb24", interpolation="BILINEAR")
        return self.square(upright(scaled.to_ndarray(), turns))


def quarter_turns(frame: Any) -> int:
    """Counter-clockwise quarter turns (0-3) a decoded frame's display matrix asks for (a phone's portrait video
    is stored landscape with rotation -90: one clockwise turn)."""
    return round((getattr(frame, "rotation", 0) or 0) / 90) % 4


def upright(img: np.ndarray, turns: int) -> np.ndarray:
    """(H, W, C) as stored -> as displayed, `turns` counter-clockwise quarter turns (`quarter_turns`)."""
    return np.ascontiguousarray(np.rot90(img, turns)) if turns else img


def _image_errors() -> tuple[type[BaseException], ...]:
    """What PIL raises for a file that is not a readable image (a broken PNG chunk: SyntaxError)."""
    from PIL import Image

    return OSError, SyntaxError, ValueError, Image.DecompressionBombError


def decode_image(src: Any, what: str) -> np.ndarray:
    """An image file (path or file object) -> (H, W, 3) uint8 RGB; MasklamError '`what` is not a readable image'."""
    from PIL import Image

    try:
        with Image.open(src) as im:
            return np.asarray(im.convert("RGB"), np.uint8)
    except _image_errors() as e:
        raise MasklamError(f"{what} is not a readable image ({_first_line(e)})") from None


def read_image(path: Path) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB; MasklamError naming the file when it is not a readable image."""
    return decode_image(path, str(path))


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file from its header alone."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except _image_errors() as e:
        raise MasklamError(f"{path} is not a readable image ({_first_line(e)})") from None


@dataclass
class VideoInfo:
    """What a video file's header says."""

    path: Path
    fps: float
    frames: int
    """frame count the container states (0 when it states none)"""
    height: int
    width: int
    codec: str
    duration: float
    """seconds (0 when unknown)"""

    @property
    def decoded_frames(self) -> int:
        """The frames a decoder yields: the stated count, less those an edit list cuts (a trimmed mp4 keeps its
        samples and states a shorter duration: phones' and stream copies' cuts); 0 when the header states none."""
        shown = round(self.duration * self.fps) if self.duration and self.fps else 0
        return min(self.frames, shown) if shown and shown < self.frames - 1 else self.frames


def probe(path: str | Path) -> VideoInfo:
    """Open a video file and read its first video stream's header (MasklamError naming the file if it cannot)."""
    path = Path(path)
    if not path.is_file():
        raise MasklamError(f"no such file: {path}")
    av = _av()
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise MasklamError(f"{path} has no video stream")
            s = c.streams.video[0]
            rate = s.average_rate or s.guessed_rate or s.base_rate
            duration = float(s.duration * s.time_base) if s.duration and s.time_base else (
                c.duration / 1e6 if c.duration else 0.0)
            return VideoInfo(path, float(rate) if rate else 0.0, int(s.frames or 0), int(s.codec_context.height),
                             int(s.codec_context.width), s.codec_context.name, duration)
    except _errors() as e:
        raise MasklamError(f"{path} is not a readable video ({_first_line(e)})") from None


class VideoReader:
    """Sequential frames of one video file, from any time on. Consecutive requests continue decoding where
    the last one stopped; a request elsewhere seeks to the keyframe before it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._container: Any = None
        self._frames: Iterator[Any] | None = None
        self._next = 0.0  # time of the next frame the open decoder will yield (seconds)
        self._count = 0

    def _open(self, start: float) -> None:
        av = _av()
        reopened = self._container is not None
        if self._container is None:
            if not self.path.is_file():
                raise MasklamError(f"no such file: {self.path}")
            self._container = av.open(str(self.path))
            if not self._container.streams.video:
                self.close()
                raise MasklamError(f"{self.path} has no video stream")
            self._stream = self._container.streams.video[0]
            rate = self._stream.average_rate or self._stream.guessed_rate
            self._fps = float(rate) if rate else 0.0
            sar = self._stream.sample_aspect_ratio  # anamorphic video (stored pixels not square): None or 0 when not
            self._pixel_aspect = float(sar) if sar and float(sar) > 0 else 1.0
        if start > 0 or reopened:  # a decoder that has read on must go back, to the start too
            self._container.seek(int(start / self._stream.time_base), stream=self._stream, backward=True)
        self._frames = self._container.decode(self._stream)
        self._next, self._count = 0.0, 0

    def frames(self, start: float = 0.0, count: int | None = None, fps: float | None = None,
               resizer: Resizer | None = None, times: list[float] | None = None) -> Iterator[np.ndarray]:
        """Frames with time >= start - half a frame (``fps``: the frame rate the times are on; default the
        stream's), ``count`` of them (None: to the end), each (H, W, 3) uint8, or square through ``resizer``;
        each one's time (seconds) appended to ``times`` as it is yielded, where given.

        Fewer frames than ``count`` before the file ends is a MasklamError (a truncated or short file)."""
        try:
            yield from self._frames_unchecked(start, count, fps, resizer, times)
        except _errors() as e:
            raise MasklamError(f"{self.path}: cannot decode ({_first_line(e)}); the file is truncated or corrupt") \
                from None

    def _frames_unchecked(self, start: float, count: int | None, fps: float | None, resizer: Resizer | None,
                          times: list[float] | None) -> Iterator[np.ndarray]:
        if self._frames is None or start < self._next - 1e-6 or start > self._next + 2.0:
            self._open(start)
        rate = fps or self._fps or 30.0
        tol = 0.5 / rate
        got = 0
        assert self._frames is not None
        while count is None or got < count:
            frame = next(self._frames, None)
            if frame is None:
                break
            t = float(frame.time) if frame.time is not None else self._count / rate
            self._count += 1
            self._next = t + 1.0 / rate
            if t < start - tol:
                continue
            got += 1
            if times is not None:
                times.append(t)
            yield (resizer.video_frame(frame, self._pixel_aspect) if resizer is not None
                   else upright(frame.to_ndarray(format="rgb24"), quarter_turns(frame)))
        if count is not None and got < count:
            raise MasklamError(f"{self.path}: ends after {got} of the {count} frames expected from {start:.3f} s "
                               "(a truncated or short video)")

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container, self._frames = None, None

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def video_frames(path: str | Path, resizer: Resizer | None = None,
                 times: list[float] | None = None) -> Iterator[np.ndarray]:
    """Every frame of a video file (VideoReader.frames, its times into ``times``), the file closed as soon as they
    are read or the iterator is closed (PyAV's containers hold reference cycles: left to the garbage collector,
    files pile up open)."""
    with VideoReader(path) as reader:
        yield from reader.frames(resizer=resizer, times=times)


def encoder_name(codec: str) -> str:
    """The FFmpeg encoder for a codec name of CODECS available in this PyAV build (h264: libx264, else mpeg4)."""
    available = _av().codecs_available
    if codec == "h264":
        return "libx264" if "libx264" in available else "mpeg4"
    if codec == "av1":
        for name in ("libsvtav1", "libaom-av1", "librav1e"):
            if name in available:
                return name
        raise MasklamError("this PyAV build has no AV1 encoder; use --codec h264")
    raise MasklamError(f"unknown codec {codec!r}; one of {', '.join(CODECS)}")


def fullest_pix_fmt(codec: str) -> str:
    """yuv444p (no chroma subsampling) where the encoder takes it (libx264), else yuv420p (mpeg4, the AV1
    encoders)."""
    return "yuv444p" if encoder_name(codec) == "libx264" else "yuv420p"


def codec_written(codec: str) -> str:
    """The codec name an mp4 written with `codec` holds (what LeRobot's info.json records)."""
    return {"libx264": "h264", "mpeg4": "mpeg4"}.get(encoder_name(codec), "av1")


def stored_rate(fps: float) -> Fraction:
    """The frame rate an mp4 is written at: ``fps`` as a fraction of denominator at most 1001 (an mp4's time base;
    30000/1001 and 29.97 exactly, a rate with no such fraction, 30.0005, its nearest one). Timestamps written beside
    the video (a LeRobot dataset's) use it, so that they name the frames the video holds."""
    return Fraction(fps).limit_denominator(1001)


class VideoWriter:
    """Frames -> one mp4 file, frame i at time i / `stored_rate(fps)`. ``crf``: quality (lower is better; 0 for h264 is
    lossless in YUV); ``pix_fmt``: yuv420p (every player) or yuv444p (no chroma subsampling)."""

    def __init__(self, path: str | Path, fps: float, height: int, width: int, codec: str = "h264", crf: int = 15,
                 pix_fmt: str = "yuv420p", gop: int = 2) -> None:
        av = _av()
        if pix_fmt == "yuv420p" and (height % 2 or width % 2):
            raise MasklamError(f"yuv420p video needs an even width and height, got {width}x{height}")
        self.path = Path(path)
        self.encoder = encoder_name(codec)
        self._container = av.open(str(path), "w", format="mp4")
        rate = stored_rate(fps)
        self._stream = self._container.add_stream(self.encoder, rate=rate)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = pix_fmt
        self._stream.time_base = 1 / rate
        options = {"g": str(gop)}
        if self.encoder == "mpeg4":
            self._stream.codec_context.qscale = 2
            options["qscale"] = "2"
        else:
            options["crf"] = str(crf)
        self._stream.options = options
        self.frames = 0

    def write(self, frames: np.ndarray) -> None:
        """(n, H, W, 3) uint8 frames, appended."""
        av = _av()
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = self.frames
            self.frames += 1
            for packet in self._stream.encode(frame):
                self._container.mux(packet)

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self._container.close()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 arrays of one shape (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)
