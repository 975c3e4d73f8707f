"""The methods a sweep compares, each defined once where it is implemented (as dm_control's tasks are).

A `Method` is registered by the module that implements it: `masklam.models.lam` registers the latent action
models it builds (lapo, masklam, laom, laom-sup, with their own defaults), `masklam.downstream.sweep` the
methods made of stages (lapo-clean: LAPO on the distractor-free data; the bc and idm baselines; the bc-full
normalisers). Everything else (the experiment's checks, the results' normalisation, the report's order and
colours, the quickstart's table) reads them here; importing the implementing module makes them known.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

from masklam.errors import MasklamError

Kind = Literal["lam", "baseline", "normaliser"]


@dataclass(frozen=True)
class Method:
    """One method of a sweep (a row of results.csv)."""

    name: str
    """as in configs and results.csv, e.g. "lapo-clean" """
    title: str
    """how tables and the report name it, e.g. "LAPO distractor-free" """
    kind: Kind
    """lam: LAM -> latent BC -> decoder; baseline: a policy without a LAM; normaliser: full-data BC"""
    order: int
    """its place in figures and tables (its colour too: matplotlib's C<order>)"""
    trainer: str = ""
    """lam: the pretrain method that trains its LAM (default: its own name)"""
    variant: Literal["train", "clean"] = "train"
    """the data it trains and is evaluated on: the distracted data, or its distractor-free twin"""
    defaults: dict[str, Any] = field(default_factory=dict)
    """a pretrain method's own choices (PretrainConfig fields), below a recipe and above the preset"""
    supervised: bool = False
    """lam: its LAM learns from the label budget's action labels too (so a sweep trains one per budget)"""

    def __post_init__(self) -> None:
        if self.kind == "lam" and not self.trainer:
            object.__setattr__(self, "trainer", self.name)

    @property
    def color(self) -> str:
        """Its colour in every figure."""
        return f"C{self.order}"


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Make `method` known (once per name: a second, different definition is a bug)."""
    known = _REGISTRY.get(method.name)
    if known is not None and known != method:
        raise ValueError(f"method {method.name!r} is registered twice, differently")
    _REGISTRY[method.name] = method
    return method


def get(name: str) -> Method:
    """The registered method `name`; one-line MasklamError naming the known ones otherwise."""
    if name not in _REGISTRY:
        raise MasklamError(f"unknown method {name!r}; one of {', '.join(names())}")
    return _REGISTRY[name]


def names(kind: Kind | None = None) -> tuple[str, ...]:
    """The registered methods (of one kind), in their order."""
    return tuple(m.name for m in sorted(_REGISTRY.values(), key=lambda m: m.order) if kind in (None, m.kind))


def trainers() -> tuple[str, ...]:
    """The pretrain methods: the LAM methods that train their own LAM."""
    return tuple(m for m in names("lam") if _REGISTRY[m].trainer == m)


def is_kind(name: str, kind: Kind) -> bool:
    """Whether `name` is a registered method of `kind` (False for unknown names, e.g. of an old results.csv)."""
    return name in _REGISTRY and _REGISTRY[name].kind == kind


def ordered(methods: Iterable[str]) -> list[str]:
    """`methods` (each once) in their registered order; unknown names after, by name."""
    end = len(_REGISTRY)
    return sorted(set(methods), key=lambda m: (_REGISTRY[m].order if m in _REGISTRY else end, m))


def color(name: str) -> str:
    """The figures' colour of `name` (black for an unknown method)."""
    return _REGISTRY[name].color if name in _REGISTRY else "black"


def title(name: str) -> str:
    """The display name of `name` (the name itself for an unknown method)."""
    return _REGISTRY[name].title if name in _REGISTRY else name


def upper_bound(name: str) -> str | None:
    """The method that trains `name`'s LAM on the distractor-free data (lapo -> lapo-clean), if one is registered."""
    trainer = get(name).trainer
    return next((m.name for m in _REGISTRY.values() if m.kind == "lam" and m.trainer == trainer
                 and m.variant == "clean"), None)
