"""Criteria registry: a criterion scores every unit (head or neuron) of a module; higher means keep.

A score function returns one score per unit, ``(num_units,)``, or per-channel scores ``(num_units,
unit_width)`` whose per-unit sums rank the units; global allocation then standardises a layer's channel
scores, not its unit scores, as FLAP does (:func:`unit_scores` turns either into one score per unit).

A criterion is a small function over the module's weights and calibration statistics, registered with
the statistics it needs (names from :data:`reprune.stats.STATISTICS`), so a new criterion is one new
file in this folder: every module here is imported, and its ``@register`` adds it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from reprune.adapters import Depth2Module, ModuleKind
from reprune.registry import Registry, import_submodules
from reprune.stats import ModuleStats, declared_statistics

ScoreFn = Callable[[Depth2Module, ModuleStats, torch.Generator], torch.Tensor]
# how many units a criterion wants removed, from its options (e.g. a threshold); None: use the allocation's
CountFn = Callable[[Depth2Module, ModuleStats, dict[str, Any]], int | None]
ALL_KINDS: frozenset[ModuleKind] = frozenset({"attention", "ffn"})


@dataclass(frozen=True)
class Criterion:
    name: str
    score: ScoreFn
    needs: frozenset[str] = field(default_factory=frozenset)
    description: str = ""
    kinds: frozenset[ModuleKind] = ALL_KINDS  # module kinds the criterion can score
    count: CountFn | None = None
    # scores already compare across layers (e.g. a relative output error): global allocation ranks them as
    # they are, instead of standardising each layer's as FLAP does
    comparable: bool = False
    # a pair (attention criterion, FFN criterion) under one name: the plan resolves each kind to its part,
    # so each kind reads only its part's statistics (see :func:`register_pair`)
    parts: tuple[str, str] | None = None

    def for_kind(self, kind: ModuleKind) -> Criterion:
        """The criterion that scores ``kind`` units: this one, or for a pair its part for that kind."""
        if self.parts is None:
            return self
        return CRITERIA.get(self.parts[0] if kind == "attention" else self.parts[1])


CRITERIA: Registry[Criterion] = Registry("criterion")


def register(name: str, needs: set[str] | None = None, description: str = "", kinds: set[ModuleKind] | None = None,
             count: CountFn | None = None, comparable: bool = False) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator adding a score function to the registry under ``name``.

    ``kinds`` limits it to attention or FFN modules; ``count`` lets it choose how many units go;
    ``comparable``: its scores mean the same in every layer, so global allocation ranks them unstandardised.
    """

    def wrap(fn: ScoreFn) -> ScoreFn:
        CRITERIA.add(Criterion(name, fn, declared_statistics(needs or (), f"criterion {name!r}"),
                               description or (fn.__doc__ or "").strip(),
                               frozenset(kinds) if kinds else ALL_KINDS, count, comparable))
        return fn

    return wrap


def register_pair(name: str, attention: str, ffn: str, description: str) -> None:
    """Register ``name`` for heads scored by ``attention`` and neurons by ``ffn`` (both registered already)."""
    parts = (CRITERIA.get(attention), CRITERIA.get(ffn))

    def score(module: Depth2Module, stats: ModuleStats, generator: torch.Generator) -> torch.Tensor:
        return parts[0 if module.kind == "attention" else 1].score(module, stats, generator)

    CRITERIA.add(Criterion(name, score, parts[0].needs | parts[1].needs, description, parts=(attention, ffn)))


def per_unit(module: Depth2Module, per_channel: torch.Tensor) -> torch.Tensor:
    """Sum a per-inner-channel score over each unit's channels (head_dim for heads, 1 for neurons)."""
    return per_channel.reshape(module.num_units, module.unit_width).sum(1)


def unit_scores(scores: torch.Tensor) -> torch.Tensor:
    """One score per unit from a criterion's output: per-channel scores summed over each unit's channels."""
    return scores.sum(1) if scores.dim() == 2 else scores


def level1_row_norms_sq(module: Depth2Module) -> torch.Tensor:
    """Squared L2 norm of all level-1 rows feeding each unit (KV rows shared by their query heads)."""
    total = torch.zeros(module.num_units, dtype=torch.float64)
    for part in module.level1:
        w = part.projection.weight().detach().to("cpu", torch.float64)
        groups = module.num_kv_heads if part.per_kv_head else module.num_units
        rows = w[module.part_rows(part, torch.arange(groups))]
        per_group = rows.reshape(groups, -1).pow(2).sum(1)
        total += per_group.repeat_interleave(module.heads_per_kv) if part.per_kv_head else per_group
    return total


def level2_weight(module: Depth2Module) -> torch.Tensor:
    """Level-2 weight as (out, inner channels), float64, on the CPU (scores are small)."""
    return module.level2.weight().detach().to("cpu", torch.float64)


import_submodules(__name__, __path__)

__all__ = ["CRITERIA", "Criterion", "per_unit", "register", "register_pair", "unit_scores"]
