"""`masklam collect`: run a policy in the distracted environment and write one HDF5 dataset file.

Trajectory ``i`` depends on ``(seed, i)`` only, so the data are identical whatever the number of workers
and whatever an interrupted run already wrote. Crash safety without trusting HDF5 to survive a kill:

1. each finished trajectory ``i`` is written by its worker to ``OUT.parts/00000i.h5`` under a temporary
   name and renamed into place (an atomic rename: a part file is complete or absent);
2. when every trajectory exists, the parts (and the trajectories of an existing ``OUT``, when extending
   it) are copied into ``OUT.tmp``, which is flushed, fsync'ed and renamed onto ``OUT``.

So ``OUT`` is never half-written; a re-run with the same arguments checks them against
``OUT.parts/config.json`` (or ``OUT``'s attrs), keeps every finished trajectory and collects only the rest.
"""
from __future__ import annotations

import multiprocessing as mp
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from tqdm.auto import tqdm

from masklam.args import parse
from masklam.data.hdf5 import FORMAT_VERSION, Trajectory, check_attrs, read_layout, write_atomically, write_trajectory
from masklam.data.parts import merge_parts, part_path, parts_dir, prepare_parts, remove_parts
from masklam.errors import MasklamError, MasklamRuntimeError, one_line
from masklam.locks import output_lock
from masklam.resources import check_free_space
from masklam.seeding import check_seeds, stream_rng, stream_seed

Policy = Callable[[np.ndarray], np.ndarray]  # (S,) float32 state -> (A,) action


@dataclass
class CollectConfig:
    """Run an expert (or smooth random actions) in the distracted environment and write an HDF5 dataset."""

    task: str
    """dm_control task as domain-task, e.g. cheetah-run; or a Meta-World task, e.g. mw-push."""
    out: Path
    """Output HDF5 file; re-running the same command resumes an interrupted collection."""
    distractors: str = "laom"
    """Distractor preset: none, laom (video, camera shake, colour change), masklam (video only) or composite
    (the video pasted behind the rendered scene, as for Meta-World)."""
    episodes: int = 10
    """Number of trajectories in the file (a larger number extends an existing file)."""
    steps: int = 1000
    """Environment steps (frames) per trajectory."""
    seed: int = 0
    """Trajectory i's episode seed derives from (seed, i) only."""
    workers: int = 1
    """Parallel processes, each rendering whole trajectories."""
    video_split: Literal["train", "eval"] = "train"
    """Background videos: train, or the held-out eval videos (recorded as the file's split)."""
    background_path: Path | None = None
    """Background videos from a DAVIS-2017 root (JPEGImages/480p/<video>/*.jpg) or any folder of <video>/*.jpg
    folders instead of the procedural ones (recorded in the file's attrs); its train/eval split: DAVIS's
    standard one, else every third video held out."""
    policy: Literal["expert", "random"] = "expert"
    """expert: the task's shipped expert (Meta-World: its scripted policy); random: smooth seeded random actions
    (held for --hold frames)."""
    expert_path: Path | None = None
    """An expert .safetensors file instead of the shipped one."""
    action_repeat: int | None = None
    """Physics substeps per environment step (frame); default: the expert's (1 for the random policy)."""
    hold: int = 3
    """Random policy: frames each random action is held."""
    action_noise: float = 0.0
    """Expert policy: std of Gaussian noise added to its actions (seeded per trajectory, then clipped to
    [-1, 1]); the executed, noisy actions are stored. 0 = the pure expert."""
    img_size: int = 64
    """Frame height and width in pixels."""
    shadows: bool = True
    """Render shadows (off renders faster but looks different)."""
    reflections: bool = True
    """Render floor reflections (off renders faster but looks different)."""
    multisample: bool = True
    """Render with the model's multisampling (off renders faster; Meta-World's RGB pass with shadows,
    reflections and multisampling off: ~10x faster)."""
    compression: Literal["lzf", "gzip", "none"] = "lzf"
    """Compression of frames and masks (chunked per frame)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.action_noise <= 2.0:
            raise MasklamError(f"--action-noise must be in [0, 2], got {self.action_noise}")
        for name in ("episodes", "steps", "workers", "hold", "img_size"):
            if getattr(self, name) < 1:
                raise MasklamError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.steps < 2:
            raise MasklamError(f"--steps must be >= 2 (a window needs two frames), got {self.steps}")
        if self.seed < 0:
            raise MasklamError(f"--seed must be >= 0, got {self.seed}")
        if self.action_repeat is not None and self.action_repeat < 1:
            raise MasklamError(f"--action-repeat must be >= 1, got {self.action_repeat}")
        if "-" not in self.task:
            raise MasklamError(f"--task must be domain-task (e.g. cheetah-run), got {self.task!r}")
        if self.background_path is not None:
            self.background_path = Path(self.background_path)
        if self.out.suffix != ".h5":
            raise MasklamError(f"--out must end in .h5, got {self.out}")


@dataclass
class CollectResult:
    """What one `collect` call did."""

    path: Path
    """the dataset file"""
    collected: list[int] = field(default_factory=list)
    """trajectory ids rendered by this call"""
    reused: int = 0
    """trajectories kept from an earlier, interrupted or shorter, run"""
    frames_per_s: float = float("nan")
    """steady rendering rate, start-up (imports, env build) excluded"""


class SmoothRandomPolicy:
    """Seeded random actions, uniform in [-1, 1], each held for ``hold`` frames."""

    def __init__(self, action_dim: int, rng: np.random.Generator, hold: int = 3) -> None:
        self.action_dim, self.rng, self.hold = action_dim, rng, hold
        self._t, self._a = 0, np.zeros(action_dim, np.float32)

    def __call__(self, state: np.ndarray) -> np.ndarray:
        if self._t % self.hold == 0:
            self._a = self.rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)
        self._t += 1
        return self._a


class NoisyPolicy:
    """A policy's actions plus seeded Gaussian noise of std ``sigma``, clipped to [-1, 1]."""

    def __init__(self, policy: Policy, rng: np.random.Generator, sigma: float) -> None:
        self.policy, self.rng, self.sigma = policy, rng, sigma

    def __call__(self, state: np.ndarray) -> np.ndarray:
        a = np.asarray(self.policy(state), np.float32)
        return np.clip(a + self.sigma * self.rng.standard_normal(a.shape), -1.0, 1.0).astype(np.float32)


