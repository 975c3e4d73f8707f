"""Background videos from a folder (DAVIS-2017, the papers' backgrounds, or any <video>/*.jpg folders):
their train/eval split, and `--background-path` through collect, the file's attrs, experiments and quickstart."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from masklam.envs.videos import DAVIS17_VAL, DavisVideos, video_split_names
from masklam.errors import MasklamError

pil = pytest.importorskip("PIL.Image")

RED = (230, 20, 20)


def video_folder(root: Path, names: list[str], davis: bool = False, frames: int = 3,
                 color: tuple[int, int, int] | None = None) -> Path:
    """`root/<name>/00000.jpg ...` (or DAVIS's `root/JPEGImages/480p/<name>/...`): small random or solid JPEGs."""
    rng = np.random.default_rng(0)
    base = root / "JPEGImages" / "480p" if davis else root
    for name in names:
        d = base / name
        d.mkdir(parents=True)
        for t in range(frames):
            img = (np.broadcast_to(np.asarray(color, np.uint8), (24, 40, 3)) if color
                   else rng.integers(0, 255, (24, 40, 3), dtype=np.uint8))
            pil.fromarray(np.ascontiguousarray(img)).save(d / f"{t:05d}.jpg", quality=95)
    return root


def test_split_of_any_video_folder(tmp_path: Path) -> None:
    names = [f"v{i}" for i in range(7)]
    assert video_split_names(tmp_path, names) == (["v0", "v1", "v3", "v4", "v6"], ["v2", "v5"])  # every third
    assert video_split_names(tmp_path, ["b", "a"]) == (["a"], ["b"])
    assert video_split_names(tmp_path, ["a"]) == (["a"], [])
    # DAVIS names in a plain folder: a plain folder (every third); in a DAVIS root: the standard DAVIS-2017 split
    davis_names = ["bear", "blackswan", "boat", "cows"]
    assert video_split_names(tmp_path, davis_names) == (["bear", "blackswan", "cows"], ["boat"])
    (tmp_path / "JPEGImages" / "480p").mkdir(parents=True)
    assert video_split_names(tmp_path, davis_names) == (["bear", "boat"], ["blackswan", "cows"])
    assert video_split_names(tmp_path, ["bear", "boat", "car-turn"]) == (["bear", "boat", "car-turn"], [])
    (tmp_path / "ImageSets" / "2017").mkdir(parents=True)
    (tmp_path / "ImageSets" / "2017" / "train.txt").write_text("v1\nv2\n")  # the folder's own split file wins
    assert video_split_names(tmp_path, names[:4]) == (["v1", "v2"], ["v0", "v3"])
    assert len(DAVIS17_VAL) == 30


def test_plain_and_davis_layouts_give_disjoint_split_ids(tmp_path: Path) -> None:
    plain = video_folder(tmp_path / "plain", ["a", "b", "c", "d"])
    train, held = DavisVideos(plain, "train", 16), DavisVideos(plain, "eval", 16)
    assert [train.name(i) for i in train.ids] == ["a", "b", "d"] and [held.name(i) for i in held.ids] == ["c"]
    assert not set(train.ids) & set(held.ids)
    assert held.frame(held.ids[0], 2).shape == (16, 16, 3) and held.num_frames(held.ids[0]) == 3
    davis = video_folder(tmp_path / "davis", ["bear", "dog"], davis=True)
    assert [DavisVideos(davis, "eval", 8).name(i) for i in DavisVideos(davis, "eval", 8).ids] == ["dog"]
    with pytest.raises(MasklamError, match="no eval videos"):
        DavisVideos(video_folder(tmp_path / "one", ["a"]), "eval", 8)
    # a train-only DAVIS download: all its videos train (no DAVIS training video is ever an eval video)
    train_only = video_folder(tmp_path / "davis-train", ["bear", "boat", "car-turn"], davis=True)
    assert len(DavisVideos(train_only, "train", 8).ids) == 3
    with pytest.raises(MasklamError, match="no eval videos"):
        DavisVideos(train_only, "eval", 8)
    with pytest.raises(MasklamError, match="is not a folder"):
        DavisVideos(tmp_path / "nowhere", "train", 8)
    (tmp_path / "empty" / "a").mkdir(parents=True)  # a video folder without frames is no video
    with pytest.raises(MasklamError, match="no <video>"):
        DavisVideos(tmp_path / "empty", "train", 8)


def _cfg(out: Path, **kw):
    from masklam.data.collect import CollectConfig

    base = dict(task="cheetah-run", out=out, distractors="composite", episodes=1, steps=4, policy="random",
                img_size=32, shadows=False, reflections=False, multisample=False, progress=False)
    return CollectConfig(**{**base, **kw})


def test_collect_with_background_path_shows_the_folder_and_records_it(tmp_path: Path) -> None:
    from masklam.data.collect import collect, main as collect_main
    from masklam.downstream.targets import env_meta_of

    videos = video_folder(tmp_path / "red", ["a", "b", "c"], color=RED)  # train: a, b; eval: c
    out = tmp_path / "d.h5"
    collect(_cfg(out, background_path=videos))
    with h5py.File(out) as f:
        attrs = {k: f.attrs[k] for k in f.attrs}
        obs, masks, vid = f["0"]["obs"][()], f["0"]["masks"][()], f["0"]["video_id"][()]
    assert attrs["background_path"] == str(videos.resolve())
    assert env_meta_of(attrs, {})["background_path"] == str(videos.resolve())  # evaluation sees the same videos
    assert set(vid.tolist()) <= {0, 1}  # training videos only
    background = obs[~masks].astype(int)  # composite: the video frame replaces every non-agent pixel
    assert np.abs(np.median(background, axis=0) - RED).max() <= 12
    # without the option the attrs lack the key, and a run with other backgrounds cannot extend the file
    plain = tmp_path / "p.h5"
    collect(_cfg(plain))
    with h5py.File(plain) as f:
        assert "background_path" not in f.attrs
        assert np.abs(np.median(f["0"]["obs"][()][~f["0"]["masks"][()]].astype(int), axis=0) - RED).max() > 12
    with pytest.raises(MasklamError, match="without background_path"):
        collect(_cfg(plain, episodes=2, background_path=videos))
    with pytest.raises(MasklamError, match="lacks it"):
        collect(_cfg(out, episodes=2))
    # a missing or empty folder, or one without the split asked for: one line, before any file is written
    for bad, match in ((tmp_path / "nowhere", "is not a folder"), (tmp_path, "no <video>")):
        with pytest.raises(MasklamError, match=match):
            collect(_cfg(tmp_path / "x.h5", background_path=bad))
    with pytest.raises(MasklamError, match="no eval videos"):
        collect(_cfg(tmp_path / "x.h5", background_path=video_folder(tmp_path / "one", ["a"]), video_split="eval"))
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "x.h5.parts").exists()
    # the command line: --background-path DIR, eval videos
    assert collect_main(["--task", "cheetah-run", "--out", str(tmp_path / "e.h5"), "--episodes", "1", "--steps", "3",
                         "--policy", "random", "--img-size", "16", "--no-shadows", "--no-progress",
                         "--distractors", "masklam", "--video-split", "eval",
                         "--background-path", str(videos)]) == 0
    with h5py.File(tmp_path / "e.h5") as f:
        assert f.attrs["split"] == "eval" and set(f["0"]["video_id"][()].tolist()) == {2}


