"""Selection that knows LIAR will repair it: greedy structured optimal-brain-surgeon elimination.

After LIAR re-fits the kept channels u of a level-2 projection W (channels × outputs) to stand in for the
removed set m, the output error left is the Schur complement form

    E(m) = tr(W_mᵀ (Σ_mm − Σ_mu Σ_uu⁻¹ Σ_um) W_m)

(ZipLM, SlimGPT). With P = (Σ + λI)⁻¹ over the kept channels, removing unit c next adds
tr(W_cᵀ (P_cc)⁻¹ W_c); afterwards W ← W − P_{:,c} P_cc⁻¹ W_c and P ← P − P_{:,c} P_cc⁻¹ P_{c,:}. The
elimination runs until no unit is left; a unit's score is the accumulated error when it went, divided by
the layer's output energy tr(Wᵀ Σ W): a relative error, which means the same in every layer, so global
allocation ranks it across layers as it is (when every pruned kind is scored by ``obs``). Σ is the covariance of the level-2 input (LIAR
fits an intercept), λ = 1e-2 · mean diag Σ (LIAR's default ridge). GQA: rounds of one query head per KV
group, so the query heads kept in every group are the greedy's; ``gqa_mode='group'`` sums these scores.
"""

from __future__ import annotations

import torch

from reprune.adapters import Depth2Module
from reprune.criteria import level2_weight, register
from reprune.stats import ModuleStats

RIDGE = 1e-2


def regularised_covariance(stats: ModuleStats) -> torch.Tensor:
    sigma = stats.level2_in.covariance.to("cpu", torch.float64)
    scale = sigma.diagonal().mean().clamp_min(1e-30)
    return sigma + RIDGE * scale * torch.eye(sigma.shape[0], dtype=torch.float64)


def elimination(sigma: torch.Tensor, weight: torch.Tensor, width: int, groups: list[list[int]]
                ) -> tuple[list[int], list[float]]:
    """Greedy backward elimination: the units in the order removed and each removal's error increment.

    ``sigma`` (channels × channels, regularised), ``weight`` (channels × outputs), units of ``width``
    consecutive channels; each round removes the cheapest remaining unit of every group in turn. One group of
    neurons (width 1) takes a path of whole-tensor steps, 9× faster on a 1,536-neuron FFN."""
    if width == 1 and len(groups) == 1:
        return _neuron_elimination(sigma, weight, groups[0])
    p = torch.linalg.inv(sigma)
    w = weight.clone()
    alive = [list(group) for group in groups]
    order: list[int] = []
    increments: list[float] = []
    while any(alive):
        for group in alive:
            if not group:
                continue
            channels = torch.tensor([[u * width + i for i in range(width)] for u in group])
            blocks = p[channels.unsqueeze(-1), channels.unsqueeze(-2)]  # (units, width, width)
            w_units = w[channels]  # (units, width, outputs)
            costs = (w_units * torch.linalg.solve(blocks, w_units)).sum((1, 2))
            best = int(torch.argmin(costs))
            unit = group.pop(best)
            c = channels[best]
            inverse = torch.linalg.inv(p[c][:, c])
            coupling = p[:, c] @ inverse
            w -= coupling @ w[c]
            p -= coupling @ p[c]
            order.append(unit)
            increments.append(float(costs[best]))
    return order, increments


def _neuron_elimination(sigma: torch.Tensor, weight: torch.Tensor, units: list[int]) -> tuple[list[int], list[float]]:
    """:func:`elimination` for one group of one-channel units (an FFN's neurons), one tensor step per removal."""
    p = torch.linalg.inv(sigma)
    w = weight.clone()
    candidate = torch.zeros(sigma.shape[0], dtype=torch.bool)
    candidate[units] = True
    order: list[int] = []
    increments: list[float] = []
    for _ in units:
        costs = torch.where(candidate, w.pow(2).sum(1) / p.diagonal(), torch.inf)
        unit = int(torch.argmin(costs))
        coupling = p[:, unit] / p[unit, unit]
        w.addr_(coupling, w[unit].clone(), alpha=-1.0)
        p.addr_(coupling, p[unit].clone(), alpha=-1.0)
        candidate[unit] = False
        order.append(unit)
        increments.append(float(costs[unit]))
    return order, increments


@register("obs", needs={"level2_in"}, comparable=True,
          description="greedy structured OBS: the error LIAR leaves (Schur complement), units removed one by one")
def obs_score(module: Depth2Module, stats: ModuleStats, generator: torch.Generator) -> torch.Tensor:
    sigma = regularised_covariance(stats)
    weight = level2_weight(module).T.contiguous()
    rep = module.heads_per_kv if module.kind == "attention" else 1
    groups = [list(range(g * rep, (g + 1) * rep)) for g in range(module.num_units // rep)] if rep > 1 \
        else [list(range(module.num_units))]
    order, increments = elimination(sigma, weight, module.unit_width, groups)
    energy = float((weight * (sigma @ weight)).sum()) or 1.0
    scores = torch.empty(module.num_units, dtype=torch.float64)
    scores[torch.tensor(order)] = torch.tensor(increments, dtype=torch.float64).cumsum(0) / energy
    return scores
