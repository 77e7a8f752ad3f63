"""Criteria registry: a criterion scores every unit (head or neuron) of a module; higher means keep.

A criterion is a small function over the module's weights and calibration statistics, registered with
the statistics it needs, so a new criterion is one file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from reprune.adapters import Depth2Module
from reprune.stats import ModuleStats

ScoreFn = Callable[[Depth2Module, ModuleStats, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Criterion:
    name: str
    score: ScoreFn
    needs: frozenset[str] = field(default_factory=frozenset)
    description: str = ""


CRITERIA: dict[str, Criterion] = {}


def register(name: str, needs: set[str] | None = None, description: str = "") -> Callable[[ScoreFn], ScoreFn]:
    """Decorator adding a score function to the registry under ``name``."""

    def wrap(fn: ScoreFn) -> ScoreFn:
        CRITERIA[name] = Criterion(name, fn, frozenset(needs or ()), description or (fn.__doc__ or "").strip())
        return fn

    return wrap


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise ValueError(f"Unknown criterion {name!r}; choose one of: {', '.join(sorted(CRITERIA))}")
    return CRITERIA[name]


def per_unit(module: Depth2Module, per_channel: torch.Tensor) -> torch.Tensor:
    """Sum a per-inner-channel score over each unit's channels (head_dim for heads, 1 for neurons)."""
    return per_channel.reshape(module.num_units, module.unit_width).sum(1)


def level1_row_norms_sq(module: Depth2Module) -> torch.Tensor:
    """Squared L2 norm of all level-1 rows feeding each unit (KV rows shared by their query heads)."""
    total = torch.zeros(module.num_units, dtype=torch.float64)
    for part in module.level1:
        w = part.projection.weight().detach().to(torch.float64)
        for unit in range(module.num_units):
            rows = module.level1_rows(part, [unit])
            total[unit] += w[rows].pow(2).sum()
    return total


def level2_weight(module: Depth2Module) -> torch.Tensor:
    """Level-2 weight as (out, inner channels), float64."""
    return module.level2.weight().detach().to(torch.float64)


from reprune.criteria import baselines, second_moment  # noqa: E402,F401  (registration side effects)

__all__ = ["CRITERIA", "Criterion", "get_criterion", "per_unit", "register"]