def file_attrs(cfg: CollectConfig, action_repeat: int) -> dict[str, Any]:
    """The file attrs a collection writes (and a resumed one must match): LAOM's keys plus ours."""
    from masklam.envs import parse_task

    domain, task = parse_task(cfg.task)
    return {
        "domain_name": domain, "task_name": task, "img_hw": cfg.img_size, "split": cfg.video_split,
        "distractors": cfg.distractors, "seed": cfg.seed, "version": FORMAT_VERSION,
        "action_repeat": action_repeat, "policy": cfg.policy, "steps": cfg.steps,
        "hold": cfg.hold if cfg.policy == "random" else 0,
        "action_noise": cfg.action_noise if cfg.policy == "expert" else 0.0,
        "shadows": cfg.shadows, "reflections": cfg.reflections, "multisample": cfg.multisample,
        "expert": (str(cfg.expert_path) if cfg.expert_path
                   else _expert_kind(cfg.task) if cfg.policy == "expert" else "none"),
        **({"background_path": str(cfg.background_path.expanduser().resolve())} if cfg.background_path else {}),
    }


def _expert_kind(task: str) -> str:
    from masklam.envs import suite_of

    return "scripted" if suite_of(task) == "metaworld" else "shipped"


def _resolve_action_repeat(cfg: CollectConfig) -> int:
    """The action repeat to use; loads the expert once to fail early (one line) when there is none."""
    if cfg.policy == "random":
        return cfg.action_repeat or 1
    expert = _load_expert(cfg)
    return cfg.action_repeat or int(getattr(expert, "action_repeat", 1))


