"""Budget allocation: how many heads and neurons each block loses, and which ones.

The ratio is of the parameters of the prunable projections (attention + FFN). ``uniform`` removes the
same number of heads and of neurons in every pruned block (FLAP's UL-UM); ``global`` standardises each
module's scores per layer and removes the lowest units of the whole model, weighting each unit by the
parameters it removes (AL-AM). Scores that already compare across layers (``standardise=False``, e.g.
``obs``'s relative output errors) are ranked as they are: a threshold t then removes, in every module, the
units whose removal leaves a relative error of at most t. ``ffn-first`` takes the budget from the FFN
of every pruned block alike and removes heads only where the FFNs cannot carry it (then uniformly): on
SmolLM2 a head costs more perplexity per parameter than a neuron at every ratio measured
(benchmarks/README.md, "Which units carry the budget"). ``influence`` protects the blocks that rewrite the
residual stream: each FFN loses a fraction of its neurons proportional to min(c / ½, 1), c its block's input-output
cosine on the dense model (:func:`reprune.scoring.block_similarities`). Blocks that keep their input's direction
(c ≥ ½) lose alike, as in ffn-first; a block below that loses in proportion to c (SmolLM2's block 0, c about 0.01,
keeps its FFN whole). Shares proportional to c itself also protected blocks that only refine the stream (c 0.6-0.9),
which cost more than it saved on Gemma-3 (benchmarks/README.md, "Allocation by block influence").
GQA: heads go either in whole KV groups (``gqa_mode='group'``) or as the same number of query heads from every
group (``'query'``), so query heads still map evenly to KV heads.

Kept widths are multiples of ``multiple_of`` inner channels (FFN neurons; a head's ``head_dim`` channels,
so heads of 64 are already multiples of 8), which the matmul kernels run at full speed where an odd width
like 1529 falls to slower edge paths. Counts go to the *nearest* legal width rather than down: the user
asked for a ratio, and nearest keeps the achieved ratio closest to it (down would always prune less).
A module never loses all its units, and one narrower than the multiple stays whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from reprune.adapters import Depth2Module, ModelAdapter
from reprune.criteria import unit_scores

AllocationMode = Literal["uniform", "global", "ffn-first", "influence"]
REWRITE_COSINE = 0.5  # influence: a block whose input-output cosine is below this rewrites the stream
GqaMode = Literal["query", "group"]


@dataclass(frozen=True)
class ModuleBudget:
    """Size facts of one module needed to share out the budget."""

    block: int
    kind: str
    num_units: int
    step: int  # kept widths are multiples of it (KV groups, multiple_of, grouped_mm), and so are removals
    # from a width that is one; otherwise removals are 0 or num_units % step + j * step
    max_remove: int
    unit_cost: float  # parameters removed per unit
    total_params: int  # all parameters of the module's projections

    @property
    def key(self) -> tuple[int, str]:
        return (self.block, self.kind)


def projection_params(module: Depth2Module) -> int:
    """Parameters of all the module's projections (weights and biases; fused projections counted once;
    a mixture's: all its experts')."""
    if module.moe:
        return sum(projection_params(expert) for expert in module.moe.experts)
    seen: dict[object, int] = {}
    for proj in [p.projection for p in module.level1] + [module.level2]:
        seen[proj.key] = proj.num_parameters()
    return sum(seen.values())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prunable_parameters(adapter: ModelAdapter) -> int:
    """Parameters of all attention and FFN projections of all blocks."""
    return sum(projection_params(m) for i in range(len(adapter.blocks())) for m in adapter.depth2_modules(i))


def removes_kv_heads(module: Depth2Module, gqa_mode: GqaMode) -> bool:
    """Whether removing query heads also removes key/value rows (no GQA, or whole-group removal)."""
    return module.heads_per_kv == 1 or gqa_mode == "group"


def width_step(module: Depth2Module, gqa_mode: GqaMode, multiple_of: int) -> int:
    """Units that every kept width is a multiple of: ``multiple_of`` inner channels, in GQA-legal head
    counts (whole KV groups, or as many heads from every group), for a mixture also grouped_mm's step."""
    step = multiple_of // math.gcd(multiple_of, module.unit_width)
    if module.moe:
        return math.lcm(step, module.moe.width_step)
    if module.kind == "attention" and module.heads_per_kv > 1:
        return math.lcm(step, module.heads_per_kv if gqa_mode == "group" else module.num_kv_heads)
    return step


