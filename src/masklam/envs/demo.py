"""`masklam demo`: a PNG grid of distracted frames and their agent masks.

One row per (task, preset); for each chosen step, the RGB observation and the same frame with its
agent mask tinted red on top (so the alignment is visible), plus the mask alone. The options that made it are
written beside it (`demo.png` -> `demo.json`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from masklam.args import parse
from masklam.errors import MasklamError
from masklam.files import atomic_path, config_record, read_record, write_json
from masklam.seeding import check_seeds


@dataclass
class DemoConfig:
    """Render a grid of distracted frames and their masks to a PNG."""

    out: Path = Path("runs/demo.png")
    """where to write the PNG"""
    tasks: tuple[str, ...] = ("cheetah-run", "walker-run", "hopper-hop", "humanoid-walk")
    """dm_control 'domain-task' names, one block of rows each"""
    presets: tuple[str, ...] = ("none", "laom", "masklam")
    """distractor presets, one row each per task"""
    steps: tuple[int, ...] = (0, 30, 60)
    """the environment steps whose frames are shown (random smooth actions in between)"""
    seed: int = 0
    """seed of every episode (and of the actions)"""
    img_size: int = 64
    """observation size in pixels"""
    video_split: str = "train"
    """background videos: train or eval"""
    background_path: str | None = None
    """a DAVIS-2017 root instead of the procedural videos"""

    def __post_init__(self) -> None:
        if not self.tasks or not self.presets or not self.steps:
            raise MasklamError("demo needs at least one task, one preset and one step")
        if any(s < 0 for s in self.steps):
            raise MasklamError(f"steps must be >= 0, got {self.steps}")
        self.steps = tuple(sorted(set(self.steps)))  # each step shown once, in order (the titles count on it)
        if self.out.suffix.lower() != ".png":
            raise MasklamError(f"--out must name a .png file, got {self.out}")
        sidecar = self.out.with_suffix(".json")
        if sidecar.exists() and "presets" not in read_record(sidecar):  # another file of that name: not ours to replace
            raise MasklamError(f"{sidecar} exists and is no demo's record of options; --out {self.out} would replace "
                               "it: choose another --out")
        check_seeds(seed=self.seed)
        from masklam.envs import make_config, parse_task

        for task in self.tasks:  # before the progress bar: one line, not one after it
            parse_task(task)
        for preset in self.presets:
            make_config(preset)
        from masklam.envs.scene import SceneOptions
        from masklam.envs.videos import check_background_path

        SceneOptions.of(img_size=self.img_size, video_split=self.video_split)  # as make() will check them
        if self.background_path is not None:  # checked with any preset, even one that shows no video
            check_background_path(self.background_path, self.video_split)


def overlay(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """frame (H, W, 3) uint8 with mask (H, W) bool tinted red -> (H, W, 3) uint8."""
    out = frame.astype(np.float32)
    out[mask] = 0.4 * out[mask] + 0.6 * np.array([255.0, 0.0, 0.0])
    return out.astype(np.uint8)


def render_row(task: str, preset: str, cfg: DemoConfig) -> list[np.ndarray]:
    """[rgb, overlay, mask] images for each of cfg.steps of one episode."""
    from masklam.envs import make

    env = make(task, distractors=preset, img_size=cfg.img_size, video_split=cfg.video_split,
               background_path=cfg.background_path)
    rng = np.random.default_rng(cfg.seed)
    obs, info = env.reset(seed=cfg.seed)
    a = np.zeros(env.action_space.shape)
    images: list[np.ndarray] = []
    for t in range(max(cfg.steps) + 1):
        if t in cfg.steps:
            m = info["mask"]
            images += [obs, overlay(obs, m), np.repeat(m[..., None], 3, axis=-1).astype(np.uint8) * 255]
        if t < max(cfg.steps):
            a = np.clip(a + rng.normal(0, 0.3, a.shape), -1, 1)
            obs, _, _, _, info = env.step(a)
    env.close()
    return images


def main(argv: list[str] | None = None) -> int:
    """Render the grid and write it to cfg.out."""
    from tqdm import tqdm

    cfg = parse(DemoConfig, list(argv or []))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jobs = [(task, preset) for task in cfg.tasks for preset in cfg.presets]
    rows = [render_row(task, preset, cfg) for task, preset in tqdm(jobs, desc="demo", unit="episode")]
    ncol = len(rows[0])
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.3 * ncol, 1.4 * len(rows)), squeeze=False)
    for r, ((task, preset), images) in enumerate(zip(jobs, rows)):
        for c, img in enumerate(images):
            ax = axes[r, c]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t={sorted(cfg.steps)[c // 3]} " + ("rgb", "overlay", "mask")[c % 3], fontsize=7)
            if c == 0:
                ax.set_ylabel(f"{task}\n{preset}", fontsize=7)
    fig.tight_layout()
    with atomic_path(cfg.out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    write_json(cfg.out.with_suffix(".json"), config_record(cfg))
    print(f"wrote {cfg.out} (options in {cfg.out.with_suffix('.json').name})")
    return 0
