"""Faults a user meets, injected: each ends in one line (`masklam: error: ...`, exit 2 for bad input, 1 for a
runtime fault) and leaves no partial output under a final name.

- a config value of the wrong type or out of range (experiment TOML tables, top-level keys);
- a full disk: collect's part files and merge, checkpoints (torch.save), JSON, figures, the report, masks' merge
  (a patched writer raising ENOSPC; with root and tmpfs, a real 2 MB file system too);
- memory: a dataset larger than the available memory asked to load whole;
- artefacts that do not fit: a policy against the task's action size, a decoder against its policy, a LAM against
  data of another image size or without its masks, a policy against data of another task, a checkpoint of an
  unknown format version;
- concurrent writers of one output (the lock names the holder);
- an exception in a worker (collection, evaluation, masks), named by task and trajectory/episode.
"""
from __future__ import annotations

import builtins
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from masklam import cli, resources
from masklam.data.hdf5 import Trajectory, write_atomically, write_trajectory
from masklam.errors import MasklamError, MasklamRuntimeError
from masklam.locks import lock_path, output_lock

FACTORY = "test_faults:make_env"


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, list[str]]:
    """`masklam ARGV` in this process -> (exit code, the non-empty lines of stderr that are not progress bars)."""
    capsys.readouterr()
    code = cli.main(argv)
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip() and "\r" not in line and "%|" not in line]


def one_error_line(lines: list[str]) -> str:
    """The single `masklam: error:` line (and assert it is the only line)."""
    assert len(lines) == 1 and lines[0].startswith("masklam: error: "), lines
    return lines[0]


# --- config values --------------------------------------------------------------------------------------------
SWEEP = """out = "{out}"
tasks = ["cheetah-run"]
methods = ["lapo", "bc"]
latent_dims = [8]
labels = [2]
[data.cheetah-run]
collect = {{ episodes = 2, steps = 10, policy = "random", img_size = 16 }}
"""


@pytest.mark.parametrize("edit, expected", [
    (('episodes = 2', 'episodes = "ten"'), '[data.cheetah-run.collect] episodes = "ten": expected an integer'),
    (('episodes = 2', 'episodes = 0'), "[data.cheetah-run.collect] --episodes must be >= 1, got 0"),
    (('policy = "random"', 'policy = "best"'), '[data.cheetah-run.collect] policy = "best": expected one of'),
    (('latent_dims = [8]', 'latent_dims = 8'), "latent_dims = 8: expected a list of integers"),
    (('labels = [2]', 'labels = ["2"]'), 'labels = ["2"]: expected a list of integers'),
    (('[data.', '[pretrain]\nlr = "fast"\n[data.'), '[pretrain] lr = "fast": expected a number'),
    (('[data.', '[pretrain]\nlr = -1.0\n[data.'), "[pretrain] lr must be a finite number > 0, got -1.0"),
    (('[data.', '[pretrain]\nckpt_every = 0\n[data.'), "[pretrain] ckpt_every must be >= 1"),  # not in the key
    (('[data.', '[bc]\nupdates = 2.5\n[data.'), "[bc] updates = 2.5: expected an integer"),
    (('[data.', '[eval]\nworkers = -1\n[data.'), "[eval] episodes must be >= 1 and workers >= 0"),
    (('[data.', '[decode]\nlayers = true\n[data.'), "[decode] layers = true: expected an integer"),
    (('[data.', '[env]\nmax_episode_steps = "long"\n[data.'), '[env] max_episode_steps = "long": expected'),
])
def test_a_config_value_of_the_wrong_type_or_range_is_one_line_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture, edit: tuple[str, str], expected: str) -> None:
    out = tmp_path / "run"
    config = tmp_path / "sweep.toml"
    config.write_text(SWEEP.format(out=out).replace(*edit, 1))
    code, lines = run_cli(["experiment", str(config)], capsys)
    assert code == 2 and expected in one_error_line(lines)
    assert not out.exists()  # before any work


def test_typecheck_understands_the_annotations_of_the_configs() -> None:
    from typing import Literal

    from masklam.typecheck import describe, matches

    assert matches(3, int) and not matches(True, int) and not matches("3", int)
    assert matches(3, float) and matches(0.5, float | None) and matches(None, float | None)
    assert matches("a.h5", Path) and matches(["a", "b"], tuple[Path, ...]) and not matches("a", tuple[Path, ...])
    assert matches([1, 2, 3, 4], tuple[float, float, float, float]) and not matches([1, 2], tuple[float, float, float])
    assert matches("lzf", Literal["lzf", "none"]) and not matches("zip", Literal["lzf", "none"])
    assert not matches(1, Literal[True]) and matches({"a": 1}, dict[str, int]) and not matches([], dict)
    assert describe(int | None) == "an integer" and describe(list[int]) == "a list of integers"


