"""The baseline criteria every benchmark includes: random, magnitude, Wanda-sp and FLAP."""

from __future__ import annotations

import torch

from reprune.adapters import Depth2Module
from reprune.criteria import level1_row_norms_sq, level2_weight, per_unit, register
from reprune.stats import ModuleStats


@register("random", description="uniformly random scores (the floor every criterion must beat)")
def random_score(module: Depth2Module, stats: ModuleStats, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(module.num_units, generator=generator, dtype=torch.float64)


@register("magnitude", description="L2 norm of the unit's level-1 rows times that of its level-2 columns")
def magnitude_score(module: Depth2Module, stats: ModuleStats, generator: torch.Generator) -> torch.Tensor:
    columns = per_unit(module, level2_weight(module).pow(2).sum(0))
    return level1_row_norms_sq(module).sqrt() * columns.sqrt()


@register("wanda-sp", needs={"level2_diag"}, description="Wanda-sp: mean over outputs of |W2| · ||x_j|| per level-2 input column")
def wanda_sp_score(module: Depth2Module, stats: ModuleStats, generator: torch.Generator) -> torch.Tensor:
    x_norm = stats.level2_in.square_sum.clamp_min(0).sqrt().cpu()
    per_channel = level2_weight(module).abs().mean(0) * x_norm
    return per_unit(module, per_channel)


@register("flap", needs={"level2_diag"},
          description="FLAP fluctuation: Var(x_j) · ||W2[:, j]||² per level-2 input column; a head sums its squares")
def flap_score(module: Depth2Module, stats: ModuleStats, generator: torch.Generator) -> torch.Tensor:
    """As FLAP's code (``lib/prune.py``): a neuron's score is its channel's; a head's channels are squared
    (``W_metric ** 2`` for o_proj) and returned per channel, so global allocation standardises them."""
    variance = stats.level2_in.variance.clamp_min(0).cpu()
    n = stats.level2_in.n
    variance = variance * n / max(n - 1, 1)  # FLAP uses the sample variance
    per_channel = variance * level2_weight(module).pow(2).sum(0)
    if module.kind == "attention":
        return per_channel.pow(2).reshape(module.num_units, module.unit_width)
    return per_unit(module, per_channel)
