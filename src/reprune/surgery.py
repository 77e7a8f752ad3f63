"""Physically shrink a depth-2 module: delete level-1 rows and level-2 columns of the removed units."""

from __future__ import annotations

import torch

from reprune.adapters import Depth2Module, ExpertProjection, ModelAdapter


def kept_kv_heads(module: Depth2Module, kept_units: torch.Tensor) -> torch.Tensor:
    """KV heads that still serve a kept query head; each must serve the same number (GQA validity)."""
    groups = kept_units // module.heads_per_kv
    kv, counts = torch.unique(groups, return_counts=True)
    if counts.numel() and not bool((counts == counts[0]).all()):
        raise ValueError(
            f"{module.name}: kept query heads {kept_units.tolist()} do not map evenly to KV heads; "
            "remove the same number of heads from every KV group or whole groups"
        )
    return kv


def shrink_module(
    adapter: ModelAdapter,
    module: Depth2Module,
    kept_units: torch.Tensor,
    level2_weight: torch.Tensor,
    level2_bias: torch.Tensor | None,
) -> None:
    """Replace the module's projections by smaller ones.

    ``level2_weight`` is the new level-2 weight as (kept inner channels, out) in METHODS.md's layout,
    as reconstruction returns it; ``level2_bias`` may add a bias the layer did not have.
    """
    kept_units = torch.as_tensor(kept_units, dtype=torch.long).sort().values
    by_projection: dict[int, tuple] = {}
    for part in module.level1:
        key = id(part.projection.module)
        prev = by_projection.get(key, (part.projection, [], []))
        (prev[2] if part.keeps_removed_rows else prev[1]).append(module.surgery_rows(part, kept_units))
        by_projection[key] = prev
    for projection, row_lists, ordered in by_projection.values():
        if ordered and (row_lists or len(ordered) > 1):
            raise ValueError(f"{module.name}: {projection.name} has several level-1 parts and one keeps its "
                             "removed rows, which would mix their layouts; the adapter must give a part with "
                             "keeps_removed_rows a projection of its own")
        # sorted: a fused projection keeps its layout, in sections ([q|k|v], [gate|up]) or interleaved per head;
        # a part keeping its removed rows takes surgery's order (kept units first)
        rows = (ordered[0] if ordered else torch.cat(row_lists).sort().values).to(projection.weight().device)
        bias = projection.bias()
        projection.replace(projection.weight()[rows].detach(), None if bias is None else bias[rows].detach())
    module.level2.replace(level2_weight.T, level2_bias)
    if module.kind == "attention":
        adapter.remove_heads(module, kept_units, kept_kv_heads(module, kept_units))
    adapter.materialise_bias_partners(module)


def shrink_experts(module: Depth2Module, kept_units: list[torch.Tensor], level2_weights: list[torch.Tensor],
                   level2_biases: list[torch.Tensor | None]) -> None:
    """Narrow every expert of a mixture at once: each keeps its own ``kept_units`` (all of one count, as the
    experts share each 3-D parameter) and takes its new level-2 weight (kept channels, out) and bias."""
    moe = module.moe
    if len({len(kept) for kept in kept_units}) > 1:
        raise ValueError(f"{module.name}: experts keep {[len(kept) for kept in kept_units]} neurons; "
                         "a mixture's experts share one width, so each must keep the same number")
    level1: dict[str, list[tuple[ExpertProjection, torch.Tensor]]] = {}  # parameter -> per expert: its slice, kept rows
    for expert, kept in zip(moe.experts, kept_units):
        kept = torch.as_tensor(kept, dtype=torch.long).sort().values
        per_parameter: dict[str, tuple[ExpertProjection, list[torch.Tensor]]] = {}
        for part in expert.level1:
            rows = expert.level1_rows(part, kept)
            per_parameter.setdefault(part.projection.name, (part.projection, []))[1].append(rows)
        for name, (projection, row_lists) in per_parameter.items():
            # sorted: a fused parameter keeps its layout ([gate|up] sections, or interleaved)
            level1.setdefault(name, []).append((projection, torch.cat(row_lists).sort().values))
    for name, per_expert in level1.items():
        first = per_expert[0][0]
        _set_parameter(moe.module, name, first.stored([projection.weight()[rows] for projection, rows in per_expert]))
        bias = getattr(moe.module, first.bias_name, None) if first.bias_name else None
        if bias is not None:
            _set_parameter(moe.module, first.bias_name,
                           torch.stack([bias[projection.expert][rows] for projection, rows in per_expert]))
    level2 = moe.experts[0].level2
    _set_parameter(moe.module, level2.name, level2.stored([w.T for w in level2_weights]))
    if any(bias is not None for bias in level2_biases):
        out_features = level2_weights[0].shape[1]
        full = level2.bias_tensor(torch.Size((len(moe.experts), out_features)))
        for e, bias in enumerate(level2_biases):
            full.data[e] = 0 if bias is None else bias.to(full.dtype)


def _set_parameter(parent: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    """Swap in a frozen parameter of a new shape, same dtype and device as the old one."""
    old = getattr(parent, name)
    setattr(parent, name, torch.nn.Parameter(value.detach().to(old.dtype).contiguous(), requires_grad=False))
