"""One save/load contract for every trained network (LAMs, policies, decoders): `Pretrained`.

A pretrained directory holds `model.safetensors` (the weights) and `config.json` (what is needed to
rebuild the network, plus any run metadata the caller adds). Both are written atomically
(`masklam.files`), so an interruption never leaves a half-written model; loading a missing,
corrupt or mismatched directory raises a one-line MasklamError naming the directory and the problem.

`Pretrained` is a huggingface_hub `ModelHubMixin`: `from_pretrained` also takes a Hub repo id (the two files
are fetched with ``hf_hub_download`` into the Hugging Face cache, then loaded the same way), and the mixin's
`push_to_hub(repo_id)` uploads exactly these two files. Our `save_pretrained` / `from_pretrained` keep their
signatures (an optional ``extra_config`` beside the model's own; a positional ``device``) and their errors.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from huggingface_hub import ModelHubMixin, hf_hub_download

from masklam.errors import MasklamError
from masklam.files import atomic_path, read_json, write_json

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = 3
"""the newest format of the directories this masklam writes (config.json's `masklam_format`, beside
`masklam_version`); raise it when a change makes older masklam versions misread them. A config.json without one is
format 1; a network writes the oldest format that holds it (`pretrained_format`), so older masklam versions still
read what they can. 2: LAMs with MaskLAM's authors' options (init, pixels, FDM width, decoder, IDM window). 3:
LAOM's code's layouts (LAMs with its heads, encoder or signed pixels; its latent policy, `arch="laom"`; a decoder with
ReLU6)."""
READS = range(1, FORMAT + 1)
"""the formats this masklam reads"""

T = TypeVar("T", bound="Pretrained")


class Pretrained(ModelHubMixin, library_name="masklam", tags=["masklam", "latent-action-model"]):
    """Mixin for `torch.nn.Module`s saved as `model.safetensors` + `config.json` (locally or on the Hub).

    A subclass names what it is (`kind`, for messages), where its own config sits in config.json
    (`config_key`: None for the whole file, or a key such as "model" when run metadata sits beside it),
    and implements `pretrained_config()` (a JSON-able dict) and `from_config(dict)` (a fresh network)."""

    kind: ClassVar[str] = "model"
    config_key: ClassVar[str | None] = None

    def pretrained_config(self) -> dict[str, Any]:
        """The JSON-able config that `from_config` rebuilds this network from."""
        raise NotImplementedError

    def pretrained_format(self) -> int:
        """The oldest directory format that holds this network (see FORMAT)."""
        return 1

    @classmethod
    def from_config(cls: type[T], config: dict[str, Any]) -> T:
        """A freshly initialised network for `config` (raise MasklamError or TypeError on a bad one)."""
        raise NotImplementedError

    def save_pretrained(self, directory: str | Path, extra_config: dict[str, Any] | None = None, *,
                        config: dict[str, Any] | None = None, push_to_hub: bool = False, repo_id: str | None = None,
                        model_card_kwargs: dict[str, Any] | None = None, **push_to_hub_kwargs: Any) -> str | None:
        """Atomically write model.safetensors and config.json (`extra_config` keys beside the config; `config` is
        the mixin's name for them). ``push_to_hub``: then upload them to ``repo_id`` (default: the folder's name, which
        the Hub files under your user: load it back as "user/name") and return the commit's url.
        ``model_card_kwargs`` is accepted for the mixin and unused (no README)."""
        extra = {**(extra_config or {}), **(config or {})}
        self._save_pretrained(Path(directory), extra or None)
        if push_to_hub:
            return self.push_to_hub(repo_id or Path(directory).name, **push_to_hub_kwargs)
        return None

    def _save_pretrained(self, save_directory: Path, extra_config: dict[str, Any] | None = None) -> None:
        """ModelHubMixin's hook (also what `push_to_hub` writes): model.safetensors + config.json, atomically."""
        from safetensors.torch import save_file

        d = Path(save_directory)
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

        write_json(d / CONFIG, {**config, "masklam_format": self.pretrained_format(), "masklam_version": __version__})

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
                other = cls._other_kind(raw)
                raise MasklamError(f"{d} holds a {other}, not a {cls.kind}" if other else
                                   f"bad {CONFIG} in {d}: no {cls.config_key!r} entry (not a {cls.kind}?)")
            raw = raw[cls.config_key]
        if not isinstance(raw, dict):
            raise MasklamError(f"bad {CONFIG} in {d}: expected an object")
        return raw

    @classmethod
    def _other_kind(cls, raw: Any) -> str | None:
        """The kind of another (imported) Pretrained class whose network a config.json (`raw`, without its format
        keys) describes, when it is not this class's: a LAM's directory given where a decoder is asked for."""
        others, seen = list(Pretrained.__subclasses__()), set()
        while others:
            other = others.pop()
            others.extend(other.__subclasses__())
            if other.kind in seen or other.kind in (cls.kind, Pretrained.kind) or not isinstance(raw, dict):
                continue
            seen.add(other.kind)
            conf = raw.get(other.config_key) if other.config_key is not None else raw
            try:
                if isinstance(conf, dict) and other.from_config(conf) is not None:
                    return other.kind
            except Exception:  # noqa: BLE001 - not that kind either
                continue
        return None

    @classmethod
    def from_pretrained(cls: type[T], directory: str | Path, device: str | torch.device = "cpu", *,
                        revision: str | None = None, cache_dir: str | Path | None = None, force_download: bool = False,
                        local_files_only: bool = False, token: str | bool | None = None, **unused: Any) -> T:
        """Load a directory written by `save_pretrained`, or a Hub repo id ("user/name") holding one, in eval mode
        on `device`. A path that exists, or that looks like one (absolute, ./, ../, ~, no '/' or more than one),
        is a directory; anything else is a repo id (``revision``, ``cache_dir``, ``token``... as in
        huggingface_hub)."""
        return cls._from_pretrained(model_id=str(directory), revision=revision, cache_dir=cache_dir,
                                    force_download=force_download, local_files_only=local_files_only, token=token,
                                    device=device)

    @classmethod
    def _from_pretrained(cls: type[T], *, model_id: str, revision: str | None, cache_dir: str | Path | None,
                         force_download: bool, local_files_only: bool, token: str | bool | None,
                         device: str | torch.device = "cpu", **unused: Any) -> T:
        """ModelHubMixin's hook: a local directory, or the repo's two files fetched into the Hub cache."""
        directory = fetch_pretrained(model_id, cls.kind, revision=revision, cache_dir=cache_dir,
                                     force_download=force_download, local_files_only=local_files_only, token=token)
        return cls._load_dir(directory, device)

    @classmethod
    def _load_dir(cls: type[T], directory: Path, device: str | torch.device) -> T:
        """Build the network from ``directory/config.json`` and load its weights, in eval mode on ``device``."""
        from safetensors.torch import load_file

        d = Path(directory)
        config = cls.read_config(d)
        try:
            model = cls.from_config(config)
        except (TypeError, ValueError) as e:
            other = cls._other_kind(check_format(read_json(d / CONFIG), d))
            raise MasklamError(f"{d} holds a {other}, not a {cls.kind}" if other else
                               f"bad {CONFIG} in {d} for a {cls.kind}: {str(e).splitlines()[0]}") from None
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


