"""The shared mechanisms: device resolution, metrics, crash-safe files and the Pretrained contract."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import masklam
from masklam.devices import resolve_device
from masklam.errors import MasklamError
from masklam.files import atomic_path, read_csv, read_json, write_csv, write_json
from masklam.metrics import namespaced, normalised_mse, standard_error
from masklam.models.pretrained import Pretrained


class Tiny(Pretrained, nn.Module):
    kind = "tiny net"

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.lin = nn.Linear(width, 2)

    def pretrained_config(self) -> dict:
        return {"width": self.width}

    @classmethod
    def from_config(cls, config: dict) -> "Tiny":
        return cls(**config)


class TinyWithMeta(Tiny):
    config_key = "model"


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(MasklamError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(MasklamError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_normalised_mse_is_zero_for_perfect_and_one_for_the_mean():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(100, 3)) * np.array([1.0, 5.0, 0.1])
    assert normalised_mse(y, y) == 0.0
    assert normalised_mse(np.broadcast_to(y.mean(0), y.shape).copy(), y) == pytest.approx(1.0)
    assert normalised_mse(y + 1.0, y) > 0
    with pytest.raises(ValueError):
        normalised_mse(y[:, :2], y)


def test_standard_error_and_namespaces():
    assert standard_error([1.0]) == 0.0
    assert standard_error([1.0, 3.0]) == pytest.approx(1.0)  # std 1.414 / sqrt 2
    assert namespaced("probe", {"nmse": 0.5, "train/loss": 1}) == {"probe/nmse": 0.5, "train/loss": 1}
    with pytest.raises(ValueError):
        namespaced("nope", {})


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"x": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert read_json(target) == {"x": 1}  # the old file survives, no .tmp left behind
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(MasklamError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")
    with pytest.raises(MasklamError, match="no such file"):
        read_json(tmp_path / "missing.json")


def test_range_checks_name_every_value_they_refuse():
    from masklam.errors import check_at_least

    check_at_least(1, a=1, b=2.5)
    with pytest.raises(MasklamError, match=r"^b must be >= 1, got 0; c must be >= 1, got nan$"):
        check_at_least(1, a=1, b=0, c=float("nan"))
    with pytest.raises(MasklamError, match=r"^lr must be > 0, got 0$"):
        check_at_least(0, strictly=True, lr=0)


def test_csv_round_trip_keeps_columns_and_empty_cells(tmp_path):
    rows = [{"a": 1, "b": None, "extra": "left out"}, {"b": "x,y"}]
    write_csv(tmp_path / "t.csv", rows, ["a", "b"])
    assert read_csv(tmp_path / "t.csv") == [{"a": "1", "b": ""}, {"a": "", "b": "x,y"}]
    assert (tmp_path / "t.csv").read_text().splitlines()[0] == "a,b"
    assert read_csv(tmp_path / "missing.csv", missing_ok=True) == []
    with pytest.raises(MasklamError, match="no such curve: .*missing.csv"):
        read_csv(tmp_path / "missing.csv", "curve")
    (tmp_path / "bin.csv").write_bytes(b"a,b\n\xff\xfe,1\n")
    with pytest.raises(MasklamError, match="bin.csv is not a valid csv file"):
        read_csv(tmp_path / "bin.csv")
    with pytest.raises(MasklamError, match="cannot read the table"):
        read_csv(tmp_path)  # a folder


def test_pretrained_round_trip_and_one_line_errors(tmp_path):
    torch.manual_seed(0)
    net = Tiny(4)
    net.save_pretrained(tmp_path / "n")
    back = Tiny.from_pretrained(tmp_path / "n")
    assert not back.training
    assert torch.equal(back.lin.weight, net.lin.weight)
    version = {"masklam_format": 1, "masklam_version": masklam.__version__}  # the format, checked on load
    assert json.loads((tmp_path / "n" / "config.json").read_text()) == {"width": 4, **version}

    meta = TinyWithMeta(3)
    meta.save_pretrained(tmp_path / "m", {"step": 7})
    assert json.loads((tmp_path / "m" / "config.json").read_text()) == {"step": 7, "model": {"width": 3}, **version}
    assert TinyWithMeta.from_pretrained(tmp_path / "m").width == 3

    with pytest.raises(MasklamError, match="not a tiny net directory"):
        Tiny.from_pretrained(tmp_path / "missing")
    (tmp_path / "n" / "config.json").write_text('{"width": 5}')  # mismatched weights
    with pytest.raises(MasklamError, match="cannot load the tiny net"):
        Tiny.from_pretrained(tmp_path / "n")
    (tmp_path / "n" / "config.json").write_text('{"depth": 5}')  # wrong config
    with pytest.raises(MasklamError, match="bad config.json"):
        Tiny.from_pretrained(tmp_path / "n")
    (tmp_path / "n" / "config.json").write_text('{"width": 4}')
    (tmp_path / "n" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(MasklamError, match="cannot load the tiny net"):
        Tiny.from_pretrained(tmp_path / "n")
    with pytest.raises(MasklamError, match="no 'model' entry"):
        TinyWithMeta.from_pretrained(tmp_path / "n")
