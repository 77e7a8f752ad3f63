"""GOA's second-moment criterion for depth-2 modules (GOA §3.2.3, App. B).

For ``f(x) = B σ(A x)`` with input second moment Σ = E[x xᵀ], unit j's output energy is about
``½ ||B[:, j]||² · a_jᵀ Σ a_j`` (exact for ReLU and zero-mean Gaussian x). Heads sum
``||W_O[:, j]||² · v_jᵀ Σ v_j`` over their channels, with Σ of the block input (METHODS.md's cheaper
choice). A gated FFN ``W_D (W_U x ⊙ σ(W_G x))`` has three published forms, each a criterion of its own:

- ``second-moment-paper``: App. B (p. 17) multiplies the up- and gate-path metrics literally,
  ``||W_D[:, j]||⁴ · (u_jᵀ Σ u_j)(g_jᵀ Σ g_j)``;
- ``second-moment-code``: the authors' code, ``||W_D[:, j]|| · silu(g_jᵀ Σ g_j) · (u_jᵀ Σ u_j)``;
- ``second-moment-product``: ``||W_D[:, j]||² · (u_jᵀ Σ u_j)(g_jᵀ Σ g_j)`` (this project's first form).

``second-moment`` is the best measured of them (benchmarks/README.md, "GOA as its authors ran it").
Data-free, the paper takes Σ from random token ids run through the model (App. D): calibrate on
``'random-tokens'``. ``second-moment-free`` is the crudest data-free form, Σ = I.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from reprune.adapters import Depth2Module
from reprune.criteria import level2_weight, per_unit, register
from reprune.stats import ModuleStats


def _quadratic_forms(weight_rows: torch.Tensor, sigma: torch.Tensor | None) -> torch.Tensor:
    """a_jᵀ Σ a_j for every row a_j (Σ = I when ``sigma`` is None)."""
    if sigma is None:
        return weight_rows.pow(2).sum(1)
    return ((weight_rows @ sigma) * weight_rows).sum(1)


GatedForm = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (‖W_D[:, j]‖², gate, up) -> M_j
GATED_FORMS: dict[str, GatedForm] = {
    "paper": lambda out_sq, gate, up: out_sq.pow(2) * gate * up,
    "code": lambda out_sq, gate, up: out_sq.sqrt() * torch.nn.functional.silu(gate) * up,
    "product": lambda out_sq, gate, up: out_sq * gate * up,
}
# the best measured on SmolLM2 (benchmarks/README.md, "GOA as its authors ran it"): with LIAR 119.5 / 932.9 at
# 20 / 50 % against product 123.3 / 915.0 and paper 150.7 / 1,321.9; with bias 164.7 / 1,294 against 164.4 / 1,785
# and 168.6 / 1,467
DEFAULT_FORM = "code"


def second_moment_scores(module: Depth2Module, sigma: torch.Tensor | None, form: str = DEFAULT_FORM) -> torch.Tensor:
    """Per-unit second-moment metric M_j given the module-input second moment (None: identity); ``form``
    names the gated FFN's combination (:data:`GATED_FORMS`)."""
    out_sq = level2_weight(module).pow(2).sum(0)
    sigma = None if sigma is None else sigma.to(torch.float64).cpu()
    if module.kind == "ffn":
        units = torch.arange(module.num_units)  # a fused projection (Phi-3's gate|up) holds several parts
        rows = [p.projection.weight().detach().to("cpu", torch.float64)[module.level1_rows(p, units)]
                for p in module.level1]
        terms = [_quadratic_forms(weight_rows, sigma) for weight_rows in rows]
        if module.gated:
            gate, up = terms
            return per_unit(module, GATED_FORMS[form](out_sq, gate, up))
        return per_unit(module, 0.5 * out_sq * terms[0])
    value_part = module.level1[2]  # attention: q, k, v — the value rows carry the head's output
    value_weight = value_part.projection.weight().detach().to("cpu", torch.float64)
    # every query head reads the value rows of its KV head (itself when there is no GQA)
    channel_rows = torch.cat([module.level1_rows(value_part, [h]) for h in range(module.num_units)])
    value_term = _quadratic_forms(value_weight[channel_rows], sigma)
    return per_unit(module, out_sq * value_term)


@register("second-moment", needs={"level1_in"},
          description=f"GOA second-moment metric with Σ from calibration (gated FFNs: the {DEFAULT_FORM!r} form)")
def second_moment_score(module: Depth2Module, stats: ModuleStats, generator: torch.Generator) -> torch.Tensor:
    return second_moment_scores(module, stats.level1_in.second_moment)


def _register_form(form: str, description: str) -> None:
    def score(module: Depth2Module, stats: ModuleStats, generator: torch.Generator) -> torch.Tensor:
        return second_moment_scores(module, stats.level1_in.second_moment, form)

    register(f"second-moment-{form}", needs={"level1_in"}, description=description)(score)


_register_form("paper", "second-moment, gated FFNs as GOA App. B literally: ‖W_D[:, j]‖⁴ (uᵀΣu)(gᵀΣg)")
_register_form("code", "second-moment, gated FFNs as GOA's code: ‖W_D[:, j]‖ silu(gᵀΣg) (uᵀΣu)")
_register_form("product", "second-moment, gated FFNs as ‖W_D[:, j]‖² (uᵀΣu)(gᵀΣg)")


@register("second-moment-free", description="GOA second-moment metric, data-free (Σ = I)")
def second_moment_free_score(module: Depth2Module, stats: ModuleStats, generator: torch.Generator) -> torch.Tensor:
    return second_moment_scores(module, None)
