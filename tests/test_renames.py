"""Renamed user-facing names (masklam.renames): an old config key or option still works, with one notice line;
both names at once is one line of error."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from masklam import errors, renames
from masklam.args import parse
from masklam.downstream import experiment as ex
from masklam.errors import MasklamError

BASE = 'out = "b"\ntasks = ["t"]\nmethods = ["lapo"]\nlabels = [1]\ndata = {{ t = {{ train = ["a.h5"] }} }}\n{}'


@pytest.fixture(autouse=True)
def _fresh_notices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(errors, "_said", set())  # each test sees its notices


def _notices(capsys: pytest.CaptureFixture) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "note:" in line]


def test_an_experiment_config_with_the_old_key_runs_as_the_new_one_with_one_notice(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "old.toml").write_text(BASE.format('pretrain_workers = 2\n'))
    cfg = ex.load_config(tmp_path / "old.toml")
    assert cfg.train_workers == 2
    said = _notices(capsys)
    assert len(said) == 1 and "pretrain_workers is now train_workers" in said[0] and "old.toml" in said[0]
    ex.load_config(tmp_path / "old.toml")  # once per process and file, not at every read
    assert _notices(capsys) == []
    # the old key in a config that extends one with the new key: renamed per file, so the child still wins
    (tmp_path / "base.toml").write_text(BASE.format('train_workers = 3\n'))
    (tmp_path / "child.toml").write_text('extends = "base.toml"\npretrain_workers = 1\n')
    raw, origins = ex.resolve_config(tmp_path / "child.toml")
    assert raw["train_workers"] == 1 and "pretrain_workers" not in raw
    assert origins["train_workers"] == str(tmp_path / "child.toml")
    assert ex.load_config(tmp_path / "base.toml").train_workers == 3


def test_both_names_in_one_config_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "both.toml").write_text(BASE.format('pretrain_workers = 2\ntrain_workers = 2\n'))
    with pytest.raises(MasklamError) as e:
        ex.load_config(tmp_path / "both.toml")
    assert "pretrain_workers and train_workers are one setting" in str(e.value) and "\n" not in str(e.value)


def test_scripts_building_the_config_with_the_old_name_still_work(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    cfg = ex.ExperimentConfig(out=tmp_path, tasks=["t"], methods=["lapo"], data={"t": {"train": ["a.h5"]}},
                              pretrain_workers=3)
    assert cfg.train_workers == 3 and "pretrain_workers is now train_workers" in _notices(capsys)[0]
    assert "pretrain_workers" not in dataclasses.asdict(cfg)  # experiment.json records the new name only
    assert dataclasses.replace(cfg, train_workers=2).train_workers == 2
    for new in (2, 1):  # 1 too: the default's value, given
        with pytest.raises(MasklamError, match="one setting"):
            ex.ExperimentConfig(out=tmp_path, tasks=["t"], methods=["lapo"], data={"t": {"train": ["a.h5"]}},
                                pretrain_workers=3, train_workers=new)
    assert ex.ExperimentConfig(out=tmp_path, tasks=["t"], methods=["lapo"],
                               data={"t": {"train": ["a.h5"]}}).train_workers == 1


@dataclasses.dataclass
class _Args:
    new_name: int = 0
    """a renamed option"""
    loud: bool = False
    """a renamed flag"""
    other: str = ""
    """an option that kept its name"""


def test_an_old_option_is_read_as_its_new_name(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(renames, "OPTIONS", {"--old-name": renames.Renamed("--new-name", "2026-12-05"),
                                             "--quiet": renames.Renamed("--loud", "2026-12-05")})
    assert parse(_Args, ["--old-name", "5"]).new_name == 5
    assert parse(_Args, ["--old-name=6", "--other", "x"]) == _Args(new_name=6, other="x")
    assert parse(_Args, ["--quiet"]).loud and not parse(_Args, ["--no-quiet"]).loud
    said = _notices(capsys)
    assert len(said) == 3 and "--old-name is now --new-name" in said[0] and "--no-quiet is now --no-loud" in said[2]
    assert parse(_Args, ["--new-name", "7"]).new_name == 7 and _notices(capsys) == []
    assert parse(_Args, ["--old_name", "8"]).new_name == 8  # tyro's underscore spelling too
    # after `--` nothing is an option; both names at once is one line
    assert renames.rename_options(["--x", "--", "--old-name"]) == ["--x", "--", "--old-name"]
    with pytest.raises(MasklamError, match="--old-name and --new-name are one option"):
        parse(_Args, ["--old-name", "1", "--new-name=2"])
    with pytest.raises(MasklamError, match="--quiet and --loud are one option"):
        parse(_Args, ["--quiet", "--no-loud"])  # a boolean's two forms are one option too