def module_budget(module: Depth2Module, gqa_mode: GqaMode, multiple_of: int = 1) -> ModuleBudget:
    """Describe a module for allocation: legal step, maximum removal and parameters per unit. A mixture's
    unit is one neuron of every expert (they share one width)."""
    step = width_step(module, gqa_mode, multiple_of)
    max_remove = max(module.num_units - step, 0)
    if module.moe:
        experts = module.moe.experts
        return ModuleBudget(module.block, module.kind, module.num_units, step, max_remove,
                            module_budget(experts[0], gqa_mode).unit_cost * len(experts), projection_params(module))
    cost = float(module.unit_width * module.level2.out_features)
    for part in module.level1:
        if part.keeps_removed_rows or (part.per_kv_head and not removes_kv_heads(module, gqa_mode)):
            continue
        proj = part.projection
        per_row = proj.in_features + (1 if proj.bias() is not None else 0)
        share = 1.0 / module.heads_per_kv if part.per_kv_head else 1.0
        cost += module.unit_width * per_row * share
    return ModuleBudget(module.block, module.kind, module.num_units, step, max_remove, cost,
                        projection_params(module))


def _legal(count: float, budget: ModuleBudget, rounding: Literal["nearest", "down", "up"]) -> int:
    """The legal removal nearest ``count`` (or the largest not above it, or the smallest not below it): 0,
    or a removal that leaves a multiple of the step, at most ``max_remove``."""
    offset = budget.num_units % budget.step  # the smallest non-zero removal that leaves a multiple
    steps = (count - offset) / budget.step
    if rounding == "nearest":
        removal = offset + max(int(round(steps)), 0) * budget.step
        if offset and count < offset / 2:
            removal = 0
    elif rounding == "up":
        removal = offset + max(math.ceil(steps - 1e-9), 0) * budget.step if count > 1e-9 else 0
    else:
        removal = offset + int(steps + 1e-9) * budget.step if count + 1e-9 >= offset else 0
    return max(0, min(removal, budget.max_remove))


def legal_count(module: Depth2Module, count: int, gqa_mode: GqaMode, multiple_of: int = 1) -> int:
    """The legal removal count nearest ``count`` (width step, at least one step left), for a criterion's own count."""
    return _legal(count, module_budget(module, gqa_mode, multiple_of), "nearest")


def check_ratio(ratio: float) -> None:
    if not (0.0 <= ratio < 1.0):
        raise ValueError(f"ratio must be in [0, 1), the fraction of prunable parameters to remove; got {ratio}")


def allocate(
    budgets: list[ModuleBudget],
    ratio: float,
    mode: AllocationMode,
    eligible: set[tuple[int, str]],
    scores: dict[tuple[int, str], torch.Tensor] | None = None,
    standardise: bool = True,
    similarities: dict[int, float] | None = None,
) -> dict[tuple[int, str], int]:
    """Number of units to remove per module so that ``ratio`` of all prunable parameters go (``global``:
    ranked by ``scores``, each layer's standardised first unless ``standardise`` is False; ``influence``:
    FFNs shared out by each block's ``similarities``)."""
    check_ratio(ratio)
    total = sum(b.total_params for b in budgets)
    target = ratio * total
    counts = {b.key: 0 for b in budgets}
    pool = [b for b in budgets if b.key in eligible]
    capacity = sum(b.max_remove * b.unit_cost for b in pool)
    if target > capacity + 1e-6:
        raise ValueError(
            f"ratio {ratio} asks for {target:.0f} parameters but the eligible modules can lose at most "
            f"{capacity:.0f} ({capacity / total:.3f} of prunable parameters): "
            "lower the ratio, prune both attention and FFN, or keep fewer blocks dense"
        )
    if target == 0 or not pool:
        return counts
    if mode == "uniform":
        return _uniform(pool, target, counts)
    if mode == "ffn-first":
        return _ffn_first(pool, target, counts)
    if mode == "influence":
        missing = sorted({b.block for b in pool} - (similarities or {}).keys())
        if missing:
            raise ValueError(f"influence allocation needs the similarity of every pruned block, but blocks {missing} "
                             "have none: measure them with reprune.scoring.block_similarities")
        return _ffn_first(pool, target, counts, similarities)
    if mode == "global":
        if scores is None:
            raise ValueError("global allocation needs the scores of every module")
        ranked = {b.key: standardised(scores[b.key]) if standardise else unit_scores(scores[b.key]).to(torch.float64)
                  for b in pool}
        return _global(pool, target, counts, ranked)
    raise ValueError(f"Unknown allocation {mode!r}; choose one of: {', '.join(get_args(AllocationMode))}")


