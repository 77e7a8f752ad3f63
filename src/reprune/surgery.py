"""Physically shrink a depth-2 module: delete level-1 rows and level-2 columns of the removed units."""

from __future__ import annotations

import torch

from reprune.adapters import Depth2Module, ModelAdapter


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
        rows = module.level1_rows(part, kept_units)
        key = id(part.projection.module)
        prev = by_projection.get(key, (part.projection, []))
        prev[1].append(rows)
        by_projection[key] = prev
    for projection, row_lists in by_projection.values():
        # sorted: a fused projection keeps its layout, in sections ([q|k|v], [gate|up]) or interleaved per head
        rows = torch.cat(row_lists).sort().values.to(projection.weight().device)
        bias = projection.bias()
        projection.replace(projection.weight()[rows].detach(), None if bias is None else bias[rows].detach())
    module.level2.replace(level2_weight.T, level2_bias)
    if module.kind == "attention":
        adapter.remove_heads(module, kept_units, kept_kv_heads(module, kept_units))
    adapter.materialise_bias_partners(module)