# --- a full disk ----------------------------------------------------------------------------------------------
class _Limited:
    """An unbuffered file of a disk with `disk.room` bytes left: writing beyond them raises ENOSPC."""

    def __init__(self, f, disk: "_Disk") -> None:  # noqa: ANN001
        self._f, self._disk = f, disk

    def write(self, data) -> int:  # noqa: ANN001
        view = memoryview(data).cast("B")
        if self._disk.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = min(len(view), self._disk.room)
        self._disk.room -= n
        return self._f.write(view[:n])

    def __getattr__(self, name: str):  # noqa: ANN204 (readinto, seek, tell, truncate, close, fileno)
        return getattr(self._f, name)


class _Disk:
    """Replaces `open` where HDF5 files are written (resources.GuardedFile): a disk with `room` bytes left."""

    def __init__(self, room: int) -> None:
        self.room = room

    def open(self, path, mode: str = "r", buffering: int = -1, **kw):  # noqa: ANN001, ANN201
        f = builtins.open(path, mode, buffering=buffering, **kw)
        return _Limited(f, self) if ("w" in mode or "+" in mode) else f


def collect_args(out: Path, episodes: int = 3) -> list[str]:
    return ["collect", "--task", "cheetah-run", "--out", str(out), "--episodes", str(episodes), "--steps", "6",
            "--policy", "random", "--img-size", "16", "--no-shadows", "--no-reflections", "--no-progress"]


