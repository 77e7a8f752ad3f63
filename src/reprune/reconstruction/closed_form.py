"""none, bias (FLAP), liar (least-squares interpolation), dense-target and liar-dense reconstructions."""

from __future__ import annotations

from collections.abc import Callable

import torch

from reprune.linalg import solve_ridge
from reprune.reconstruction import ReconstructionInput, Result, register
from reprune.stats import CrossMoments


@register("none", description="plain pruning: drop the removed columns")
def no_reconstruction(inp: ReconstructionInput) -> Result:
    bias = inp.module.level2.bias()
    return inp.weight[inp.kept], None if bias is None else inp.bias


@register("bias", needs={"level2_in"}, description="FLAP's compensation: b' = b + W_mᵀ μ_m")
def bias_compensation(inp: ReconstructionInput) -> Result:
    """Without an intercept there is nothing to compensate with: plain pruning."""
    if not inp.intercept:
        return no_reconstruction(inp)
    mu = inp.stats.level2_in.mean
    w = inp.weight
    return w[inp.kept], inp.bias + w[inp.removed].T @ mu[inp.removed]


QSolver = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (Σ, kept, removed) -> Q


def liar_interpolation(inp: ReconstructionInput, solve: QSolver | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """LIAR's Q and c: X_m ≈ X_u Q + 1 cᵀ by ridge least squares on centred statistics; without an intercept
    X_m ≈ X_u Q on the uncentred second moments E[x xᵀ], and no c. ``solve`` replaces the fixed-α ridge."""
    moments = inp.stats.level2_in
    gram = moments.covariance if inp.intercept else moments.second_moment
    u, m = inp.kept.to(gram.device), inp.removed.to(gram.device)
    if solve is None:
        q = solve_ridge(gram[u][:, u], gram[u][:, m], inp.alpha, where=inp.module.name)
    else:
        q = solve(gram, u, m)
    if not inp.intercept:
        return q, None
    mu = moments.mean
    return q, mu[m] - q.T @ mu[u]


def liar_weights(inp: ReconstructionInput, solve: QSolver | None = None) -> Result:
    w = inp.weight
    bias = inp.bias if inp.intercept else None  # no intercept: the layer has no bias and gets none
    if inp.removed.numel() == 0:
        return w[inp.kept], bias
    q, c = liar_interpolation(inp, solve)
    w_m = w[inp.removed]
    return w[inp.kept] + q @ w_m, None if c is None else inp.bias + w_m.T @ c


@register("liar", needs={"level2_in"}, description="LIAR: W_u' = W_u + Q W_m, b' = b + W_mᵀ c (least-squares interpolation)")
def liar(inp: ReconstructionInput) -> Result:
    return liar_weights(inp)


def ridge_to_dense(
    cross: CrossMoments,
    kept: torch.Tensor | None,
    dense_weight: torch.Tensor,
    dense_bias: torch.Tensor | None,
    prior: torch.Tensor,
    alpha: float,
    intercept: bool,
    where: str,
) -> Result:
    """Ridge fit of a dense-path linear output on (kept columns of) pruned-path inputs.

    Minimises ``||X̂_u W + 1bᵀ − (X W_d + 1 b_dᵀ)||² + λ n ||W − prior||²``. With ``intercept`` the
    statistics are centred and a bias is fitted; without, no bias is fitted (GOA's level-1 form).
    """
    device = cross.cross.device
    u = torch.arange(cross.cross.shape[0], device=device) if kept is None else kept.to(device)
    dense_w = dense_weight.to(device)
    dense_b = torch.zeros(dense_w.shape[1], dtype=torch.float64, device=device) if dense_bias is None else dense_bias.to(device)
    prior = prior.to(device)
    moments = cross.pruned
    if intercept:
        gram = moments.covariance[u][:, u]
        target = cross.cross_covariance[u] @ dense_w
    else:
        gram = moments.second_moment[u][:, u]
        target = (cross.cross[u] / moments.n) @ dense_w + torch.outer(moments.mean[u], dense_b)
    delta = solve_ridge(gram, target - gram @ prior, alpha, where=where)
    weight = prior + delta
    if not intercept:
        return weight, None
    bias = cross.dense_mean @ dense_w + dense_b - moments.mean[u] @ weight
    return weight, bias


def fit_dense_target(inp: ReconstructionInput, prior: torch.Tensor) -> Result:
    """Fit the dense model's level-2 output from the kept pruned-path channels, shrunk toward ``prior``.

    The intercept (where allowed) absorbs mean shifts and the ridge falls back on ``prior`` where the data say
    little.
    """
    cross = inp.stats.level2_cross
    if cross is None:
        raise RuntimeError(f"{inp.module.name}: dense-target reconstruction needs the dense path statistics")
    dense_weight, dense_bias = inp.dense_target
    return ridge_to_dense(cross, inp.kept, dense_weight, dense_bias, prior, inp.alpha, inp.intercept,
                          inp.module.name)


@register("dense-target", needs={"level2_cross"},
          description="fit the dense model's output from the kept pruned-path channels (beyond the paper)")
def dense_target(inp: ReconstructionInput) -> Result:
    return fit_dense_target(inp, prior=inp.weight[inp.kept])


@register("liar-dense", needs={"level2_cross"},
          description="dense-target fit shrunk toward the LIAR solution instead of the pruned weights")
def liar_dense(inp: ReconstructionInput) -> Result:
    prior, _ = liar_weights(inp)
    return fit_dense_target(inp, prior=prior)