def _uniform(pool: list[ModuleBudget], target: float, counts: dict) -> dict[tuple[int, str], int]:
    heads = [b for b in pool if b.kind == "attention"]
    ffns = [b for b in pool if b.kind == "ffn"]
    fraction = target / sum(b.num_units * b.unit_cost for b in pool)
    if not ffns:  # heads only: the nearest legal count to the budget
        for b in heads:
            counts[b.key] = _legal(target / (len(heads) * b.unit_cost), b, "nearest")
        return counts
    spent = 0.0
    for b in heads:
        counts[b.key] = _legal(fraction * b.num_units, b, "nearest")
        spent += counts[b.key] * b.unit_cost
    return _fill_ffns(ffns, target - spent, counts)


def _fill_ffns(ffns: list[ModuleBudget], rest: float, counts: dict) -> dict[tuple[int, str], int]:
    """The same nearest legal number of neurons from every FFN, so that they remove ``rest`` parameters."""
    per_block = max(rest, 0.0) / sum(b.unit_cost for b in ffns)
    for b in ffns:
        counts[b.key] = _legal(per_block, b, "nearest")
    return counts


def _ffn_first(pool: list[ModuleBudget], target: float, counts: dict,
               similarities: dict[int, float] | None = None) -> dict[tuple[int, str], int]:
    """The same number of neurons from every FFN (or, with ``similarities``, shares by :func:`influence_weight`);
    heads (the same number per block) only for what the FFNs cannot carry, and the FFNs then refill what legal
    head counts leave over."""
    heads = [b for b in pool if b.kind == "attention"]
    ffns = [b for b in pool if b.kind == "ffn"]
    ffn_capacity = sum(b.max_remove * b.unit_cost for b in ffns)
    spent = 0.0
    if heads and target > ffn_capacity:
        per_block = (target - ffn_capacity) / sum(b.unit_cost for b in heads)
        for b in heads:
            counts[b.key] = _legal(per_block, b, "up")
            spent += counts[b.key] * b.unit_cost
    if not ffns:
        return counts
    if similarities is None:
        return _fill_ffns(ffns, target - spent, counts)
    return _fill_ffns_in_proportion(ffns, target - spent, counts, {b.key: influence_weight(similarities[b.block])
                                                                   for b in ffns})


def influence_weight(cosine: float) -> float:
    """An FFN's share of the budget under ``influence``, relative to a block that keeps its input's direction."""
    return min(max(cosine, 0.0) / REWRITE_COSINE, 1.0)


def _fill_ffns_in_proportion(ffns: list[ModuleBudget], rest: float, counts: dict,
                             weights: dict[tuple[int, str], float]) -> dict[tuple[int, str], int]:
    """Each FFN loses the fraction f · weight of its neurons (at most ``max_remove``), f such that they remove
    ``rest`` parameters; FFNs that reach their cap are set aside and f is found again for the others."""
    free = list(ffns)
    while free and rest > 0:
        demand = sum(weights[b.key] * b.num_units * b.unit_cost for b in free)
        if demand <= 0:  # the FFNs left all have weight 0 and the budget is not met: they share it alike
            return _fill_ffns(free, rest, counts)
        fraction = rest / demand
        capped = [b for b in free if fraction * weights[b.key] * b.num_units >= b.max_remove]
        if not capped:
            for b in free:
                counts[b.key] = _legal(fraction * weights[b.key] * b.num_units, b, "nearest")
            return counts
        for b in capped:
            counts[b.key] = b.max_remove
            rest -= b.max_remove * b.unit_cost
            free.remove(b)
    return counts


