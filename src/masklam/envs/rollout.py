"""The one rollout loop: many environments in worker processes, one batched policy call per step.

Each of W worker processes owns one environment; the parent gathers every worker's observation,
keeps the frame stacks, calls the policy once on the whole batch and sends each worker its action.
Episode i is reset with `stream_seed("eval", seed, first_episode + i)` (masklam.seeding): returns do
not depend on W, and no evaluation episode replays a collected trajectory. W = 0 runs one environment
in this process with batch-1 inference (the reference protocol). Used by online evaluation of image
policies (masklam.downstream.evaluate) and of state experts (masklam.experts.train).
"""
from __future__ import annotations

import importlib
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from masklam.errors import MasklamError, MasklamRuntimeError, one_line
from masklam.seeding import stream_seed


class Policy(Protocol):
    """What a rollout needs from a policy."""

    frame_stack: int

    def select_action(self, obs: np.ndarray) -> np.ndarray:
        """(B, F, *obs_shape) stacked observations -> (B, A) float32 actions."""


DEFAULT_FACTORY = "masklam.envs:make"
"""The factory of masklam's own environments."""


@dataclass
class EnvSpec:
    """How to build one environment: `factory(task, **kwargs)` in the worker."""

    task: str
    """task name passed to the factory"""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments of the factory"""
    factory: str = DEFAULT_FACTORY
    """`module:function` building the env (tests substitute a tiny one)"""

    def build(self):  # noqa: ANN201 (gymnasium.Env)
        """Import the factory and make the environment."""
        module, _, name = self.factory.partition(":")
        return getattr(importlib.import_module(module), name)(self.task, **self.kwargs)


@dataclass
class Rollout:
    """Per-episode returns (in episode order), success where the env reports it, and the stepping speed."""

    returns: np.ndarray
    """(episodes,) float64 undiscounted returns"""
    successes: list[bool] | None
    """per episode: info["success"] was true at some step (None: the env reports no success)"""
    episodes_per_s: float
    """episodes per second of stepping (process start-up excluded)"""


def _step(env, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool | None]:  # noqa: ANN001
    """(obs, reward, done, success): success is info["success"], None where the env does not report it."""
    obs, reward, terminated, truncated, info = env.step(action)
    success = info.get("success") if isinstance(info, dict) else None
    return obs, float(reward), bool(terminated or truncated), None if success is None else bool(success)


def _spaces(env) -> tuple[tuple | None, tuple | None]:  # noqa: ANN001
    """(observation shape, action shape) of an env (None where it declares no space)."""
    return tuple(getattr(getattr(env, "observation_space", None), "shape", None) or ()) or None, \
        tuple(getattr(getattr(env, "action_space", None), "shape", None) or ()) or None


def _failure(e: BaseException) -> tuple[str, tuple[bool, str]]:
    """The message a worker sends for an exception: ("error", (is it bad input, one line))."""
    return "error", (isinstance(e, MasklamError) and not isinstance(e, MasklamRuntimeError), one_line(e))


def _worker(spec: EnvSpec, conn) -> None:  # noqa: ANN001 (multiprocessing connection)
    """Worker loop: ("reset", seed) -> obs; ("step", action) -> (obs, reward, done, success); ("close",).
    Start-up sends ("ready", (obs shape, action shape)); any exception is sent as one line, ("error", ...)."""
    try:
        env = spec.build()
    except BaseException as e:  # report the failure to the parent as one line
        conn.send(_failure(e))
        return
    conn.send(("ready", _spaces(env)))
    while True:
        msg = conn.recv()
        try:
            if msg[0] == "reset":
                conn.send(("obs", env.reset(seed=msg[1])[0]))
            elif msg[0] == "step":
                conn.send(("step", _step(env, msg[1])))
            else:
                env.close()
                conn.close()
                return
        except Exception as e:  # noqa: BLE001 (the parent names the task and episode)
            conn.send(_failure(e))
            return


class _LocalEnv:
    """In-process stand-in for a worker (W = 0): same messages, no process."""

    def __init__(self, spec: EnvSpec) -> None:
        try:
            self.env = spec.build()
            self._reply: tuple = ("ready", _spaces(self.env))
        except Exception as e:  # noqa: BLE001
            self.env, self._reply = None, _failure(e)

    def send(self, msg: tuple) -> None:
        if self.env is None:
            return
        try:
            if msg[0] == "reset":
                self._reply = ("obs", self.env.reset(seed=msg[1])[0])
            elif msg[0] == "step":
                self._reply = ("step", _step(self.env, msg[1]))
            else:
                self.env.close()
        except Exception as e:  # noqa: BLE001
            self._reply = _failure(e)

    def recv(self) -> tuple:
        return self._reply


def _recv(conn, where: str) -> tuple:  # noqa: ANN001
    """A worker's reply; its failure (or its death) as one line naming `where` (the task, the episode)."""
    try:
        kind, payload = conn.recv()
    except (EOFError, ConnectionError, OSError):
        raise MasklamRuntimeError(f"evaluation worker ({where}) exited unexpectedly "
                                  "(killed, or out of memory?)") from None
    if kind == "error":
        usage, text = payload
        if where.endswith("start-up"):
            raise (MasklamError if usage else MasklamRuntimeError)(f"evaluation environment failed to start: {text}")
        raise (MasklamError if usage else MasklamRuntimeError)(f"evaluation worker ({where}) failed: {text}")
    return kind, payload


