"""The ``obs`` criterion: greedy elimination by the error LIAR leaves. Its increments add up to the
Schur-complement error of the set it removes, computed directly; on synthetic layers it never removes a
set worse than flap's, and it comes near the brute-force optimum."""

from __future__ import annotations

import itertools

import pytest
import torch

from reprune.criteria.obs import elimination

def layer(seed: int, units: int, width: int, outputs: int = 6, rows: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    """Correlated level-2 inputs (rows × channels) with uneven scales, and a level-2 weight (channels × outputs)."""
    g = torch.Generator().manual_seed(seed)
    d = units * width
    mixing = torch.randn(d, d, generator=g, dtype=torch.float64) * 0.5 + torch.eye(d, dtype=torch.float64)
    x = torch.randn(rows, d, generator=g, dtype=torch.float64) @ mixing * torch.rand(d, generator=g, dtype=torch.float64)
    return x, torch.randn(d, outputs, generator=g, dtype=torch.float64)


def covariance(x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(0)
    sigma = centred.T @ centred / len(x)
    return sigma + 1e-2 * sigma.diagonal().mean() * torch.eye(len(sigma), dtype=torch.float64)


def schur_error(sigma: torch.Tensor, weight: torch.Tensor, width: int, removed: list[int]) -> float:
    """E(m) = tr(W_mᵀ (Σ_mm − Σ_mu Σ_uu⁻¹ Σ_um) W_m), directly."""
    units = len(weight) // width
    m = torch.tensor([u * width + i for u in removed for i in range(width)], dtype=torch.long)
    u = torch.tensor([k * width + i for k in range(units) if k not in removed for i in range(width)], dtype=torch.long)
    s = sigma[m][:, m]
    if len(u):
        s = s - sigma[m][:, u] @ torch.linalg.solve(sigma[u][:, u], sigma[u][:, m])
    return float((weight[m] * (s @ weight[m])).sum())


def flap_removal(x: torch.Tensor, weight: torch.Tensor, width: int, count: int) -> list[int]:
    per_channel = x.var(0) * weight.pow(2).sum(1)
    scores = per_channel.pow(2).reshape(-1, width).sum(1) if width > 1 else per_channel
    return torch.argsort(scores)[:count].tolist()


@pytest.mark.parametrize("units, width, groups", [(8, 1, 1), (6, 4, 1), (6, 4, 2)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_increments_add_up_to_the_schur_error_of_the_removed_set(units: int, width: int, groups: int, seed: int) -> None:
    x, weight = layer(seed, units, width)
    sigma = covariance(x)
    per = units // groups
    order, increments = elimination(sigma, weight, width, [list(range(g * per, (g + 1) * per)) for g in range(groups)])
    assert sorted(order) == list(range(units))
    for k in range(1, units):
        assert sum(increments[:k]) == pytest.approx(schur_error(sigma, weight, width, order[:k]), rel=1e-8)
    if groups > 1:  # rounds: one unit of every group in turn
        assert [unit // per for unit in order[:groups]] == list(range(groups))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_neuron_path_equals_the_general_one(seed: int) -> None:
    """One group of width-1 units takes whole-tensor steps; an empty second group sends the same units through
    the general loop: same order, same increments."""
    x, weight = layer(seed, 40, 1, rows=800)
    sigma = covariance(x)
    fast = elimination(sigma, weight, 1, [list(range(40))])
    general = elimination(sigma, weight, 1, [list(range(40)), []])
    assert fast[0] == general[0]
    torch.testing.assert_close(torch.tensor(fast[1]), torch.tensor(general[1]), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("units, width", [(8, 1), (6, 4)])
def test_against_flap_and_the_brute_force_optimum(units: int, width: int) -> None:
    """Greedy is not optimal, so a rare case can lose to flap: over 8 layers and every count it beats or ties
    flap in 95 % of the cases and is never 1 % worse; it stays within 50 % of the optimum (median gap 0; gaps printed)."""
    beaten, worst_vs_flap, gaps = 0, 0.0, []
    cases = 0
    for seed in range(8):
        x, weight = layer(seed, units, width)
        sigma = covariance(x)
        order, increments = elimination(sigma, weight, width, [list(range(units))])
        for k in range(1, units):
            greedy = sum(increments[:k])
            flap = schur_error(sigma, weight, width, flap_removal(x, weight, width, k))
            best = min(schur_error(sigma, weight, width, list(c)) for c in itertools.combinations(range(units), k))
            assert best <= greedy * (1 + 1e-9)
            cases += 1
            beaten += greedy <= flap * (1 + 1e-9)
            worst_vs_flap = max(worst_vs_flap, greedy / flap)
            gaps.append(greedy / best)
    print(f"units={units} width={width}: greedy <= flap in {beaten}/{cases}, worst greedy/flap {worst_vs_flap:.4f}, "
          f"greedy/optimum median {sorted(gaps)[len(gaps) // 2]:.4f} max {max(gaps):.4f}")
    assert beaten >= 0.95 * cases and worst_vs_flap < 1.01
    assert max(gaps) < 1.5


def test_global_obs_prunes_by_unstandardised_relative_errors() -> None:
    """Wiring: global allocation with ``obs`` for both kinds removes the counts that its raw scores give."""
    from reprune import PruneConfig, prune
    from reprune.adapters import get_adapter
    from reprune.allocation import allocate, module_budget
    from reprune.pipeline import global_scores
    from tiny_models import calibration_batch, tiny_model

    config = PruneConfig(ratio=0.3, criterion="obs", allocation="global", multiple_of=1, num_samples=8, seq_len=16)
    ids = calibration_batch(config.num_samples, config.seq_len)
    model = tiny_model("llama")
    adapter = get_adapter(model)
    budgets = [module_budget(m, config.gqa_mode) for i in range(len(adapter.blocks())) for m in adapter.depth2_modules(i)]
    scores = global_scores(model, ids, config)
    eligible = {b.key for b in budgets}
    raw = allocate(budgets, config.ratio, "global", eligible, scores, standardise=False)
    assert raw != allocate(budgets, config.ratio, "global", eligible, scores)  # the test can tell them apart
    _, record = prune(model, ids, config, progress=False)
    assert {(r.block, r.kind): r.units_before - r.units_after for r in record.layers} == {k: v for k, v in raw.items() if v}


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_obs_flap_is_obs_heads_and_flap_neurons(allocation: str) -> None:
    """The one-name pair prunes exactly as attention_criterion='obs' with ffn_criterion='flap'."""
    from reprune import PruneConfig, prune
    from tiny_models import calibration_batch, tiny_model

    ids = calibration_batch(8, 16)
    kept = []
    for names in ({"criterion": "obs-flap"}, {"attention_criterion": "obs", "ffn_criterion": "flap"}):
        config = PruneConfig(ratio=0.4, allocation=allocation, multiple_of=1, num_samples=8, seq_len=16, **names)
        _, record = prune(tiny_model("llama"), ids, config, progress=False)
        kept.append([(r.block, r.kind, r.kept_units) for r in record.layers])
    assert kept[0] == kept[1]
    assert {kind for _, kind, _ in kept[0]} == {"attention", "ffn"}


def test_obs_flap_resolves_to_its_part_per_kind() -> None:
    """Each kind reads its own part's statistics (flap's neurons no full Gram) and comparability."""
    from reprune import PruneConfig

    plan = PruneConfig(criterion="obs-flap", reconstruction="bias").resolve(2)
    assert (plan.criteria["attention"].name, plan.criteria["ffn"].name) == ("obs", "flap")
    assert plan.criteria["ffn"].needs == {"level2_diag"} and not plan.comparable_scores
    assert PruneConfig(criterion="obs-flap", targets="attention").resolve(2).comparable_scores