def standardised(scores: torch.Tensor) -> torch.Tensor:
    """A module's unit scores made comparable across layers, as FLAP's AL-AM does: standardised over the
    layer's entries (per-channel scores ``(units, width)``: over its channels, then averaged per unit)."""
    s = scores.to(torch.float64)
    z = (s - s.mean()) / s.std().clamp_min(1e-12) if s.numel() > 1 else torch.zeros_like(s)
    return z.mean(1) if z.dim() == 2 else z


def _global(pool: list[ModuleBudget], target: float, counts: dict,
            scores: dict[tuple[int, str], torch.Tensor]) -> dict[tuple[int, str], int]:
    """Remove the lowest-ranked units of the pool (``scores``: one per unit, comparable across modules)."""
    ranked: list[tuple[float, ModuleBudget]] = []
    for b in pool:
        ranked.extend((float(v), b) for v in scores[b.key])
    ranked.sort(key=lambda item: item[0])
    has_ffn = any(b.kind == "ffn" for b in pool)
    removable: list[ModuleBudget] = []  # in rank order, each module's units up to its max_remove
    seen = {b.key: 0 for b in pool}
    for _, b in ranked:
        if seen[b.key] < b.max_remove:
            seen[b.key] += 1
            removable.append(b)
    # FLAP's threshold (AL-AM): the rank j where the removed parameters come nearest the target; the unit at
    # the threshold goes too (its code keeps units scored strictly above it)
    removed = torch.cumsum(torch.tensor([0.0] + [b.unit_cost for b in removable], dtype=torch.float64), 0)
    nearest = int(torch.argmin((removed - target).abs()))
    spent = 0.0
    for b in removable[: nearest + 1]:
        counts[b.key] += 1
        spent += b.unit_cost
    for b in pool:  # make head counts legal, then refill the budget with neurons in rank order
        if b.kind == "attention":
            legal = _legal(counts[b.key], b, "down" if has_ffn else "nearest")
            spent += (legal - counts[b.key]) * b.unit_cost
            counts[b.key] = legal
    for _, b in ranked:
        if b.kind != "ffn" or counts[b.key] >= b.max_remove:
            continue  # only neurons refill (a head's larger cost must not end the refill early)
        if spent >= target - 0.5 * b.unit_cost:
            break
        counts[b.key] += 1
        spent += b.unit_cost
    for b in pool:  # each layer's width to its nearest multiple (a mixture's: of grouped_mm's step too)
        if b.kind == "ffn" and b.step > 1:
            counts[b.key] = _legal(counts[b.key], b, "nearest")
    return counts


def select_units(module: Depth2Module, scores: torch.Tensor, n_remove: int, gqa_mode: GqaMode) -> torch.Tensor:
    """Sorted indices of the units to keep: drop the ``n_remove`` lowest-scored ones, legally for GQA."""
    scores = scores.to(torch.float64).cpu()
    if n_remove == 0:
        return torch.arange(module.num_units)
    rep = module.heads_per_kv
    if module.kind == "attention" and rep > 1:
        grouped = scores.reshape(module.num_kv_heads, rep)
        if gqa_mode == "group":
            drop_groups = torch.argsort(grouped.sum(1))[: n_remove // rep]
            keep = [h for g in range(module.num_kv_heads) if g not in set(drop_groups.tolist())
                    for h in range(g * rep, (g + 1) * rep)]
            return torch.tensor(keep, dtype=torch.long)
        per_group = n_remove // module.num_kv_heads
        keep = []
        for g in range(module.num_kv_heads):
            order = torch.argsort(grouped[g], descending=True)[: rep - per_group]
            keep.extend((g * rep + order).tolist())
        return torch.tensor(sorted(keep), dtype=torch.long)
    order = torch.argsort(scores, descending=True)[: module.num_units - n_remove]
    return torch.sort(order).values
