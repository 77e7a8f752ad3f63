"""GOA's head-similarity criterion (GOA §3.2.2, Alg. 2): of two heads that attend alike, one is redundant.

``D_ij`` is the mean Jensen–Shannon divergence between the attention rows of heads i and j over all
calibration query tokens (``ModuleStats.head_divergence``). Greedy removal goes through the pairs by
increasing ``D_ij`` and, while neither head of a pair is marked, marks the one with the lower
second-moment score (METHODS.md [choice]). Run to the end this marks all heads but one, in order.

The scores encode that order for the allocation: a marked head scores the divergence of the pair that
marked it (made strictly increasing, so ties keep the marking order), the last head scores above ln 2.
``select_units`` with a count k therefore removes the k first-marked heads (the k most similar pairs),
and global allocation compares heads of different layers by how close their nearest twin is. With
``criterion_options={"tau": τ}`` the criterion sets the count itself: the heads marked while D < τ,
rounded to a legal count (GQA); the FFN keeps its allotted count, so the achieved ratio differs from
``ratio`` (the report states it).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from reprune.adapters import Depth2Module
from reprune.criteria import register
from reprune.criteria.second_moment import second_moment_scores
from reprune.stats import ModuleStats


def greedy_marking(divergence: torch.Tensor, keep_priority: torch.Tensor) -> tuple[list[int], list[float]]:
    """GOA Alg. 2 without a threshold: the heads in marking order and the D of the pair that marked each.

    Of a pair, the head with the lower ``keep_priority`` is marked.
    """
    heads = divergence.shape[0]
    first, second = torch.triu_indices(heads, heads, offset=1)
    pair_d = divergence.to("cpu", torch.float64)[first, second]
    marked: list[int] = []
    values: list[float] = []
    taken: set[int] = set()
    for k in torch.argsort(pair_d, stable=True).tolist():
        i, j = int(first[k]), int(second[k])
        if i in taken or j in taken:
            continue
        victim = i if keep_priority[i] <= keep_priority[j] else j
        taken.add(victim)
        marked.append(victim)
        values.append(float(pair_d[k]))
    return marked, values


def _marking(module: Depth2Module, stats: ModuleStats) -> tuple[list[int], list[float]]:
    if module.kind != "attention":
        raise ValueError(
            f"{module.name}: 'head-similarity' compares attention heads and cannot score FFN neurons; "
            "choose another criterion for FFN modules (e.g. ffn_criterion='second-moment')"
        )
    if stats.head_divergence is None or stats.level1_in is None:
        raise RuntimeError(f"{module.name}: 'head-similarity' needs the head_divergence and level1_in statistics")
    return greedy_marking(stats.head_divergence, second_moment_scores(module, stats.level1_in.second_moment))


def head_similarity_count(module: Depth2Module, stats: ModuleStats, options: dict[str, Any]) -> int | None:
    """With ``tau`` in the options: the number of heads marked while D < τ (else None: allocation decides)."""
    tau = options.get("tau")
    if tau is None:
        return None
    if not isinstance(tau, (int, float)) or not 0 < tau:
        raise ValueError(f"criterion option tau must be a positive JS-divergence threshold "
                         f"(JS lies in [0, ln 2 ≈ 0.693]), got {tau!r}")
    _, values = _marking(module, stats)
    return sum(value < tau for value in values)


@register("head-similarity", needs={"head_divergence", "level1_in"}, kinds={"attention"},
          count=head_similarity_count,
          description="GOA head similarity: drop one head of each pair with similar attention (mean JS divergence)")
def head_similarity_score(module: Depth2Module, stats: ModuleStats, generator: torch.Generator) -> torch.Tensor:
    marked, values = _marking(module, stats)
    scores = torch.full((module.num_units,), math.log(2.0) + 1.0, dtype=torch.float64)  # the unmarked head
    previous = -math.inf
    for head, value in zip(marked, values):
        previous = max(value, math.nextafter(previous, math.inf))
        scores[head] = previous
    return scores
