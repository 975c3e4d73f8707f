"""LeRobot datasets on the Hugging Face Hub, by repo id: `masklam import lerobot/pusht --out pusht.h5`.

A source that is not a local path but a repo id ("user/name", the rule of `models.pretrained.is_local`) is fetched
into the Hugging Face cache before the import reads it as any LeRobot directory: first its meta/info.json, to
choose the camera (`--camera`, or its only one), then meta/, data/ and that camera's videos only (a dataset with
several cameras downloads one). A fetched snapshot is reused from the cache; offline, a cached one is used as it is.
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import hf_hub_download, snapshot_download

from masklam.data.lerobot import VERSIONS, choose_camera, lerobot_cameras, open_lerobot
from masklam.errors import MasklamError, one_line
from masklam.models.pretrained import is_local


@dataclass
class HubDataset:
    """A Hub dataset fetched into the cache: where it lies and what it was."""

    path: Path
    repo_id: str
    revision: str
    """the commit the snapshot holds (its cache folder's name)"""
    camera: str | None

    def attrs(self) -> dict[str, str]:
        """What an imported file records of its source (beside the snapshot path as `source`)."""
        return {"hub_repo_id": self.repo_id, "hub_revision": self.revision}


def is_hub_dataset(src: str | Path) -> bool:
    """True when `src` names a Hub repo ("user/name") rather than a local path."""
    return not is_local(str(src))


def camera_pattern(info: dict, camera: str) -> str:
    """The files of `camera`'s frames as a glob: its videos by `info`'s video_path (v3.0 and v2.x templates); an
    image camera's files under images/ (where they are not embedded in the data files)."""
    if info["features"][camera].get("dtype") != "video":
        return f"images/{camera}/**"
    template = str(info.get("video_path") or "videos/{video_key}/**")
    return re.sub(r"\{(?!video_key\})[^}]*\}", "*", template).replace("{video_key}", camera)


def fetch_dataset(repo_id: str, camera: str | None = None, revision: str | None = None,
                  cache_dir: str | Path | None = None, whole: bool = False) -> HubDataset:
    """Fetch a LeRobot dataset's metadata, data and one camera's videos from the Hub (`whole`: every camera's, for a
    labelled copy of the whole dataset; its camera then stays `camera`, chosen later). One-line error when they
    cannot be had: offline and not cached, no such repo or revision, not a LeRobot dataset."""
    what = f"the dataset {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        with _quiet_hub():
            info_file = hf_hub_download(repo_id, "meta/info.json", repo_type="dataset", revision=revision,
                                        cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001 - offline, unknown repo or revision, no meta/info.json: the user's to fix
        raise MasklamError(f"cannot fetch {what} from the Hugging Face Hub: no such local path, and its "
                           f"meta/info.json was not fetched ({one_line(e)[:250]})") from None
    try:
        info = json.loads(Path(info_file).read_text())
    except (OSError, ValueError) as e:
        raise MasklamError(f"{repo_id}: meta/info.json is not JSON ({one_line(e)[:250]})") from None
    version = str(info.get("codebase_version", "?"))
    if version not in VERSIONS:  # before any download
        raise MasklamError(f"{repo_id}: LeRobot format {version!r}; masklam reads {', '.join(VERSIONS)}")
    if whole:
        patterns, cameras = ["meta/**", "data/**", "videos/**", "images/**"], lerobot_cameras(info)
    else:
        camera = choose_camera(repo_id, info, camera)
        patterns, cameras = ["meta/**", "data/**", camera_pattern(info, camera)], [camera]
    commit = Path(info_file).parent.parent.name  # snapshots/<commit>/meta/info.json: the same commit throughout
    try:
        with _quiet_hub():
            path = Path(snapshot_download(repo_id, repo_type="dataset", revision=commit, cache_dir=cache_dir,
                                          allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001
        raise MasklamError(f"cannot fetch {what} from the Hugging Face Hub ({one_line(e)[:250]})") from None
    for cam in cameras:  # offline, the cache's snapshot is returned as it is: perhaps only part of the dataset
        try:
            open_lerobot(path, cam).close()
        except MasklamError as e:
            raise MasklamError(f"{repo_id} (commit {path.name}) is only partly in the Hugging Face cache and the Hub "
                               f"did not give the rest (offline?): {e}") from None
    return HubDataset(path, repo_id, path.name, camera)


@contextlib.contextmanager
def _quiet_hub():
    """huggingface_hub's own warnings (a failed HEAD request, retried) held back: its error becomes our one line."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