def test_quickstart_passes_the_folder_to_collection_and_evaluation_only_when_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from masklam.downstream.experiment import ExperimentConfig
    from masklam.downstream.cache import stage_key
    from masklam.quickstart import QuickstartConfig, experiment_config

    videos = video_folder(tmp_path / "v", ["a", "b", "c"])
    default = experiment_config(QuickstartConfig(preset="toy", device="cpu", out=tmp_path, progress=False))
    spec = default.data["cheetah-run"]
    assert "background_path" not in spec["collect"] and "background_path" not in default.env  # keys unchanged
    exp = experiment_config(QuickstartConfig(preset="toy", device="cpu", out=tmp_path, progress=False,
                                             background_path=videos))
    spec2 = exp.data["cheetah-run"]
    assert spec2["collect"] == {**spec["collect"], "background_path": str(videos)}
    assert exp.env == {**default.env, "background_path": str(videos)}
    assert spec2["collect_clean"] == spec["collect_clean"]  # no backgrounds in the clean data: same stage
    key = stage_key("collect", {"task": "cheetah-run", **spec["collect"]})
    assert key == "88fb71aeab80b88f"  # the default's collect key, as before background folders
    assert stage_key("collect", {"task": "cheetah-run", **spec2["collect"]}) != key
    # a relative folder enters the key as its absolute path
    monkeypatch.chdir(tmp_path)
    rel = experiment_config(QuickstartConfig(preset="toy", device="cpu", out=tmp_path, progress=False,
                                             background_path=Path("v")))
    assert rel.data["cheetah-run"]["collect"] == spec2["collect"] and rel.env == exp.env
    with pytest.raises(MasklamError, match="is not a folder"):
        experiment_config(QuickstartConfig(preset="toy", device="cpu", out=tmp_path, progress=False,
                                           background_path=tmp_path / "nowhere"))
    # an experiment checks collect tables and [env] (both evaluation splits) at load
    base = dict(out=tmp_path, tasks=["cheetah-run"], methods=["lapo"], data={"cheetah-run": {"collect": {}}})
    with pytest.raises(MasklamError, match="is not a folder"):
        ExperimentConfig(**{**base, "data": {"cheetah-run": {"collect": {"background_path": str(tmp_path / "no")}}}})
    with pytest.raises(MasklamError, match="no eval videos"):
        ExperimentConfig(**base, env={"background_path": str(video_folder(tmp_path / "one", ["a"]))})
    # no [env] folder: 'ood' evaluation plays the collect folder's held-out videos, so it must have some
    one = {"cheetah-run": {"collect": {"background_path": str(tmp_path / "one")}}}
    with pytest.raises(MasklamError, match="no eval videos"):
        ExperimentConfig(**{**base, "data": one})
    assert ExperimentConfig(**{**base, "data": one}, splits=["id"]).splits == ["id"]
    assert ExperimentConfig(**base, env={"background_path": str(videos)}).env["background_path"] == str(videos)
