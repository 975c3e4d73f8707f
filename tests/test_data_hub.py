"""`masklam import user/name`: a LeRobot dataset fetched from the Hugging Face Hub, offline here (the Hub's
download functions are replaced by a fake over local folders, one per repo)."""
from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from masklam.data import hub as hub_module
from masklam.data.importer import ImportConfig, run_import
from masklam.data.lerobot_writer import LeRobotWriter
from masklam.errors import MasklamError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """hf_hub_download and snapshot_download over `root/<repo_id>/`, into a cache of snapshots named COMMIT."""

    def __init__(self, root: Path, cache: Path):
        self.root, self.cache, self.calls = root, cache, []

    def _snapshot(self, repo_id: str, revision: str | None) -> tuple[Path, Path]:
        repo = self.root / repo_id
        if not repo.is_dir() or revision not in (None, "main", COMMIT):
            raise FileNotFoundError(f"404 Client Error: Repository Not Found for {repo_id}@{revision}")
        return repo, self.cache / repo_id.replace("/", "--") / "snapshots" / COMMIT

    def download(self, repo_id, filename, repo_type=None, revision=None, cache_dir=None):
        self.calls.append(("download", repo_id, filename, repo_type))
        repo, snap = self._snapshot(repo_id, revision)
        (snap / filename).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(repo / filename, snap / filename)
        return str(snap / filename)

    def snapshot(self, repo_id, repo_type=None, revision=None, cache_dir=None, allow_patterns=None):
        self.calls.append(("snapshot", repo_id, tuple(allow_patterns), repo_type))
        repo, snap = self._snapshot(repo_id, revision)
        for f in repo.rglob("*"):
            name = f.relative_to(repo).as_posix()
            if f.is_file() and any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                (snap / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, snap / name)
        return str(snap)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    fake = FakeHub(tmp_path / "hub", tmp_path / "cache")
    monkeypatch.setattr(hub_module, "hf_hub_download", fake.download)
    monkeypatch.setattr(hub_module, "snapshot_download", fake.snapshot)
    return fake


def write_dataset(root: Path, second_camera: bool = False) -> Path:
    """A LeRobot v3.0 dataset of 2 episodes (16x16, 10 fps, 2-D actions); with a second camera, a copy of the
    first's video and episode columns under another key (only the chosen camera's videos may be fetched)."""
    import pyarrow.parquet as pq

    writer = LeRobotWriter(root, fps=10, img_hw=(16, 16), action_dim=2)
    rng = np.random.default_rng(0)
    for i in range(2):
        writer.add_episode([rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)], 6,
                           actions=np.full((6, 2), i, np.float32))
    writer.finish()
    if second_camera:
        info = json.loads((root / "meta/info.json").read_text())
        info["features"]["observation.images.wrist"] = {**info["features"]["observation.image"]}
        (root / "meta/info.json").write_text(json.dumps(info))
        wrist = root / "videos/observation.images.wrist/chunk-000/file-000.mp4"
        wrist.parent.mkdir(parents=True)
        shutil.copy(root / "videos/observation.image/chunk-000/file-000.mp4", wrist)
        episodes = next((root / "meta/episodes").rglob("*.parquet"))
        table = pq.read_table(episodes)
        for name in [c for c in table.column_names if c.startswith("videos/observation.image/")]:
            table = table.append_column(name.replace("observation.image", "observation.images.wrist"),
                                        table.column(name))
        pq.write_table(table, episodes)
    return root


def test_a_hub_repo_id_imports_as_its_local_copy_does(hub, tmp_path):
    write_dataset(tmp_path / "hub" / "me" / "tiny")
    local = run_import(ImportConfig(src=tmp_path / "hub" / "me" / "tiny", out=tmp_path / "local.h5", img_size=16,
                                    progress=False))
    fetched = run_import(ImportConfig(src=Path("me/tiny"), out=tmp_path / "hub.h5", img_size=16, progress=False))
    assert (fetched.trajectories, fetched.frames) == (local.trajectories, local.frames) == (2, 12)
    with h5py.File(tmp_path / "local.h5") as a, h5py.File(tmp_path / "hub.h5") as b:
        for name in a:
            assert np.array_equal(a[name]["obs"][()], b[name]["obs"][()])
            assert np.array_equal(a[name]["actions"][()], b[name]["actions"][()])
        assert b.attrs["hub_repo_id"] == "me/tiny" and b.attrs["hub_revision"] == COMMIT
        assert "hub_repo_id" not in a.attrs
    from masklam.data.info import format_summary, summarize

    text = format_summary(summarize(tmp_path / "hub.h5"))
    assert f"task          none (imported lerobot me/tiny@{COMMIT[:8]})" in text
    assert ("download", "me/tiny", "meta/info.json", "dataset") in hub.calls  # a dataset repo, not a model