def _load_expert(cfg: CollectConfig) -> Policy:
    from masklam import experts

    try:
        return experts.load(cfg.task, cfg.expert_path) if cfg.expert_path else experts.load(cfg.task)
    except MasklamError as e:
        raise MasklamError(f"cannot load an expert for {cfg.task}: {e} (or use --policy random)") from None


# -- one trajectory (runs in a worker process, or in this one when --workers 1) ------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(cfg: CollectConfig, action_repeat: int, counter: Any = None) -> None:
    """Build the environment and policy once per process."""
    import torch

    torch.set_num_threads(1)  # W workers share the cores; the expert is a tiny MLP
    from masklam.envs import make

    _WORKER.update(cfg=cfg, counter=counter)
    try:
        _WORKER["attrs"] = file_attrs(cfg, action_repeat)
        _WORKER["env"] = make(cfg.task, distractors=cfg.distractors, video_split=cfg.video_split,
                              img_size=cfg.img_size, action_repeat=action_repeat, shadows=cfg.shadows,
                              background_path=str(cfg.background_path) if cfg.background_path else None,
                              reflections=cfg.reflections, multisample=cfg.multisample, max_episode_steps=cfg.steps)
        _WORKER["expert"] = _load_expert(cfg) if cfg.policy == "expert" else None
    except Exception as e:  # a pool would respawn a worker whose initializer raises, forever: defer it
        _WORKER["error"] = e


def _tick(n: int) -> None:
    counter = _WORKER.get("counter")
    if counter is None:
        return
    if callable(counter):
        counter(n)
    else:
        with counter.get_lock():
            counter.value += n


def run_episode(env: Any, policy: Policy, seed: int, steps: int,
                tick: Callable[[int], None] = lambda n: None) -> Trajectory:
    """Roll out ``steps`` frames from ``env.reset(seed)``: obs[t] is seen, then actions[t] is executed.

    Where the env reports ``info["success"]`` (Meta-World), ``extras["success"][t]`` is its flag after
    actions[t] (aligned with rewards[t]).
    """
    obs, info = env.reset(seed=seed)
    h, w, _ = obs.shape
    lo, hi = env.action_space.low, env.action_space.high
    traj = Trajectory(obs=np.empty((steps, h, w, 3), np.uint8),
                      states=np.empty((steps, len(info["state"])), np.float32),
                      actions=np.empty((steps,) + env.action_space.shape, np.float32),
                      rewards=np.empty((steps,), np.float32), masks=np.empty((steps, h, w), bool), seed=seed)
    for key, value in info["distractor"].items():
        value = np.asarray(value)
        dtype = np.int32 if np.issubdtype(value.dtype, np.integer) else np.float32
        traj.extras[key] = np.empty((steps,) + value.shape, dtype)
    if "success" in info:
        traj.extras["success"] = np.zeros(steps, bool)
    for t in range(steps):
        traj.obs[t], traj.masks[t], traj.states[t] = obs, info["mask"], info["state"]
        for key, value in info["distractor"].items():
            traj.extras[key][t] = value
        action = np.clip(np.asarray(policy(traj.states[t]), np.float32), lo, hi)  # what is executed
        obs, reward, terminated, truncated, info = env.step(action)
        traj.actions[t], traj.rewards[t] = action, reward
        if "success" in traj.extras:
            traj.extras["success"][t] = info["success"]
        if (terminated or truncated) and t < steps - 1:
            raise MasklamError(f"episode of {env.unwrapped.task} ended after {t + 1} steps, before --steps {steps}")
        if t % 25 == 24 or t == steps - 1:
            tick(t % 25 + 1)
    return traj


def _collect_one(index: int) -> tuple[int, float]:
    """Render trajectory ``index`` and save it as an atomic part file; returns (index, return). Any failure is
    one line naming the task and trajectory (a MasklamRuntimeError, which a pool passes to the parent intact)."""
    try:
        return _render_one(index)
    except Exception as e:  # noqa: BLE001 (every failure of a worker reaches the user as one line)
        cfg = _WORKER.get("cfg")
        where = f"{cfg.task} trajectory {index}" if cfg is not None else f"trajectory {index}"
        kind = type(e) if type(e) in (MasklamError, MasklamRuntimeError) else MasklamRuntimeError
        raise kind(f"collect worker ({where}): {one_line(e)}") from None


