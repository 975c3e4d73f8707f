"""An experiment's config: `ExperimentConfig`, read from a TOML/JSON file or a shipped config by name, with the
configs it `extends` (field by field, each field's origin kept for `--print-config`), and checked in full when it
is loaded, so that a typo, a value of the wrong type or out of range, or tables that do not fit together fail at
once, as one line, before any stage runs. Running it: masklam.downstream.experiment.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
import tomllib
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

from masklam import methods
from masklam.downstream.stages import EvalOptions, pretrain_conf, with_cadence
from masklam.downstream.sweep import sweep_methods
from masklam.errors import MasklamError
from masklam.renames import rename_keys
from masklam.seeding import check_seeds
from masklam.typecheck import check_values

COLLECTS = {"train": "collect", "clean": "collect_clean"}
"""the data a task's [data.TASK] table gives as paths, and the table that collects it instead"""
DATA_KEYS = (*COLLECTS, *COLLECTS.values())
"""keys of a task's [data.TASK] table"""
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
"""the shipped configs: `masklam experiment NAME` runs CONFIG_DIR/NAME.toml"""


@dataclass
class ExperimentConfig:
    """A sweep (read from a TOML or JSON file; keys are these fields)."""

    out: Path
    """run directory: results.csv, report.html, experiment.json and every stage under stages/"""
    tasks: list[str]
    """tasks of the sweep (each needs a [data.TASK] table)"""
    methods: list[str]
    """methods to compare (masklam.methods): lapo, masklam, laom, laom-sup, lapo-clean, bc, idm (bc-full always
    runs)"""
    latent_dims: list[int] = field(default_factory=lambda: [128])
    """LAM latent sizes"""
    labels: list[int] = field(default_factory=lambda: [2, 8, 32, 128])
    """label budgets: labeled trajectories for decoders, BC and IDMs"""
    seeds: list[int] = field(default_factory=lambda: [0])
    """training seeds"""
    splits: list[str] = field(default_factory=lambda: ["id", "ood"])
    """evaluation splits: id (training videos), ood (held-out videos)"""
    data: dict[str, dict[str, Any]] = field(default_factory=dict)
    """per task: `train` (paths, distracted data) / `clean` (paths, distractor-free), or `collect` /
    `collect_clean` (CollectConfig fields for `masklam collect`)"""
    collect: dict[str, Any] = field(default_factory=dict)
    """CollectConfig fields of every task without a `data` table: its `collect`, and (when a method trains on the
    distractor-free data) its `collect_clean`: the same without distractors or background folder"""
    pretrain: dict[str, Any] = field(default_factory=dict)
    """PretrainConfig fields shared by every LAM (method, data, out, seed, latent_dim, labeled are set here)"""
    bc: dict[str, Any] = field(default_factory=dict)
    """BCConfig fields of every BC stage (latent BC, BC baselines, BC on IDM relabels)"""
    bc_latent: dict[str, Any] = field(default_factory=dict)
    """BCConfig fields of latent BC only (the LAM methods' policies), on top of `bc`: e.g. the authors' latent
    policy, which must not change the BC baselines and normalisers"""
    bc_full: dict[str, Any] = field(default_factory=dict)
    """BCConfig fields of the full-data BC normalisers (bc-full, bc-full-clean), on top of `bc`"""
    idm: dict[str, Any] = field(default_factory=dict)
    """BCConfig fields of the IDM baseline's inverse dynamics model"""
    decode: dict[str, Any] = field(default_factory=dict)
    """DecodeConfig fields of the action decoders"""
    eval: dict[str, Any] = field(default_factory=dict)
    """EvalOptions fields: episodes (25), workers (2), seed (0)"""
    env: dict[str, Any] = field(default_factory=dict)
    """extra env kwargs for evaluation (`masklam.envs.make` arguments, e.g. max_episode_steps; factory for tests)"""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, cuda:N"""
    progress: bool = True
    """progress bars"""
    train_workers: int | None = None
    """(default 1) LAMs and full-data BCs of a task and seed trained at once, each in its own process with its
    share of the cores as torch threads (CPU only; 1: one after another in this process). On 2 cores, one-thread
    processes finish sooner than the same stages one after another with 2 threads each (docs/quickstart-time.md);
    a LAM's numbers depend on its thread count (metrics.json: torch_threads). Named pretrain_workers until
    2026-12-05 (still read, with a notice)"""
    description: str = ""
    """one line saying what the sweep compares (`masklam experiment --list`); no stage reads it"""
    pretrain_workers: InitVar[int | None] = None
    """the old name of train_workers (masklam.renames), for scripts that build this class"""

    def __post_init__(self, pretrain_workers: int | None) -> None:
        if pretrain_workers is not None:  # the old name: a notice, or one line when both names are set
            given = {"pretrain_workers": pretrain_workers, **({"train_workers": self.train_workers}
                                                              if self.train_workers is not None else {})}
            self.train_workers = rename_keys(given, "ExperimentConfig")["train_workers"]
        self.train_workers = 1 if self.train_workers is None else self.train_workers
        self.out = Path(self.out)
        self.data = {**{t: collected_data(self.collect, self.methods) for t in self.tasks if self.collect},
                     **self.data}
        check_tables(self)  # a typo first: it may be why a table seems to be missing
        bad = [m for m in self.methods if m not in sweep_methods()]
        if bad:
            raise MasklamError(f"unknown method {bad[0]!r}; one of {', '.join(sweep_methods())}")
        bad = [s for s in self.splits if s not in ("id", "ood")]
        if bad:
            raise MasklamError(f"unknown split {bad[0]!r}; use 'id' or 'ood'")
        if not self.tasks or not self.methods or not self.seeds:
            raise MasklamError("tasks, methods and seeds must not be empty")
        check_seeds(**{f"seeds[{i}]": seed for i, seed in enumerate(self.seeds)})
        for name in ("tasks", "methods", "seeds", "latent_dims", "labels", "splits"):
            values = list(getattr(self, name))
            if len(set(values)) < len(values):
                twice = next(v for v in values if values.count(v) > 1)
                raise MasklamError(f"{name} lists {twice!r} twice")
        if any(d < 1 for d in self.latent_dims) or any(n < 1 for n in self.labels):
            raise MasklamError("latent_dims and labels must be >= 1")
        for task in self.tasks:
            spec = self.data.get(task, {})
            if not ({"train", COLLECTS["train"]} & set(spec)):
                raise MasklamError(f"no data for task {task!r}: give data.{task}.train (paths) or .collect")
            clean = [m for m in self.methods if methods.get(m).variant == "clean"]
            if clean and not ({"clean", COLLECTS["clean"]} & set(spec)):
                raise MasklamError(f"{clean[0]} needs distractor-free data: data.{task}.clean or .collect_clean")
            _check_clean_is_one_kind(task, spec.get("clean"))
        check_background_paths(self)
        _check_one_split(self)


def _check_one_split(cfg: ExperimentConfig) -> None:
    """One train/held-out split and labelled subset for every method compared: a table setting ``heldout`` or
    ``split_seed`` apart from the others (the BCs and decoders inherit [pretrain]'s) would train one method's
    decoder, or the baselines, on other labelled trajectories than another's."""
    for key, default in (("heldout", 0.1), ("split_seed", 0)):
        base = cfg.pretrain.get(key, default)
        seen = {"pretrain": base, "bc": cfg.bc.get(key, base), "decode": cfg.decode.get(key, base),
                "bc_full": {**cfg.bc, **cfg.bc_full}.get(key, base), "idm": {**cfg.bc, **cfg.idm}.get(key, base)}
        if len(set(seen.values())) > 1:
            shown = ", ".join(f"[{table}] {value}" for table, value in seen.items())
            raise MasklamError(f"{key} differs between the stage tables ({shown}): the methods would be compared on "
                               f"other labelled trajectories; set it once, in [pretrain]")


def collected_data(collect: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """A task's data table from a `collect` table: the distracted data, and its distractor-free twin (no
    distractors; the background folder plays no part in it) when one of `names` trains on it."""
    spec = {"collect": dict(collect)}
    if any(methods.get(m).variant == "clean" for m in names if m in sweep_methods()):
        spec["collect_clean"] = {**{k: v for k, v in collect.items() if k != "background_path"}, "distractors": "none"}
    return spec


def collections(cfg: ExperimentConfig) -> list[tuple[str, str, dict[str, Any]]]:
    """(task, 'train' or 'clean', collect table) of each collection the sweep runs: a data key given by a collect
    table and not by paths (paths win)."""
    return [(task, variant, cfg.data[task][coll]) for task in cfg.tasks for variant, coll in COLLECTS.items()
            if coll in cfg.data[task] and variant not in cfg.data[task]]


def _check_clean_is_one_kind(task: str, clean: Any) -> None:
    """Data holding both kinds of frame (MaskLAM's parquet data) under `clean`: BC and decoding read their
    distracted frames, so the clean upper bound would silently train on distracted ones."""
    from masklam.data.formats import offers_observations

    for path in [clean] if isinstance(clean, (str, os.PathLike)) else clean or []:
        if offers_observations(path):
            raise MasklamError(f"data.{task}.clean: {path} holds distracted and clean frames (MaskLAM's parquet "
                               f"data), and BC and decoding read the distracted ones; pass the clean frames another "
                               f"way (an HDF5 file, or .collect_clean)")


def check_background_paths(cfg: ExperimentConfig) -> None:
    """A missing or empty `background_path` folder (in a collect table or [env]), or one without the videos a
    split needs, as one line, before any work. Without [env]'s, evaluation plays the folder the data were
    collected with (recorded with the policy): its held-out videos for 'ood'."""
    from masklam.envs.videos import VIDEO_SPLIT_OF, check_background_path

    env_path = cfg.env.get("background_path")
    wanted = []
    for task, spec in cfg.data.items():
        for key in COLLECTS.values():
            path = spec.get(key, {}).get("background_path")
            if path is not None:
                wanted.append((path, spec[key].get("video_split", "train")))
                if env_path is None and key == COLLECTS["train"]:  # the clean data's policies play no videos
                    wanted += [(path, VIDEO_SPLIT_OF[s]) for s in cfg.splits]
    if env_path is not None:
        wanted += [(env_path, VIDEO_SPLIT_OF[s]) for s in cfg.splits]
    for path, split in dict.fromkeys(wanted):
        check_background_path(path, split)


# --- validation of the stage tables ------------------------------------------------------------------
def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _env_names() -> set[str]:
    """Keys an [env] table may hold: `masklam.envs.make`'s arguments and the distractor parameters."""
    from masklam.envs import make
    from masklam.envs.distractors import DistractorConfig
    from masklam.envs.scene import SceneOptions

    params = inspect.signature(make).parameters
    named = {n for n, p in params.items()
             if p.kind is not inspect.Parameter.VAR_KEYWORD and n not in ("task", "options")}
    return (named | _field_names(SceneOptions) | _field_names(DistractorConfig)
            | {"factory", "mask", "terminate_on_success"})


def _check_keys(table: str, given: Any, known: set[str]) -> None:
    if not isinstance(given, dict):
        raise MasklamError(f"[{table}] must be a table, got {type(given).__name__}")
    unknown = sorted(set(given) - known)
    if unknown:
        raise MasklamError(f"unknown key {unknown[0]!r} in [{table}]; known: {', '.join(sorted(known))}")


def _check_table(table: str, given: dict[str, Any], cls: type, placeholders: dict[str, Any]) -> None:
    """Types, then ranges: `cls` built from the table (its `__post_init__` checks) with `placeholders` for the
    fields the sweep sets; either problem as one line naming the table."""
    check_values(table, given, cls)
    try:
        cls(**{**given, **placeholders})
    except MasklamError as e:
        raise MasklamError(f"[{table}] {e}") from None


def check_tables(cfg: ExperimentConfig) -> None:
    """One-line MasklamError naming the first key of a stage table that its stage's config does not have, or
    whose value has the wrong type or is out of range (the stage config's own checks), before any stage runs."""
    from masklam.data.collect import CollectConfig
    from masklam.downstream.bc import BCConfig
    from masklam.downstream.decode import DecodeConfig
    from masklam.train.config import PretrainConfig

    bc = _field_names(BCConfig)
    for table, given, known in (("pretrain", cfg.pretrain, _field_names(PretrainConfig)), ("bc", cfg.bc, bc),
                                ("bc_latent", cfg.bc_latent, bc), ("bc_full", cfg.bc_full, bc), ("idm", cfg.idm, bc),
                                ("decode", cfg.decode, _field_names(DecodeConfig)),
                                ("eval", cfg.eval, _field_names(EvalOptions))):
        _check_keys(table, given, known)
    if "factory" not in cfg.env:  # a test's own factory takes its own arguments
        _check_keys("env", cfg.env, _env_names())
        check_values("env", cfg.env, _env_types())
    collect = _field_names(CollectConfig)
    for task, spec in cfg.data.items():
        _check_keys(f"data.{task}", spec, set(DATA_KEYS))
        for key in COLLECTS.values():
            if key in spec:
                _check_keys(f"data.{task}.{key}", spec[key], collect)
                _check_table(f"data.{task}.{key}", spec[key], CollectConfig,
                             {"task": "check-task", "out": Path("check.h5")})
    _check_values_of_stages(cfg)


def _check_values_of_stages(cfg: ExperimentConfig) -> None:
    """Types and ranges of the stage tables, each through the config class its stages build."""
    from masklam.downstream.bc import BCConfig
    from masklam.downstream.decode import DecodeConfig
    from masklam.train.config import PretrainConfig

    data, out = ("check.h5",), Path("check")
    for table in ("bc", "bc_latent", "bc_full", "idm"):
        _check_table(table, getattr(cfg, table), BCConfig, {"data": data, "out": out, "target": "action"})
    _check_table("decode", cfg.decode, DecodeConfig, {"policy": out, "data": data, "out": out})
    hidden = {**cfg.bc, **cfg.bc_latent}.get("hidden", BCConfig.__dataclass_fields__["hidden"].default)
    if hidden == 0 and cfg.decode.get("input", "latent") != "latent":
        raise MasklamError(f"[decode] input = {cfg.decode['input']!r} reads the latent policy's hidden layer, and "
                           "[bc_latent] hidden = 0 gives it none: use input = \"latent\"")
    _check_table("eval", cfg.eval, EvalOptions, {})
    check_values("pretrain", cfg.pretrain, PretrainConfig)
    for method in [m for m in cfg.methods if methods.is_kind(m, "lam")]:  # as each method's LAM will be configured
        labeled = max(cfg.labels or [1]) if methods.get(method).supervised else 0
        conf = pretrain_conf(methods.get(method).trainer, list(data), cfg.latent_dims[0] if cfg.latent_dims else 1,
                             0, labeled, cfg.pretrain)
        _check_table("pretrain", {}, PretrainConfig, {**with_cadence(conf, cfg.pretrain), "out": out})  # as trained


def _env_types() -> dict[str, Any]:
    """The types of an [env] table's keys: `masklam.envs.make`'s annotations and DistractorConfig's fields."""
    import typing

    from masklam.envs import make
    from masklam.envs.distractors import DistractorConfig
    from masklam.envs.scene import SceneOptions
    from masklam.typecheck import field_types

    hints = {k: v for k, v in typing.get_type_hints(make).items() if k not in ("options", "kwargs", "return")}
    return {**field_types(DistractorConfig), **field_types(SceneOptions), **hints}


def shipped_configs() -> dict[str, Path]:
    """The configs shipped with masklam (package data in masklam/configs/), by name (the file's stem)."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.toml"))}


def config_path(name_or_path: str | Path) -> Path:
    """A config file: `name_or_path` if it is a file, else the shipped config of that name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_configs()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise MasklamError(f"no such file or shipped config: {name_or_path} (shipped: {', '.join(shipped) or 'none'})")


def _parse(path: Path) -> dict[str, Any]:
    """A config file's keys (.toml, else JSON); one-line MasklamError if it does not parse."""
    try:
        raw = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MasklamError(f"cannot parse {path}: {e}") from None
    if not isinstance(raw, dict):
        raise MasklamError(f"{path}: not a table of keys")
    return raw


def describe(path: Path) -> str:
    """A config file's `description` (empty if it has none or does not parse)."""
    try:
        return str(_parse(path).get("description", ""))
    except MasklamError:
        return ""


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as dotted keys ("pretrain.updates"); an empty table stays one key."""
    out: dict[str, Any] = {}
    for k, v in table.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in flat.items():
        *tables, name = key.split(".")
        node = out
        for t in tables:
            node = node.setdefault(t, {})
        node[name] = v
    return out


def resolve_config(path: str | Path, **overrides: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """A config's keys with those of the configs it `extends` (a shipped config's name or a file), table by table
    and field by field, as PretrainConfig resolves its fields (masklam.train.config.resolve_with_origin: a config
    that sets a table's `updates` or `epochs` clears the other); -> (keys, dotted field -> where it came from: a
    config's name, or "command line" for `overrides`)."""
    from masklam.train.config import resolve_with_origin

    chain, p = [], config_path(path)
    while True:
        raw = rename_keys(_parse(p), str(p))
        name = p.stem if p.parent == CONFIG_DIR else str(p)
        if any(name == n for n, _ in chain):
            raise MasklamError(f"{p}: `extends` loops back to {name}")
        base = raw.pop("extends", None)
        chain.append((name, raw))
        if base is None:
            break
        if not isinstance(base, str):
            raise MasklamError(f"{p}: `extends` must name a config, got {base!r}")
        p = config_path(base if config_path_exists(base) else p.parent / base)
    sources = {name: _flatten(raw) for name, raw in reversed(chain)}
    tables = ("pretrain", "bc", "bc_latent", "bc_full", "idm", "decode")
    exclusive = [(f"{t}.updates", f"{t}.epochs") for t in tables]
    explicit = {k: v for k, v in overrides.items() if v is not None}
    resolved = resolve_with_origin(explicit, sources, exclusive)
    kept = {k: vo for k, vo in resolved.items() if vo[0] is not None}  # None: cleared by the other run length
    return (_unflatten({k: v for k, (v, _) in kept.items()}),
            {k: "command line" if o == "explicit" else str(o) for k, (_, o) in kept.items()})


def config_path_exists(name_or_path: str | Path) -> bool:
    """Whether `name_or_path` is a file or a shipped config's name."""
    return Path(name_or_path).is_file() or str(name_or_path) in shipped_configs()


def load_config(path: str | Path, **overrides: Any) -> ExperimentConfig:
    """Read an ExperimentConfig from a .toml or .json file, or a shipped config by name (`shipped_configs`), with
    the configs it extends (`resolve_config`). Relative paths in it (out, data) are relative to the working
    directory."""
    where = config_path(path)
    raw, _ = resolve_config(where, **overrides)
    names = _field_names(ExperimentConfig)
    unknown = sorted(set(raw) - names)
    if unknown:
        raise MasklamError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(sorted(names))}")
    for key in ("out", "tasks", "methods"):
        if key not in raw:
            raise MasklamError(f"{where}: missing key {key!r}")
    try:
        check_values("", raw, ExperimentConfig)
        return ExperimentConfig(**raw)
    except MasklamError as e:
        raise MasklamError(f"{where}: {e}") from None


def describe_config(path: str | Path, **overrides: Any) -> str:
    """Every field a config sets, with its value and the config it came from (`--print-config`)."""
    from masklam.train.config import format_origins

    raw, origins = resolve_config(path, **overrides)
    flat = _flatten(raw)
    return format_origins((k, flat[k], origins[k]) for k in flat)


# --- the sweep -----------------------------------------------------------------------------------------