def test_only_the_chosen_cameras_videos_are_fetched(hub, tmp_path):
    write_dataset(tmp_path / "hub" / "me" / "two", second_camera=True)
    with pytest.raises(MasklamError, match="me/two has 2 cameras .*observation.image, observation.images.wrist.*"
                                           "--camera"):
        run_import(ImportConfig(src=Path("me/two"), out=tmp_path / "a.h5", img_size=16, progress=False))
    assert not [c for c in hub.calls if c[0] == "snapshot"]  # refused after meta/info.json alone
    run_import(ImportConfig(src=Path("me/two"), out=tmp_path / "b.h5", img_size=16, camera="observation.image",
                            progress=False))
    snap = tmp_path / "cache" / "me--two" / "snapshots" / COMMIT
    assert (snap / "videos/observation.image/chunk-000/file-000.mp4").is_file()
    assert not (snap / "videos/observation.images.wrist").exists()
    assert hub_module.camera_pattern(
        {"features": {"cam": {"dtype": "video"}},
         "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"},
        "cam") == "videos/chunk-*/cam/episode_*.mp4"  # a v2.1 layout


def test_an_unknown_repo_or_a_revision_of_a_local_path_is_one_line(hub, tmp_path):
    with pytest.raises(MasklamError, match="cannot fetch the dataset 'me/none' from the Hugging Face Hub: no such "
                                           "local path"):
        run_import(ImportConfig(src=Path("me/none"), out=tmp_path / "a.h5", progress=False))
    write_dataset(tmp_path / "hub" / "me" / "tiny")
    with pytest.raises(MasklamError, match="at revision 'v9'"):
        run_import(ImportConfig(src=Path("me/tiny"), out=tmp_path / "a.h5", revision="v9", progress=False))
    write_dataset(tmp_path / "hub" / "me" / "old")
    info = json.loads((tmp_path / "hub" / "me" / "old" / "meta/info.json").read_text())
    (tmp_path / "hub" / "me" / "old" / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v1.6"}))
    with pytest.raises(MasklamError, match="me/old: LeRobot format 'v1.6'; masklam reads v2.0, v2.1, v3.0"):
        run_import(ImportConfig(src=Path("me/old"), out=tmp_path / "a.h5", progress=False))
    (tmp_path / "data").mkdir()
    with pytest.raises(MasklamError, match="--revision picks a Hub dataset's version; .* is a local path"):
        run_import(ImportConfig(src=tmp_path / "data", out=tmp_path / "a.h5", revision="v3.0", progress=False))
    assert not list(tmp_path.glob("a.h5*")) and not [c for c in hub.calls if c[0] == "snapshot"]


def test_label_writes_latents_into_a_copy_of_a_whole_hub_dataset(hub, tmp_path):
    """label --data user/name fetches every camera (the labelled copy is the whole dataset) and labels the camera
    the LAM was trained on; its latents are those of the same dataset as a local directory."""
    import pyarrow.parquet as pq

    from masklam.downstream.label import LabelConfig, label
    from masklam.train.config import PretrainConfig
    from masklam.train.pretrain import pretrain

    write_dataset(tmp_path / "hub" / "me" / "two", second_camera=True)
    data = tmp_path / "d.h5"
    run_import(ImportConfig(src=Path("me/two"), out=data, img_size=16, camera="observation.image", progress=False))
    run = tmp_path / "run"
    pretrain(PretrainConfig(method="lapo", data=(data,), out=run, updates=2, batch_size=4, latent_dim=8,
                            tensorboard=False, progress=False, recon_samples=2, threads=1, heldout=0))
    out = label(LabelConfig(lam=run, data=Path("me/two"), out=tmp_path / "labelled", progress=False, device="cpu"))
    wrist = "videos/observation.images.wrist/chunk-000/file-000.mp4"
    assert (out / wrist).read_bytes() == (tmp_path / "hub" / "me" / "two" / wrist).read_bytes()
    local = label(LabelConfig(lam=run, data=tmp_path / "hub" / "me" / "two", out=tmp_path / "local", progress=False,
                              device="cpu"))
    z, want = (np.asarray(pq.read_table(next((d / "data").rglob("*.parquet"))).column("latent_action").to_pylist())
               for d in (out, local))
    assert z.shape == (12, 8) and np.array_equal(z, want)
    with pytest.raises(MasklamError, match="--revision picks a Hub dataset's version"):
        label(LabelConfig(lam=run, data=data, out=tmp_path / "x.h5", revision="main", progress=False))


def test_a_partly_cached_dataset_offline_and_a_wrong_lam_are_one_line_before_any_download(hub, tmp_path,
                                                                                          monkeypatch):
    from masklam.downstream.label import LabelConfig, label

    write_dataset(tmp_path / "hub" / "me" / "tiny")
    real_snapshot = hub.snapshot

    def offline(repo_id, allow_patterns=None, **kw):  # the cache's snapshot as it is: its metadata alone
        return real_snapshot(repo_id, allow_patterns=["meta/**"], **kw)

    monkeypatch.setattr(hub_module, "snapshot_download", offline)
    with pytest.raises(MasklamError, match=f"me/tiny \\(commit {COMMIT}\\) is only partly in the Hugging Face cache "
                                           "and the Hub did not give the rest"):
        run_import(ImportConfig(src=Path("me/tiny"), out=tmp_path / "a.h5", img_size=16, progress=False))
    calls = len(hub.calls)
    with pytest.raises(MasklamError, match="no-such-run"):
        label(LabelConfig(lam=tmp_path / "no-such-run", data=Path("me/tiny"), out=tmp_path / "l", progress=False))
    assert len(hub.calls) == calls  # nothing fetched for it