def _render_one(index: int) -> tuple[int, float]:
    if "error" in _WORKER:
        raise _WORKER["error"]
    cfg: CollectConfig = _WORKER["cfg"]
    seed = stream_seed("collect", cfg.seed, index)
    rng = stream_rng("action_noise", cfg.seed, index)
    if cfg.policy == "expert":
        policy = _WORKER["expert"]
        if cfg.action_noise > 0:
            policy = NoisyPolicy(policy, rng, cfg.action_noise)
    else:
        policy = SmoothRandomPolicy(_WORKER["env"].action_space.shape[0], rng, cfg.hold)
    traj = run_episode(_WORKER["env"], policy, seed, cfg.steps, _tick)
    with write_atomically(part_path(cfg.out, index)) as f:
        f.attrs.update(_WORKER["attrs"])
        write_trajectory(f, str(index), traj, cfg.compression)
    return index, traj.traj_return


# -- the parent: what is missing, workers, progress, assembly ---------------------------------------------
def _existing(cfg: CollectConfig, attrs: dict[str, Any]) -> int:
    """How many trajectories an existing OUT holds (0 if none), after checking its attrs match."""
    if not cfg.out.exists():
        return 0
    layout = read_layout(cfg.out)
    check_attrs(cfg.out, layout.attrs, attrs)
    if layout.names != [str(i) for i in range(layout.num_trajectories)]:
        raise MasklamError(f"{cfg.out} has trajectories that are not numbered 0..n-1; cannot extend it")
    return layout.num_trajectories


def _render(cfg: CollectConfig, action_repeat: int, todo: list[int], done_frames: int) -> float:
    """Render the trajectories ``todo`` (in-process or over a spawn pool); returns frames/s."""
    total = (len(todo) * cfg.steps) + done_frames
    bar = tqdm(total=total, initial=done_frames, unit="frame", desc=f"collect {cfg.task}", disable=not cfg.progress,
               smoothing=0.1, dynamic_ncols=True)
    clock = _SteadyClock(bar)
    try:
        if cfg.workers == 1 or len(todo) == 1:
            _init_worker(cfg, action_repeat, clock.update)
            for index in todo:
                _collect_one(index)
        else:
            _render_pool(cfg, action_repeat, todo, clock)
    except KeyboardInterrupt:
        saved = len(list(parts_dir(cfg.out).glob("[0-9]*.h5")))
        print(f"\ninterrupted: {saved} finished trajectories are kept in {parts_dir(cfg.out)}", file=sys.stderr)
        raise
    finally:
        bar.close()
        _WORKER.clear()
    return clock.rate()


def _render_pool(cfg: CollectConfig, action_repeat: int, todo: list[int], clock: "_SteadyClock") -> None:
    """Render `todo` over spawn worker processes. A worker's exception arrives as its one line; a worker that
    dies (killed, out of memory, a crash in the renderer) is one line too, never a hang."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")  # EGL contexts do not survive fork
    counter = ctx.Value("q", 0)
    pool = ProcessPoolExecutor(min(cfg.workers, len(todo)), mp_context=ctx, initializer=_init_worker,
                               initargs=(cfg, action_repeat, counter))
    pending = {pool.submit(_collect_one, index): index for index in todo}
    failed = True
    try:
        while pending:
            done, _ = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            for future in done:
                pending.pop(future)
                future.result()  # a worker's exception: its one line
            clock.update(counter.value - clock.frames)
        failed = False
    except BrokenProcessPool:
        lost = sorted(pending.values())
        raise MasklamRuntimeError(
            f"a collect worker process died while rendering {cfg.task} (trajectories {lost[0]}..{lost[-1]} not "
            "finished): killed, out of memory, or a crash in the renderer; the finished trajectories are kept, run "
            "the same command again to resume") from None
    finally:
        pool.shutdown(wait=not failed, cancel_futures=True)


class _SteadyClock:
    """Feeds the progress bar and measures frames/s from the first rendered frames on (no start-up time)."""

    def __init__(self, bar: tqdm) -> None:
        self.bar, self.frames = bar, 0
        self.t0: float | None = None
        self.start = self.t1 = time.perf_counter()
        self.n0 = 0

    def update(self, n: int) -> None:
        if n <= 0:
            return
        self.bar.update(n)
        self.frames += n
        self.t1 = time.perf_counter()
        if self.t0 is None:
            self.t0, self.n0 = self.t1, self.frames

    def rate(self) -> float:
        """Frames/s after the first report; when all arrived at once, frames/s including start-up."""
        span = self.t1 - (self.t0 or self.t1)
        if span > 0 and self.frames > self.n0:
            return (self.frames - self.n0) / span
        return self.frames / max(self.t1 - self.start, 1e-9)


def _assemble(cfg: CollectConfig, attrs: dict[str, Any], have: int) -> None:
    """OUT's trajectories 0..have-1 and the parts have..episodes-1 into OUT (atomically), with the mean return."""
    merge_parts(cfg.out, attrs, range(have, cfg.episodes), keep=have,
                summary=lambda groups: {"dataset_return": float(np.mean([g["traj_return"] for g in groups]))})


