"""Ridge-regularised solves in float64 with the retry rule of METHODS.md."""

from __future__ import annotations

import warnings

import torch

MAX_RETRIES = 6
MIN_RETRY_ALPHA = 1e-10  # first retry when the caller asked for no ridge at all (α = 0)
# Cholesky pivots d_i = L_ii² lie in [λ_min, λ_max], so max d / min d bounds the condition number from
# below. Above 1e12 a float64 solve keeps fewer than ~4 correct digits: treat it like a failed factorisation.
MAX_PIVOT_SPREAD = 1e12


class IllConditionedWarning(UserWarning):
    """A solve needed more regularisation than asked for; the result is finite but less exact."""


def solve_ridge(gram: torch.Tensor, rhs: torch.Tensor, alpha: float, where: str) -> torch.Tensor:
    """Solve ``(A + λI) X = B`` with ``λ = α · mean(diag A)`` by Cholesky, retrying with 10× α on failure.

    A factorisation whose pivots reveal a nearly singular system (spread above ``MAX_PIVOT_SPREAD``)
    counts as a failure too: Cholesky accepts it, but the solution would be large and meaningless.
    ``where`` names the layer in warnings, so a user can see which layer was ill-conditioned.
    """
    a = gram.to(torch.float64)
    b = rhs.to(torch.float64)
    if a.numel() == 0:
        return torch.zeros(0, b.shape[-1], dtype=torch.float64, device=b.device)
    scale = a.diagonal().mean().clamp_min(0.0).item()
    if scale == 0.0 or not torch.isfinite(a).all():
        scale = 1.0  # all-dead inputs: any λ > 0 gives the (zero) minimum-norm answer
    current = alpha
    for attempt in range(MAX_RETRIES):
        lam = current * scale
        system = a + lam * torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
        factor, info = torch.linalg.cholesky_ex(system)
        pivots = factor.diagonal().square()
        if int(info) == 0 and pivots.max() <= MAX_PIVOT_SPREAD * pivots.min():
            solution = torch.cholesky_solve(b, factor)
            if torch.isfinite(solution).all():
                if attempt > 0:
                    warnings.warn(
                        f"{where}: statistics are ill-conditioned; solved with ridge α={current:g} "
                        f"instead of {alpha:g}",
                        IllConditionedWarning,
                        stacklevel=2,
                    )
                return solution
        current = current * 10.0 if current > 0 else MIN_RETRY_ALPHA  # 10 × 0 would retry the same system
    raise FloatingPointError(
        f"{where}: the least-squares system could not be solved even with ridge α={current:g}; "
        "the calibration statistics are degenerate (check for NaN weights or an empty calibration set)."
    )