def check_fits(policy: Policy, task: str, obs_shape: tuple | None, action_shape: tuple | None) -> None:
    """One line before any episode if the policy's declared action size or observation shape (`action_dim`,
    `obs_shape` attributes, where it has them) is not the environment's."""
    name = getattr(policy, "source", None) or "the policy"
    want_a, want_o = getattr(policy, "action_dim", None), getattr(policy, "obs_shape", None)
    if want_a is not None and action_shape is not None and (int(want_a),) != tuple(action_shape):
        raise MasklamError(f"{name} outputs {want_a} actions, {task} takes {int(np.prod(action_shape))}: it was "
                           "trained on another task (evaluate it on its own task, or train one for this task)")
    if want_o is not None and obs_shape is not None and tuple(want_o) != tuple(obs_shape):
        raise MasklamError(f"{name} reads observations of shape {tuple(want_o)}, {task} gives {tuple(obs_shape)} "
                           "(another image size?)")


def _start(spec: EnvSpec, workers: int) -> tuple[list, list]:
    """Start W worker processes (forkserver: EGL and fork do not mix), or one local env for W = 0."""
    if workers == 0:
        return [_LocalEnv(spec)], []
    ctx = mp.get_context("forkserver")
    conns, procs = [], []
    for _ in range(workers):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_worker, args=(spec, child), daemon=True)
        p.start()
        child.close()
        conns.append(parent)
        procs.append(p)
    return conns, procs


def _stop(conns: list, procs: list) -> None:
    for c in conns:
        try:
            c.send(("close",))
        except (BrokenPipeError, OSError):
            pass
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.terminate()


class _Slots:
    """The episodes the environments are playing: which episode each slot plays, its frame stack, returns."""

    def __init__(self, conns: list, episodes: int, frame_stack: int, seed: int, first_episode: int,
                 task: str = "") -> None:
        self.conns, self.episodes, self.F, self.task = conns, episodes, frame_stack, task
        self.seed, self.first = seed, first_episode
        self.episode = [-1] * len(conns)  # episode each slot is playing, -1 = idle
        self.stacks: list[np.ndarray | None] = [None] * len(conns)  # (F, *obs_shape) per slot
        self.returns = np.zeros(episodes, dtype=np.float64)
        self.success = np.zeros(episodes, dtype=bool)
        self.reports_success, self.next, self.done = False, 0, 0

    def launch(self, s: int, wait: bool = True) -> None:
        """Reset slot s into the next episode (or idle it when none is left); `wait=False`: `receive` later."""
        if self.next >= self.episodes:
            self.episode[s] = -1
            return
        self.episode[s] = self.next
        self.conns[s].send(("reset", stream_seed("eval", self.seed, self.first + self.next)))
        self.next += 1
        if wait:
            self.receive(s)

    def receive(self, s: int) -> None:
        """The first observation of slot s's new episode, repeated into its frame stack."""
        if self.episode[s] >= 0:
            self.stacks[s] = np.repeat(_recv(self.conns[s], self.where(s))[1][None], self.F, axis=0)

    def where(self, s: int) -> str:
        """The task and episode slot s plays, for messages."""
        return f"{self.task} episode {self.first + self.episode[s]}"

    def step(self, policy: Policy) -> int:
        """One batched policy call and one env step in every active slot; -> episodes finished."""
        active = [s for s, ep in enumerate(self.episode) if ep >= 0]
        actions = np.asarray(policy.select_action(np.stack([self.stacks[s] for s in active])), dtype=np.float32)
        for i, s in enumerate(active):
            self.conns[s].send(("step", actions[i]))
        finished = 0
        for s in active:
            obs, reward, done, ok = _recv(self.conns[s], self.where(s))[1]
            ep = self.episode[s]
            self.returns[ep] += reward
            if ok is not None:
                self.reports_success = True
                self.success[ep] |= ok
            if done:
                finished += 1
                self.launch(s)
            else:
                self.stacks[s] = np.concatenate([self.stacks[s][1:], obs[None]], axis=0)
        self.done += finished
        return finished


def rollout(policy: Policy, spec: EnvSpec, episodes: int, seed: int = 0, workers: int = 0,
            first_episode: int = 0, progress: bool = True, desc: str = "eval") -> Rollout:
    """Play `episodes` episodes of `policy`, `workers` environments at a time; returns in episode order."""
    if episodes < 1:
        raise MasklamError(f"episodes must be >= 1, got {episodes}")
    if workers < 0:
        raise MasklamError(f"workers must be >= 0, got {workers}")
    conns, procs = _start(spec, min(workers, episodes))
    bar = tqdm(total=episodes, desc=desc, unit="ep", disable=not progress)
    try:
        for c in conns:
            check_fits(policy, spec.task, *_recv(c, f"{spec.task} start-up")[1])  # "ready" (or the start-up error)
        t0 = time.perf_counter()  # episodes/s measures stepping, not process start-up
        slots = _Slots(conns, episodes, max(1, int(policy.frame_stack)), seed, first_episode, spec.task)
        for s in range(len(conns)):  # reset every environment at once, then gather
            slots.launch(s, wait=False)
        for s in range(len(conns)):
            slots.receive(s)
        while slots.done < episodes:
            bar.update(slots.step(policy))
        elapsed = time.perf_counter() - t0
    finally:
        bar.close()
        _stop(conns, procs)
    return Rollout(slots.returns, slots.success.tolist() if slots.reports_success else None,
                   episodes / max(elapsed, 1e-9))