def test_a_full_disk_during_collect_is_one_line_keeps_finished_parts_and_resumes(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from masklam.data.collect import parts_dir

    out = tmp_path / "d.h5"
    disk = _Disk(room=1)  # measure one part's size first
    code, _ = run_cli(collect_args(tmp_path / "m.h5", 1), capsys)
    assert code == 0
    disk.room = int((tmp_path / "m.h5").stat().st_size * 1.5)  # room for one part, not two
    monkeypatch.setattr(resources, "open", disk.open, raising=False)
    code, lines = run_cli(collect_args(out), capsys)
    line = one_error_line(lines)
    assert code == 1 and "collect worker (cheetah-run trajectory 1)" in line and "no space left" in line
    assert str(parts_dir(out) / "000001.h5") in line
    assert not out.exists() and not list(parts_dir(out).glob("*.tmp"))  # nothing partial under a final name
    assert [p.name for p in sorted(parts_dir(out).glob("[0-9]*.h5"))] == ["000000.h5"]

    monkeypatch.undo()  # space freed: the same command resumes
    code, _ = run_cli(collect_args(out), capsys)
    assert code == 0 and not parts_dir(out).exists()
    from masklam.data import read_layout

    assert read_layout(out).num_trajectories == 3


def test_a_full_disk_while_merging_is_foreseen(tmp_path: Path, capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from masklam.data.collect import parts_dir

    monkeypatch.setattr(resources, "free_bytes", lambda path: 1000)  # the parts fit, their merge does not
    out = tmp_path / "d.h5"
    code, lines = run_cli(collect_args(out, 2), capsys)
    line = one_error_line(lines)
    assert code == 1 and f"not enough disk space for assembling {out}" in line and "1.0 kB free" in line
    assert not out.exists() and len(list(parts_dir(out).glob("[0-9]*.h5"))) == 2


def test_a_full_disk_writing_a_checkpoint_a_json_or_a_figure_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from masklam.files import atomic_path, write_json

    monkeypatch.setattr(resources, "free_bytes", lambda path: 0)
    target = tmp_path / "train_state.pt"
    with pytest.raises(MasklamRuntimeError, match=f"no space left on the device of {target}"):
        with atomic_path(target) as tmp:  # torch.save's error names no errno: a nearly full disk tells
            torch.save({"x": torch.zeros(3)}, tmp)
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    with pytest.raises(MasklamRuntimeError, match="no space left"):
        with atomic_path(tmp_path / "metrics.json") as tmp:
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(MasklamError, match="trajectory 3 has NaN"):  # our own line names its cause, full disk or not
        with atomic_path(tmp_path / "metrics.json") as tmp:
            raise MasklamError("trajectory 3 has NaN")
    monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: (_ for _ in ()).throw(
        OSError(errno.EDQUOT, "Disk quota exceeded")))
    with pytest.raises(MasklamRuntimeError, match="report.json"):
        write_json(tmp_path / "report.json", {"a": 1})
    monkeypatch.undo()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from masklam.downstream.figures import save_figure

    fig = plt.figure()
    monkeypatch.setattr(fig, "savefig", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(MasklamRuntimeError, match="methods.png"):
        save_figure(fig, tmp_path / "methods.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no partial file, under any name


def test_hdf5_never_sees_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = _Disk(room=20_000)
    monkeypatch.setattr(resources, "open", disk.open, raising=False)
    with pytest.raises(MasklamRuntimeError, match="no space left"):
        with write_atomically(tmp_path / "x.h5") as f:
            f.create_dataset("obs", data=np.random.default_rng(0).integers(0, 255, (50, 32, 32, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []
    disk.room = 10**9
    with write_atomically(tmp_path / "x.h5") as f:  # the same writer works once there is room
        f.create_dataset("obs", data=np.zeros((5, 4), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5"]


def _mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    where.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def test_a_really_full_disk_collect_exits_1_in_one_line_not_a_crash(tmp_path: Path) -> None:
    """On a real 1 MB file system (root with tmpfs only; skipped elsewhere): no HDF5 traceback, no segfault."""
    disk = tmp_path / "small"
    if not _mount_tmpfs(disk, "1m"):
        pytest.skip("needs root and tmpfs")
    try:
        args = collect_args(disk / "d.h5", 20)
        args[args.index("--steps") + 1], args[args.index("--img-size") + 1] = "30", "64"
        proc = subprocess.run([sys.executable, "-m", "masklam", *args], capture_output=True, text=True, timeout=120)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert len(lines) == 1 and "no space left on the device" in lines[0]
        assert not (disk / "d.h5").exists() and not list(disk.rglob("*.tmp"))
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# --- memory ---------------------------------------------------------------------------------------------------
def tiny_dataset(path: Path, trajectories: int = 2, steps: int = 4, size: int = 16, action_dim: int = 6,
                 masks: bool = True) -> Path:
    rng = np.random.default_rng(0)
    with write_atomically(path) as f:
        f.attrs.update({"domain_name": "cheetah", "task_name": "run", "img_hw": size, "version": 1})
        for i in range(trajectories):
            traj = Trajectory(rng.integers(0, 255, (steps, size, size, 3), np.uint8),
                              rng.standard_normal((steps, 17)).astype(np.float32),
                              rng.uniform(-1, 1, (steps, action_dim)).astype(np.float32),
                              np.zeros(steps, np.float32), np.zeros((steps, size, size), bool) if masks else None)
            write_trajectory(f, str(i), traj)
    return path


def test_a_dataset_larger_than_memory_is_refused_before_loading(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from masklam.data import load_dataset

    data = tiny_dataset(tmp_path / "d.h5")
    monkeypatch.setattr(resources, "available_memory", lambda: 1000)
    with pytest.raises(MasklamRuntimeError, match=f"not enough memory for loading 8 frames of {data} whole"):
        load_dataset(data, progress=False)
    monkeypatch.undo()
    assert load_dataset(data, progress=False).num_frames == 8


def fake_cgroup(root: Path, v2: bool, limits: dict[str, int | str], usage: int, cache: int) -> Path:
    """A cgroup mount under `root` with the process in /box/job; `limits` maps a folder ('', 'box',
    'box/job') to its limit. Returns the /proc/self/cgroup file naming the process's cgroup."""
    names = ("memory.max", "memory.current", "inactive_file", "active_file") if v2 else \
        ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file", "total_active_file")
    base = root if v2 else root / "memory"
    for rel, limit in limits.items():
        d = base / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / names[0]).write_text(f"{limit}\n")
        (d / names[1]).write_text(f"{usage}\n")
        (d / "memory.stat").write_text(f"anon 5\n{names[2]} {cache // 2}\n{names[3]} {cache - cache // 2}\n")
    if v2:
        (root / "cgroup.controllers").write_text("cpu memory\n")
    proc = root / "proc-cgroup"
    proc.write_text("0::/box/job\n" if v2 else "5:cpu:/\n4:memory:/box/job\n0::/\n")
    return proc


@pytest.mark.parametrize("v2", [False, True])
def test_a_containers_memory_limit_counts_not_only_the_hosts_free_memory(tmp_path: Path, v2: bool) -> None:
    gib = 1 << 30
    # the tightest limit is the parent's (box: 4 GiB); 3 GiB in use of which 1 GiB is page cache (active and inactive
    # file pages, reclaimed before an OOM kill)
    proc = fake_cgroup(tmp_path, v2, {"": "max" if v2 else 9223372036854771712, "box": 4 * gib, "box/job": 8 * gib},
                       usage=3 * gib, cache=1 * gib)
    assert resources.cgroup_available(proc, tmp_path) == 2 * gib
    # no limit anywhere: nothing to say, the host's MemAvailable decides
    proc = fake_cgroup(tmp_path / "free", v2, {"": "max" if v2 else 9223372036854771712, "box/job": "max"
                       if v2 else 9223372036854771712}, usage=gib, cache=0)
    assert resources.cgroup_available(proc, tmp_path / "free") is None
    assert resources.cgroup_available(tmp_path / "missing", tmp_path) is None


def test_check_memory_refuses_what_the_cgroup_does_not_allow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources, "cgroup_available", lambda: 1 << 20)  # the host has GiBs, the container 1 MiB
    assert resources.available_memory() == 1 << 20
    with pytest.raises(MasklamRuntimeError, match="not enough memory for a test: needs 2.1 MB, 1.0 MB available"):
        resources.check_memory(2 << 20, "a test")


# --- artefacts that do not fit ---------------------------------------------------------------------------------
def save_policy(d: Path, action_dim: int = 6, img: int = 16, target: str = "action", out_dim: int | None = None,
                task: str = "cheetah-run") -> Path:
    from masklam.downstream.policy import ImagePolicy, PolicyConfig

    meta = {"task": task, "img_size": img, "shadows": False, "reflections": False}
    ImagePolicy(PolicyConfig(out_dim or action_dim, action_dim, 1, img, hidden=8, target=target,
                             env_meta=meta)).save_pretrained(d)
    return d


def test_a_policy_of_another_task_is_one_line_before_any_episode(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    policy = save_policy(tmp_path / "cheetah-policy")  # cheetah-run: 6 actions; hopper-hop takes 4
    code, lines = run_cli(["evaluate", "--policy", str(policy), "--task", "hopper-hop", "--episodes", "1",
                           "--workers", "0", "--max-episode-steps", "3", "--out", str(tmp_path / "e.json")], capsys)
    line = one_error_line(lines)
    assert code == 2 and f"the policy {policy} outputs 6 actions, hopper-hop takes 4" in line
    assert not (tmp_path / "e.json").exists()


def test_a_rollout_checks_actions_and_frames_against_the_env() -> None:
    from masklam.envs.rollout import EnvSpec, rollout

    class Policy:
        frame_stack, action_dim, obs_shape, source = 1, 3, (4, 4, 3), "the policy P"

        def select_action(self, obs: np.ndarray) -> np.ndarray:
            return np.zeros((len(obs), self.action_dim), np.float32)

    with pytest.raises(MasklamError, match="the policy P outputs 3 actions, fake-task takes 2"):
        rollout(Policy(), EnvSpec("fake-task", {}, FACTORY), 1, progress=False)
    Policy.action_dim, Policy.obs_shape = 2, (8, 8, 3)
    with pytest.raises(MasklamError, match=r"reads observations of shape \(8, 8, 3\), fake-task gives \(4, 4, 3\)"):
        rollout(Policy(), EnvSpec("fake-task", {}, FACTORY), 1, progress=False)
    Policy.obs_shape = (4, 4, 3)
    assert len(rollout(Policy(), EnvSpec("fake-task", {}, FACTORY), 2, progress=False).returns) == 2


def test_a_decoder_of_another_policy_or_task_is_refused(tmp_path: Path) -> None:
    from masklam.downstream.agent import load_policy
    from masklam.downstream.decoder import ActionDecoder

    policy = save_policy(tmp_path / "p", target="latent", out_dim=8)
    ActionDecoder(16, 6, hidden=8).save_pretrained(tmp_path / "wide")
    ActionDecoder(8, 4, hidden=8).save_pretrained(tmp_path / "hopper")
    with pytest.raises(MasklamError, match="decoder expects latent of width 16, the policy gives 8"):
        load_policy(policy, tmp_path / "wide")
    with pytest.raises(MasklamError, match="the decoder outputs 4 actions, the policy's task takes 6"):
        load_policy(policy, tmp_path / "hopper")


def test_a_lam_or_policy_against_data_it_does_not_fit(tmp_path: Path) -> None:
    from masklam.downstream.policy import ImagePolicy
    from masklam.downstream.targets import check_policy_data
    from masklam.train.checkpoint import check_lam_data

    data = tiny_dataset(tmp_path / "d.h5", size=16, masks=False)
    lam = tmp_path / "lam"
    lam.mkdir()
    (lam / "config.json").write_text(json.dumps({"model": {"img_hw": 64}}))
    with pytest.raises(MasklamError, match=f"the LAM {lam} was trained on 64x64 frames, {data} has 16x16"):
        check_lam_data(lam, [data])
    (lam / "config.json").write_text(json.dumps({"model": {"img_hw": 16, "mask_channel": True},
                                                 "mask_key": "sam2_masks"}))
    with pytest.raises(MasklamError, match=f"reads agent masks \\(sam2_masks\\) with its frames; {data} has none"):
        check_lam_data(lam, [data])
    hopper = tiny_dataset(tmp_path / "h.h5", action_dim=4)
    policy = ImagePolicy.from_pretrained(save_policy(tmp_path / "p"))
    check_policy_data(policy, "P", [data])
    with pytest.raises(MasklamError, match=f"the policy P was trained with 6 actions, {hopper} has 4"):
        check_policy_data(policy, "P", [hopper])
    small = ImagePolicy.from_pretrained(save_policy(tmp_path / "p8", img=8))
    with pytest.raises(MasklamError, match=f"reads 8x8 frames, {data} has 16x16"):
        check_policy_data(small, "P", [data])


def test_probing_a_lam_on_frames_of_another_size_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                             write_synthetic_dataset, small_cfg) -> None:
    from masklam.train.pretrain import pretrain

    lam = tmp_path / "lam"
    pretrain(small_cfg("lapo", write_synthetic_dataset(tmp_path / "d32.h5", n_traj=4, length=8, H=32), lam))
    small = tiny_dataset(tmp_path / "d16.h5", size=16)
    code, lines = run_cli(["probe", str(lam), "--data", str(small), "--no-write"], capsys)
    assert code == 2
    assert f"the LAM {lam} was trained on 32x32 frames, {small} has 16x16" in one_error_line(lines)
    code, _ = run_cli(["probe", str(lam), "--device", "cpu"], capsys)  # on its own data: the scores, and how
    record = json.loads((lam / "metrics.json").read_text())["probe_config"]
    assert code == 0 and record["data"] == [str(tmp_path / "d32.h5")] and record["heldout"] > 0
    assert record["split_seed"] == 0 and record["ridge"] is None


def test_a_checkpoint_of_an_unknown_format_names_the_version(tmp_path: Path) -> None:
    from masklam.downstream.policy import ImagePolicy

    d = save_policy(tmp_path / "p")
    raw = json.loads((d / "config.json").read_text())
    assert raw["masklam_format"] == 1 and "masklam_version" in raw
    ImagePolicy.from_pretrained(d)  # its own format reads back
    (d / "config.json").write_text(json.dumps({**raw, "masklam_format": 9, "masklam_version": "9.0"}))
    with pytest.raises(MasklamError, match=r"written by masklam 9.0 \(format 9\); this masklam .* reads format 1..3"):
        ImagePolicy.from_pretrained(d)
    del raw["masklam_format"], raw["masklam_version"]  # written before the field existed: format 1
    (d / "config.json").write_text(json.dumps(raw))
    ImagePolicy.from_pretrained(d)


# --- concurrent writers ----------------------------------------------------------------------------------------
def test_a_second_writer_of_the_same_output_is_refused_naming_the_holder(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "d.h5"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom masklam.locks import output_lock\n"
                               f"with output_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, lines = run_cli(collect_args(out), capsys)
        line = one_error_line(lines)
        assert code == 1 and f"{out} is being written by another masklam process (pid {holder.pid}" in line
        assert not out.exists() and not (tmp_path / "d.h5.parts").exists()  # refused before touching anything
    finally:
        holder.kill()
        holder.wait()
    code, _ = run_cli(collect_args(out, 1), capsys)  # the holder died: its lock died with it
    assert code == 0 and out.is_file() and not lock_path(out).exists()


def test_two_collects_of_one_output_at_once_leave_one_complete_file(tmp_path: Path) -> None:
    out = tmp_path / "d.h5"
    cmd = [sys.executable, "-m", "masklam", *collect_args(out, 4)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    for code, err in results:  # whichever came second waited for nothing: refused, or found the file done
        assert code in (0, 1), err
        if code == 1:
            lines = [line for line in err.splitlines() if line.strip()]
            assert len(lines) == 1 and "is being written by another masklam process" in lines[0]
    assert 0 in [code for code, _ in results]
    from masklam.data import read_layout

    assert read_layout(out).num_trajectories == 4 and not (tmp_path / "d.h5.parts").exists()


def test_the_lock_is_reentrant_in_one_process_and_removed_after(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with output_lock(out):
        with output_lock(out):
            assert lock_path(out).is_file()
        assert lock_path(out).is_file()
    assert not lock_path(out).exists()
    lock_path(out).write_text("pid 1: left by a killed run\n")  # a stale file without a holder is taken
    with output_lock(out):
        assert f"pid {os.getpid()}" in lock_path(out).read_text()


def test_queued_locks_take_turns_across_processes_and_leave_no_file(tmp_path: Path) -> None:
    """Four processes append to one file, each read-modify-write under queued_lock with a pause inside: no append is
    lost (the lock is exclusive, also for a process that waited on the file a holder removed), and no lock file is
    left in the temporary directory."""
    import subprocess
    import sys

    from masklam.locks import queued_lock_path

    out = tmp_path / "points.txt"
    out.write_text("")
    code = (f"import sys, time; from pathlib import Path; from masklam.locks import queued_lock\n"
            f"p = Path({str(out)!r})\n"
            "for i in range(5):\n"
            "    with queued_lock(p):\n"
            "        text = p.read_text(); time.sleep(0.01); p.write_text(text + sys.argv[1])\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(n)]) for n in range(4)]
    assert [proc.wait(timeout=60) for proc in procs] == [0] * 4
    assert sorted(out.read_text()) == sorted("0123" * 5)  # 20 appends, none lost
    assert not queued_lock_path(out).exists()


def test_a_run_refused_before_writing_leaves_no_folder_made_for_its_lock(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The lock beside --out makes --out's parent folders; a run refused inside the lock (its data missing) takes
    back those it made, and none that held something before or hold its output after."""
    code, lines = run_cli(["pretrain", "--method", "lapo", "--data", str(tmp_path / "nope.h5"),
                           "--out", str(tmp_path / "new" / "deeper" / "run")], capsys)
    assert code == 2 and "no such file" in one_error_line(lines) and not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    with output_lock(tmp_path / "kept" / "a" / "run"):
        (tmp_path / "kept" / "a" / "run").mkdir()  # the output, written
    assert (tmp_path / "kept" / "a" / "run").is_dir()
    with output_lock(tmp_path / "kept" / "b" / "run"):
        pass
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["a"]


def test_a_readers_brief_probe_of_a_lock_does_not_refuse_its_writer(tmp_path: Path) -> None:
    """`experiment --status` and `report` probe a stage's lock with a shared flock for an instant; a writer that
    tries to take the lock in that instant waits it out instead of refusing (a killed multi-hour run)."""
    out = tmp_path / "stage"
    lock_path(out).write_text("")
    prober = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1]); "
                               "fcntl.flock(f, fcntl.LOCK_SH); print('probing', flush=True); time.sleep(0.05)",
                               str(lock_path(out))], stdout=subprocess.PIPE, text=True)
    try:
        assert prober.stdout.readline().strip() == "probing"
        with output_lock(out):  # taken once the probe lets go (~50 ms)
            assert f"pid {os.getpid()}" in lock_path(out).read_text()
    finally:
        prober.kill()
        prober.wait()


# --- workers ---------------------------------------------------------------------------------------------------
class FakeEnv:
    """4x4 frames, 2 actions, 3 steps; `fail_step` raises in that step of episode seed `fail_seed`."""

    class _Space:
        def __init__(self, shape: tuple[int, ...]) -> None:
            self.shape = shape

    observation_space, action_space = _Space((4, 4, 3)), _Space((2,))

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.episode = fail, -1

    def reset(self, seed: int):  # noqa: ANN201
        self.t, self.episode = 0, self.episode + 1
        return np.zeros((4, 4, 3), np.uint8), {}

    def step(self, action):  # noqa: ANN001, ANN201
        self.t += 1
        if self.fail and self.episode == 1 and self.t == 2:
            raise ValueError("cannot reshape array of size 6 into shape (4,)")
        return np.zeros((4, 4, 3), np.uint8), 1.0, False, self.t >= 3, {}

    def close(self) -> None:
        pass


def make_env(task: str, fail: bool = False) -> FakeEnv:
    return FakeEnv(fail)


class ZeroPolicy:
    frame_stack = 1

    def select_action(self, obs: np.ndarray) -> np.ndarray:
        return np.zeros((len(obs), 2), np.float32)


@pytest.mark.parametrize("workers", [0, 1])
def test_an_evaluation_worker_failure_is_one_line_naming_task_and_episode(workers: int) -> None:
    from masklam.envs.rollout import EnvSpec, rollout

    with pytest.raises(MasklamRuntimeError) as info:
        rollout(ZeroPolicy(), EnvSpec("fake-task", {"fail": True}, FACTORY), 3, workers=workers, progress=False)
    assert str(info.value) == ("evaluation worker (fake-task episode 1) failed: ValueError: cannot reshape array of "
                               "size 6 into shape (4,)")


def test_a_collect_worker_failure_is_one_line_naming_task_and_trajectory(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    from masklam.data import collect as collect_module

    real = collect_module.run_episode

    def flaky(env, policy, seed, steps, tick):  # noqa: ANN001, ANN202
        if seed == collect_module.stream_seed("collect", 0, 1):
            raise FloatingPointError("physics diverged")
        return real(env, policy, seed, steps, tick)

    monkeypatch.setattr(collect_module, "run_episode", flaky)
    code, lines = run_cli(collect_args(tmp_path / "d.h5"), capsys)
    assert code == 1 and one_error_line(lines) == ("masklam: error: collect worker (cheetah-run trajectory 1): "
                                                   "FloatingPointError: physics diverged")
    error = MasklamRuntimeError("collect worker (t trajectory 1): x")  # what a pool sends to the parent
    assert type(pickle.loads(pickle.dumps(error))) is MasklamRuntimeError


def test_a_masks_failure_is_one_line_naming_the_trajectory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from masklam.masks import command

    data = tiny_dataset(tmp_path / "d.h5", trajectories=2)

    def segmenter(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        def segment(video: np.ndarray, prompt, progress, where):  # noqa: ANN001, ANN202
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return segment, "cpu"

    monkeypatch.setattr(command, "video_segmenter", segmenter)
    with pytest.raises(MasklamRuntimeError, match=f"mobilesam masks \\({data} trajectory 0\\): RuntimeError: CUDA"):
        command.add_masks(data, tmp_path / "w.pt", key="masks_mobilesam", segmenter="mobilesam")


# --- exit codes ---------------------------------------------------------------------------------------------------
def test_the_cli_exits_2_for_bad_input_and_1_for_runtime_faults(capsys: pytest.CaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    def command(error: BaseException):  # noqa: ANN202
        def main(argv: list[str]) -> int:
            raise error
        return types.SimpleNamespace(main=main)

    for error, code in ((MasklamError("bad"), 2), (MasklamRuntimeError("fault"), 1),
                        (OSError(errno.ENOSPC, "No space left on device", "/x/y.h5"), 1)):
        monkeypatch.setattr(cli.importlib, "import_module", lambda name, e=error: command(e))
        got, lines = run_cli(["info"], capsys)
        assert got == code and len(lines) == 1 and lines[0].startswith("masklam: error: ")
    assert "no space left on the device of /x/y.h5" in lines[0]


# --- every numeric option of the commands has a range ---------------------------------------------------------
SIGNED = {"seed", "split_seed", "normalizer_id", "normalizer_ood"}
"""numeric options where a negative value means something (seeds; returns can be negative)"""


def _command_configs() -> dict[type, dict]:
    from masklam.data.collect import CollectConfig
    from masklam.downstream.bc import BCConfig
    from masklam.downstream.decode import DecodeConfig
    from masklam.downstream.evaluate import EvaluateConfig
    from masklam.downstream.stages import EvalOptions
    from masklam.train.config import PretrainConfig

    return {CollectConfig: dict(task="cheetah-run", out=Path("x.h5")), BCConfig: dict(data=("x",), out="o",
            target="action"), DecodeConfig: dict(policy="p", data=("x",), out="o"), EvaluateConfig: dict(policy="p"),
            PretrainConfig: dict(method="lapo", data=("x",), out="o"), EvalOptions: {}}


def test_every_numeric_option_of_the_commands_rejects_a_negative_value_in_one_line() -> None:
    import types
    import typing

    from masklam.typecheck import field_types

    checked, unnamed = 0, []
    for cls, required in _command_configs().items():
        for name, tp in field_types(cls).items():
            scalar = typing.get_origin(tp) in (None, typing.Union, types.UnionType)  # not a list of numbers
            numeric = [a for a in (typing.get_args(tp) or (tp,)) if a in (int, float)] if scalar else []
            if name in required or name in SIGNED or not numeric:
                continue
            with pytest.raises(MasklamError) as e:
                cls(**required, **{name: numeric[0](-1)})
            said = str(e.value)
            named = (name in said or name.replace("_", "-") in said) and ("-1" in said or "is only for" in said)
            unnamed += [] if named else [(cls, name, said)]
            checked += 1
    assert checked > 40
    assert not unnamed  # each line names the option and the value it refuses


# --- masklam import ---------------------------------------------------------------------------------------------
def _videos(tmp_path: Path, n: int = 2) -> Path:
    from masklam.data.video import VideoWriter

    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(n):
        with VideoWriter(folder / f"clip{i}.mp4", 10, 32, 32) as w:
            w.write(np.stack([np.full((32, 32, 3), 20 * t + 40 * i, np.uint8) for t in range(6)]))
    return folder


def test_an_import_into_a_full_disk_is_foreseen_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from masklam.data.parts import parts_dir

    videos, out = _videos(tmp_path), tmp_path / "d.h5"
    monkeypatch.setattr(resources, "free_bytes", lambda path: 1000)  # the parts fit, their merge does not
    code, lines = run_cli(["import", str(videos), "--out", str(out), "--img-size", "16", "--no-progress"], capsys)
    assert code == 1 and f"not enough disk space for assembling {out}" in one_error_line(lines)
    assert not out.exists() and len(list(parts_dir(out).glob("[0-9]*.h5"))) == 2  # the finished items are kept
    monkeypatch.undo()
    code, lines = run_cli(["import", str(videos), "--out", str(out), "--img-size", "16", "--no-progress"], capsys)
    assert code == 0 and out.is_file() and not parts_dir(out).exists()


def test_a_second_import_of_one_output_is_refused_at_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from masklam.locks import output_lock

    videos, out = _videos(tmp_path, 1), tmp_path / "d.h5"
    with output_lock(out):  # as if another process were importing into it: a lock this process does not hold
        from masklam import locks

        held = dict(locks._HELD)
        locks._HELD.clear()  # forget our own hold, so the lock is another writer's
        try:
            code, lines = run_cli(["import", str(videos), "--out", str(out), "--no-progress"], capsys)
        finally:
            locks._HELD.update(held)
    assert code == 1 and "is being written by another masklam process" in one_error_line(lines)
    assert not out.exists()


def test_a_second_sweep_of_the_same_seeds_is_refused_other_seeds_may_share_the_run_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from masklam import locks
    from masklam.downstream import experiment
    from masklam.quickstart import QuickstartConfig, experiment_config

    ran = []
    monkeypatch.setattr(experiment, "_run_locked", lambda cfg, render: ran.append(cfg.seeds) or [])
    exp = experiment_config(QuickstartConfig(preset="toy", out=tmp_path / "run", seeds=(0,), progress=False,
                                             device="cpu"))
    with locks.output_lock(tmp_path / "run" / "sweep-seeds-0"):
        held = dict(locks._HELD)
        locks._HELD.clear()  # as if another process held it
        try:
            with pytest.raises(MasklamError, match="is being written by another masklam process"):
                experiment.run_experiment(exp)
            import dataclasses

            experiment.run_experiment(dataclasses.replace(exp, seeds=[1]))  # other seeds: side by side
        finally:
            locks._HELD.update(held)
    assert ran == [[1]]
    with locks.output_lock(tmp_path / "run" / "sweep-seeds-0-1"):
        held = dict(locks._HELD)
        locks._HELD.clear()
        try:  # the same seeds in another order: the same sweep
            with pytest.raises(MasklamError, match="is being written by another masklam process"):
                experiment.run_experiment(dataclasses.replace(exp, seeds=[1, 0]))
        finally:
            locks._HELD.update(held)


def test_sweeps_sharing_a_run_directory_write_temporaries_of_their_own(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from masklam.downstream.results import write_results

    names = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: names.append(Path(a).name) or real(a, b))
    write_results(tmp_path / "results.csv", [])
    write_results(tmp_path / "results.csv", [])
    assert len(set(names)) == 2 and all(n.startswith("results.csv.") and n.endswith(".tmp") for n in names)


def test_an_output_that_cannot_be_a_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from masklam.files import read_json

    (tmp_path / "afile").write_text("in the way")
    code = cli.main(["collect", "--task", "cheetah-run", "--episodes", "1", "--steps", "2", "--policy", "random",
                     "--out", str(tmp_path / "afile" / "d.h5"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"cannot create the folder {tmp_path / 'afile'}" in err and len(err.splitlines()) == 1
    assert f"{tmp_path / 'afile'} is a file, where a folder is needed" in err  # the reason, naming what is in the way
    with pytest.raises(MasklamError, match="cannot read the file"):
        read_json(tmp_path)  # a folder
