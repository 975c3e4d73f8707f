"""State-based expert policies: `load(task)` -> callable state -> action (shipped for the main tasks)."""
from masklam.experts.policy import ExpertPolicy, available, load

__all__ = ["ExpertPolicy", "available", "load"]
