"""``liar-gcv``: the spectral GCV curve equals its definition computed directly (with and without the
intercept), the solver returns the ridge solution at the curve's minimum, and on a layer with few rows the
ridge it picks generalises nearly as well as the best of the grid on fresh rows of the same layer."""

from __future__ import annotations

import torch

from reprune.reconstruction.gcv import gcv_curve, gcv_solver

KEPT, REMOVED = 40, 8


def layer_model(seed: int, outputs: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A layer's input law (correlated kept channels, removed ones = kept · A + noise) and its level-2 weight."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(KEPT, KEPT, generator=g, dtype=torch.float64) * 0.3 + torch.eye(KEPT, dtype=torch.float64)
    a = torch.randn(KEPT, REMOVED, generator=g, dtype=torch.float64) * 0.2
    return mixing, a, torch.randn(REMOVED, outputs, generator=g, dtype=torch.float64)


def rows_of(model: tuple[torch.Tensor, torch.Tensor, torch.Tensor], seed: int, rows: int, offset: float = 0.0):
    """Rows (kept channels first) drawn from ``model``'s law, with data seed ``seed``."""
    mixing, a, _ = model
    g = torch.Generator().manual_seed(10_000 + seed)
    x_u = torch.randn(rows, KEPT, generator=g, dtype=torch.float64) @ mixing + offset
    x_m = x_u @ a + torch.randn(rows, REMOVED, generator=g, dtype=torch.float64)
    return torch.cat([x_u, x_m], 1)


U, M = torch.arange(KEPT), torch.arange(KEPT, KEPT + REMOVED)


def ridge(sigma: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return torch.linalg.solve(sigma[U][:, U] + lam * torch.eye(KEPT, dtype=torch.float64), sigma[U][:, M])


def test_curve_equals_its_definition() -> None:
    """RSS / (1 − tr(H)/n)² from the rows and the hat matrix, uncentred, and centred with the intercept's +1."""
    model = layer_model(0)
    w_m = model[2]
    for centred in (False, True):
        x = rows_of(model, 0, rows=120, offset=3.0 if centred else 0.0)
        z = x - x.mean(0) if centred else x
        sigma = z.T @ z / len(z)
        lams, gcv, *_ = gcv_curve(sigma, U, M, w_m, rows=len(x), extra_df=int(centred))
        for lam, value in zip(lams[::7], gcv[::7]):
            rss = (z[:, M] @ w_m - z[:, U] @ ridge(sigma, lam) @ w_m).pow(2).sum() / len(z)
            hat = z[:, U] @ torch.linalg.solve(z[:, U].T @ z[:, U] + len(z) * lam * torch.eye(KEPT, dtype=torch.float64),
                                               z[:, U].T)
            expected = rss / (1 - (torch.trace(hat) + int(centred)) / len(z)) ** 2
            torch.testing.assert_close(value, expected, rtol=1e-9, atol=0.0)


def test_solver_is_the_ridge_solution_at_the_curves_minimum() -> None:
    model = layer_model(1)
    x = rows_of(model, 1, rows=60)
    sigma = x.T @ x / len(x)
    lams, gcv, *_ = gcv_curve(sigma, U, M, model[2], rows=len(x))
    best = int(torch.argmin(gcv))
    assert 0 < best < len(lams) - 1  # an interior minimum: the argmin is a real choice
    assert gcv[best] < gcv[0] and gcv[best] < gcv[-1]
    torch.testing.assert_close(gcv_solver(model[2], len(x), 0)(sigma, U, M), ridge(sigma, lams[best]),
                               rtol=1e-8, atol=1e-10)


def test_few_rows_get_nearly_the_best_ridge_on_fresh_rows() -> None:
    """48 rows for 40 kept channels, 10 layers: on 20,000 fresh rows of the same layer, GCV's ridge is within
    10 % of the grid's best in at least 8 and better than almost none in all; 4,000 rows get a smaller ridge."""
    near_best, beats_tiny, chosen_few, chosen_many = 0, 0, [], []
    for seed in range(10):
        model = layer_model(seed)
        w_m = model[2]
        fresh = rows_of(model, 99, rows=20000)

        def held_out(q: torch.Tensor) -> float:
            return float((fresh[:, M] @ w_m - fresh[:, U] @ q @ w_m).pow(2).mean())

        x = rows_of(model, seed, rows=48)
        sigma = x.T @ x / len(x)
        lams, gcv, *_ = gcv_curve(sigma, U, M, w_m, rows=len(x))
        errors = [held_out(ridge(sigma, lam)) for lam in lams]
        chosen = held_out(gcv_solver(w_m, len(x), 0)(sigma, U, M))
        near_best += chosen <= 1.1 * min(errors)
        beats_tiny += chosen < errors[0]
        chosen_few.append(int(torch.argmin(gcv)))
        x = rows_of(model, seed, rows=4000)
        chosen_many.append(int(torch.argmin(gcv_curve(x.T @ x / len(x), U, M, w_m, rows=len(x)).gcv)))
    assert near_best >= 8 and beats_tiny == 10
    assert sorted(chosen_many)[5] < sorted(chosen_few)[5]
