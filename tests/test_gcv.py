"""``liar-gcv``: the spectral GCV curve equals its definition computed directly, the solver returns the ridge
solution at the λ it picked, and on a layer with few rows it picks a ridge that generalises better than
almost none (and a smaller one when rows are many)."""

from __future__ import annotations

import torch

from reprune.reconstruction.gcv import gcv_curve, gcv_solver


def regression(seed: int, rows: int, kept: int = 40, removed: int = 8, outputs: int = 5, noise: float = 1.0):
    """Removed channels = kept channels · A + noise; correlated kept channels; a level-2 weight for the removed."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(kept, kept, generator=g, dtype=torch.float64) * 0.3 + torch.eye(kept, dtype=torch.float64)
    x_u = torch.randn(rows, kept, generator=g, dtype=torch.float64) @ mixing
    a = torch.randn(kept, removed, generator=g, dtype=torch.float64) * 0.2
    x_m = x_u @ a + noise * torch.randn(rows, removed, generator=g, dtype=torch.float64)
    w_m = torch.randn(removed, outputs, generator=g, dtype=torch.float64)
    x = torch.cat([x_u, x_m], 1)
    return x, w_m, torch.arange(kept), torch.arange(kept, kept + removed)


def second_moment(x: torch.Tensor) -> torch.Tensor:
    return x.T @ x / len(x)


def test_curve_equals_its_definition() -> None:
    x, w_m, u, m = regression(0, rows=120)
    sigma = second_moment(x)
    lams, gcv, _, _ = gcv_curve(sigma, u, m, w_m, rows=len(x))
    for lam, value in zip(lams[::7], gcv[::7]):
        q = torch.linalg.solve(sigma[u][:, u] + lam * torch.eye(len(u), dtype=torch.float64), sigma[u][:, m])
        residual = x[:, m] @ w_m - x[:, u] @ q @ w_m
        rss = residual.pow(2).sum() / len(x)
        hat = x[:, u] @ torch.linalg.solve(x[:, u].T @ x[:, u] + len(x) * lam * torch.eye(len(u), dtype=torch.float64),
                                           x[:, u].T)
        expected = rss / (1 - torch.trace(hat) / len(x)) ** 2
        torch.testing.assert_close(value, expected, rtol=1e-9, atol=0.0)


def test_solver_is_the_ridge_solution_at_the_chosen_lambda() -> None:
    x, w_m, u, m = regression(1, rows=60)
    sigma = second_moment(x)
    q = gcv_solver(w_m, len(x), 0)(sigma, u, m)
    lams, gcv, _, _ = gcv_curve(sigma, u, m, w_m, rows=len(x))
    lam = lams[int(torch.argmin(gcv))]
    expected = torch.linalg.solve(sigma[u][:, u] + lam * torch.eye(len(u), dtype=torch.float64), sigma[u][:, m])
    torch.testing.assert_close(q, expected, rtol=1e-8, atol=1e-10)


def held_out_error(q: torch.Tensor, w_m: torch.Tensor, u: torch.Tensor, m: torch.Tensor) -> float:
    x, _, _, _ = regression(99, rows=20000)
    return float((x[:, m] @ w_m - x[:, u] @ q @ w_m).pow(2).mean())


def test_few_rows_get_a_ridge_that_generalises_better_than_almost_none() -> None:
    """48 rows for 40 kept channels: least squares overfits; GCV's ridge beats the grid's smallest on fresh rows
    in most of 10 draws, never by much less, and many rows get a smaller ridge."""
    wins, chosen_few, chosen_many = 0, [], []
    for seed in range(10):
        x, w_m, u, m = regression(seed, rows=48)
        sigma = second_moment(x)
        q = gcv_solver(w_m, len(x), 0)(sigma, u, m)
        lams, gcv, _, _ = gcv_curve(sigma, u, m, w_m, rows=len(x))
        chosen_few.append(float(lams[int(torch.argmin(gcv))] / lams[0]))
        tiny = torch.linalg.solve(sigma[u][:, u] + lams[0] * torch.eye(len(u), dtype=torch.float64), sigma[u][:, m])
        wins += held_out_error(q, w_m, u, m) < held_out_error(tiny, w_m, u, m)
        x, w_m, u, m = regression(seed, rows=4000)
        lams, gcv, _, _ = gcv_curve(second_moment(x), u, m, w_m, rows=len(x))
        chosen_many.append(float(lams[int(torch.argmin(gcv))] / lams[0]))
    assert wins >= 8
    assert sorted(chosen_many)[5] < sorted(chosen_few)[5]