def check_collection(cfg: CollectConfig) -> tuple[int, dict[str, Any]]:
    """What a collection can check without rendering (the task, the distractor preset, the background folder,
    the expert), as one line; -> its action repeat and file attrs. Touches no file: a sweep checks every task's
    collection with it before it collects any."""
    from masklam.envs import make_config, parse_task
    from masklam.envs.scene import check_common
    from masklam.envs.videos import check_background_path

    parse_task(cfg.task)
    make_config(cfg.distractors)
    check_common(cfg.img_size, cfg.action_repeat if cfg.action_repeat is not None else 1, None)
    check_seeds(seed=cfg.seed)
    if cfg.background_path is not None:
        check_background_path(cfg.background_path, cfg.video_split)
    action_repeat = _resolve_action_repeat(cfg)
    return action_repeat, file_attrs(cfg, action_repeat)


def collect(cfg: CollectConfig) -> CollectResult:
    """Write ``cfg.out`` with ``cfg.episodes`` trajectories, resuming whatever an earlier run finished."""
    action_repeat, attrs = check_collection(cfg)  # unknown task or preset: one line, before any file is touched
    with output_lock(cfg.out, ", or use another --out"):
        return _collect_locked(cfg, action_repeat, attrs)


def _collect_locked(cfg: CollectConfig, action_repeat: int, attrs: dict[str, Any]) -> CollectResult:
    """`collect` while holding OUT's lock: reuse what exists, render the rest, assemble."""
    result = CollectResult(cfg.out)
    have = _existing(cfg, attrs)
    if have >= cfg.episodes:
        remove_parts(cfg.out)  # left over by a run killed after its final rename
        result.reused = have
        return result
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    finished = prepare_parts(cfg.out, attrs)
    todo = [i for i in range(have, cfg.episodes) if i not in finished]
    result.reused = cfg.episodes - len(todo)
    if todo:
        result.frames_per_s = _render(cfg, action_repeat, todo, (cfg.episodes - have - len(todo)) * cfg.steps)
    result.collected = todo
    need = sum(part_path(cfg.out, i).stat().st_size for i in range(have, cfg.episodes))
    check_free_space(cfg.out, need + (cfg.out.stat().st_size if have else 0), f"assembling {cfg.out}")
    _assemble(cfg, attrs, have)
    remove_parts(cfg.out)
    return result


def main(argv: list[str]) -> int:
    cfg = parse(CollectConfig, argv)
    result = collect(cfg)
    lay = read_layout(result.path)
    returns = lay.returns
    speed = f", {result.frames_per_s:.0f} frames/s" if result.collected else ""
    print(f"{result.path}: {lay.num_trajectories} trajectories x {cfg.steps} steps (collected {len(result.collected)}, "
          f"kept {result.reused}{speed}); return {returns.mean():.1f} +- {returns.std():.1f}")
    return 0
