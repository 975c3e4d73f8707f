"""One save/load contract for every trained network (LAMs, policies, decoders): `Pretrained`.

A pretrained directory holds `model.safetensors` (the weights) and `config.json` (what is needed to
rebuild the network, plus any run metadata the caller adds). Both are written atomically
(`masklam.files`), so an interruption never leaves a half-written model; loading a missing,
corrupt or mismatched directory raises a one-line MasklamError naming the directory and the problem.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from masklam.errors import MasklamError
from masklam.files import atomic_path, read_json, write_json

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = 1
"""the format of the directories this masklam writes (config.json's `masklam_format`, beside `masklam_version`);
raise it when a change makes older masklam versions misread them. A config.json without one is format 1."""
READS = range(1, FORMAT + 1)
"""the formats this masklam reads"""

T = TypeVar("T", bound="Pretrained")


class Pretrained:
    """Mixin for `torch.nn.Module`s saved as `model.safetensors` + `config.json`.

    A subclass names what it is (`kind`, for messages), where its own config sits in config.json
    (`config_key`: None for the whole file, or a key such as "model" when run metadata sits beside it),
    and implements `pretrained_config()` (a JSON-able dict) and `from_config(dict)` (a fresh network)."""

    kind: ClassVar[str] = "model"
    config_key: ClassVar[str | None] = None

    def pretrained_config(self) -> dict[str, Any]:
        """The JSON-able config that `from_config` rebuilds this network from."""
        raise NotImplementedError

    @classmethod
    def from_config(cls: type[T], config: dict[str, Any]) -> T:
        """A freshly initialised network for `config` (raise MasklamError or TypeError on a bad one)."""
        raise NotImplementedError

    def save_pretrained(self, directory: str | Path, extra_config: dict[str, Any] | None = None) -> None:
        """Atomically write model.safetensors and config.json (`extra_config` keys beside the config)."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}  # type: ignore[attr-defined]
        with atomic_path(d / WEIGHTS) as tmp:
            save_file(state, str(tmp))
        own = self.pretrained_config()
        if self.config_key is None:
            if extra_config:
                raise ValueError(f"a {self.kind} stores no extra config (config_key is None)")
            config = own
        else:
            config = {**(extra_config or {}), self.config_key: own}
        from masklam import __version__

        write_json(d / CONFIG, {**config, "masklam_format": FORMAT, "masklam_version": __version__})

    @classmethod
    def read_config(cls, directory: str | Path) -> dict[str, Any]:
        """This class's config from `directory/config.json` (one-line error if absent or unreadable)."""
        d = Path(directory)
        for name in (CONFIG, WEIGHTS):
            if not (d / name).is_file():
                raise MasklamError(f"not a {cls.kind} directory (no {name}): {d}")
        raw = check_format(read_json(d / CONFIG), d)
        if cls.config_key is not None:
            if not isinstance(raw, dict) or cls.config_key not in raw:
                raise MasklamError(f"bad {CONFIG} in {d}: no {cls.config_key!r} entry (not a {cls.kind}?)")
            raw = raw[cls.config_key]
        if not isinstance(raw, dict):
            raise MasklamError(f"bad {CONFIG} in {d}: expected an object")
        return raw

    @classmethod
    def from_pretrained(cls: type[T], directory: str | Path, device: str | torch.device = "cpu") -> T:
        """Load a directory written by `save_pretrained`, in eval mode on `device`."""
        from safetensors.torch import load_file

        d = Path(directory)
        config = cls.read_config(d)
        try:
            model = cls.from_config(config)
        except (TypeError, ValueError) as e:
            raise MasklamError(f"bad {CONFIG} in {d} for a {cls.kind}: {str(e).splitlines()[0]}") from None
        try:
            model.load_state_dict(load_file(str(d / WEIGHTS)))  # type: ignore[attr-defined]
        except Exception as e:  # safetensors header errors, missing, unexpected or mis-shaped keys
            raise MasklamError(f"cannot load the {cls.kind} in {d}: {str(e).splitlines()[0]}") from None
        return model.to(device).eval()  # type: ignore[attr-defined]


def check_format(raw: Any, directory: Path) -> Any:
    """config.json without its version keys, after checking this masklam reads its format (one line if not)."""
    if not isinstance(raw, dict):
        return raw
    raw = dict(raw)
    fmt, version = raw.pop("masklam_format", 1), raw.pop("masklam_version", None)
    if fmt not in READS:
        from masklam import __version__

        by = f"masklam {version}" if version else "another version of masklam"
        raise MasklamError(f"{directory} was written by {by} (format {fmt}); this masklam {__version__} reads format "
                           f"{READS.start}..{READS.stop - 1}: use the masklam that wrote it, or train it again")
    return raw
