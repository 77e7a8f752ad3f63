"""GOA's second-moment criterion for depth-2 modules (GOA §3.2.3, App. B).

For ``f(x) = B σ(A x)`` with input second moment Σ = E[x xᵀ], unit j's output energy is about
``½ ||B[:, j]||² · a_jᵀ Σ a_j`` (exact for ReLU and zero-mean Gaussian x). Gated FFNs multiply the up-
and gate-path terms; heads sum ``||W_O[:, j]||² · v_jᵀ Σ v_j`` over their channels, with Σ of the
block input (METHODS.md's cheaper choice). ``second-moment-free`` uses Σ = I and needs no data.
"""

from __future__ import annotations

import torch

from reprune.adapters import Depth2Module
from reprune.criteria import level2_weight, per_unit, register
from reprune.stats import ModuleStats


def _quadratic_forms(weight_rows: torch.Tensor, sigma: torch.Tensor | None) -> torch.Tensor:
    """a_jᵀ Σ a_j for every row a_j (Σ = I when ``sigma`` is None)."""
    if sigma is None:
        return weight_rows.pow(2).sum(1)
    return ((weight_rows @ sigma) * weight_rows).sum(1)


def second_moment_scores(module: Depth2Module, sigma: torch.Tensor | None) -> torch.Tensor:
    """Per-unit second-moment metric M_j given the module-input second moment (None: identity)."""
    out_sq = level2_weight(module).pow(2).sum(0)
    sigma = None if sigma is None else sigma.to(torch.float64).cpu()
    if module.kind == "ffn":
        units = torch.arange(module.num_units)  # a fused projection (Phi-3's gate|up) holds several parts
        rows = [p.projection.weight().detach().to("cpu", torch.float64)[module.level1_rows(p, units)]
                for p in module.level1]
        terms = [_quadratic_forms(weight_rows, sigma) for weight_rows in rows]
        if module.gated:
            gate, up = terms
            return per_unit(module, out_sq * gate * up)
        return per_unit(module, 0.5 * out_sq * terms[0])
    value_part = module.level1[2]  # attention: q, k, v — the value rows carry the head's output
    value_weight = value_part.projection.weight().detach().to("cpu", torch.float64)
    # every query head reads the value rows of its KV head (itself when there is no GQA)
    channel_rows = torch.cat([module.level1_rows(value_part, [h]) for h in range(module.num_units)])
    value_term = _quadratic_forms(value_weight[channel_rows], sigma)
    return per_unit(module, out_sq * value_term)


@register("second-moment", needs={"level1_in"}, description="GOA second-moment metric with Σ from calibration")
def second_moment_score(module: Depth2Module, stats: ModuleStats, generator: torch.Generator) -> torch.Tensor:
    return second_moment_scores(module, stats.level1_in.second_moment)


@register("second-moment-free", description="GOA second-moment metric, data-free (Σ = I)")
def second_moment_free_score(module: Depth2Module, stats: ModuleStats, generator: torch.Generator) -> torch.Tensor:
    return second_moment_scores(module, None)
