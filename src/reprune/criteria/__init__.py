"""Criteria registry: a criterion scores every unit (head or neuron) of a module; higher means keep.

A criterion is a small function over the module's weights and calibration statistics, registered with
the statistics it needs, so a new criterion is one file. Needs: ``level2_diag`` (per-channel mean and
sum of squares of the level-2 input), ``level2_in`` (its full Gram), ``level1_in`` (the module input's
Gram) and ``head_divergence`` (see :class:`reprune.stats.ModuleStats`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from reprune.adapters import Depth2Module
from reprune.stats import ModuleStats

ScoreFn = Callable[[Depth2Module, ModuleStats, torch.Generator], torch.Tensor]
# how many units a criterion wants removed, from its options (e.g. a threshold); None: use the allocation's
CountFn = Callable[[Depth2Module, ModuleStats, dict[str, Any]], int | None]
ALL_KINDS = frozenset({"attention", "ffn"})


@dataclass(frozen=True)
class Criterion:
    name: str
    score: ScoreFn
    needs: frozenset[str] = field(default_factory=frozenset)
    description: str = ""
    kinds: frozenset[str] = ALL_KINDS  # module kinds the criterion can score
    count: CountFn | None = None


CRITERIA: dict[str, Criterion] = {}


def register(name: str, needs: set[str] | None = None, description: str = "", kinds: set[str] | None = None,
             count: CountFn | None = None) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator adding a score function to the registry under ``name``.

    ``kinds`` limits it to attention or FFN modules; ``count`` lets it choose how many units go.
    """

    def wrap(fn: ScoreFn) -> ScoreFn:
        CRITERIA[name] = Criterion(name, fn, frozenset(needs or ()), description or (fn.__doc__ or "").strip(),
                                   frozenset(kinds) if kinds else ALL_KINDS, count)
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
        w = part.projection.weight().detach().to("cpu", torch.float64)
        groups = module.num_kv_heads if part.per_kv_head else module.num_units
        rows = w[part.offset : part.offset + groups * module.unit_width]
        per_group = rows.reshape(groups, -1).pow(2).sum(1)
        total += per_group.repeat_interleave(module.heads_per_kv) if part.per_kv_head else per_group
    return total


def level2_weight(module: Depth2Module) -> torch.Tensor:
    """Level-2 weight as (out, inner channels), float64, on the CPU (scores are small)."""
    return module.level2.weight().detach().to("cpu", torch.float64)


from reprune.criteria import baselines, head_similarity, second_moment  # noqa: E402,F401  (registration side effects)

__all__ = ["CRITERIA", "Criterion", "get_criterion", "per_unit", "register"]