def fetch_pretrained(source: str | Path, kind: str = "model", *, revision: str | None = None,
                     cache_dir: str | Path | None = None, force_download: bool = False, local_files_only: bool = False,
                     token: str | bool | None = None) -> Path:
    """The local directory of a pretrained `source`: itself when it is a directory (`is_local`), else the Hub repo's
    config.json and model.safetensors fetched into the Hugging Face cache (one-line error when they cannot be)."""
    name = str(source)
    if is_local(name):
        return Path(name).expanduser()
    try:
        paths = [hf_hub_download(name, file, revision=revision, cache_dir=cache_dir, force_download=force_download,
                                 local_files_only=local_files_only, token=token) for file in (CONFIG, WEIGHTS)]
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, missing file: the user's to fix
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise MasklamError(f"cannot load the {kind} {name!r}: no such directory, and not fetched from "
                           f"the Hugging Face Hub ({type(e).__name__}: {first})") from None
    return Path(paths[0]).parent


def source_name(source: str | Path) -> str:
    """A pretrained source as a stable name: a directory's absolute path, or the Hub repo id as given."""
    name = str(source)
    return str(Path(name).expanduser().resolve()) if is_local(name) else name


def is_local(name: str) -> bool:
    """True when ``name`` means a directory rather than a Hub repo id ("user/name"): it exists, looks like a path
    (absolute, ./, ../, ~, no '/' or more than one), or its first component is a local directory (a typo in
    ``runs/typo`` or a bare ``typo`` stays a missing directory instead of becoming a Hub request)."""
    path = Path(name).expanduser()
    return (path.exists() or name.startswith(("/", ".", "~")) or name.count("/") != 1 or "\\" in name
            or (len(path.parts) > 1 and Path(path.parts[0]).is_dir()))
