"""``liar-gcv``: LIAR with each layer's ridge chosen by generalised cross-validation instead of a fixed α.

LIAR regresses the removed channels on the kept ones, Q = (Σ_uu + λI)⁻¹ Σ_um, and what matters is the
output error that leaves, tr(W_mᵀ (Σ_mm − 2 Σ_mu Q + Qᵀ Σ_uu Q) W_m). On the n calibration rows that error
is optimistic, the more so the more kept channels there are per row; GCV corrects it by the effective
degrees of freedom df(λ) = Σᵢ sᵢ / (sᵢ + λ) (sᵢ: eigenvalues of Σ_uu, plus one for the intercept):

    GCV(λ) = RSS_W(λ) / (1 − df(λ) / n)²

With Σ_uu = V S Vᵀ and bᵢ = ‖(Vᵀ Σ_um W_m)ᵢ‖², RSS_W(λ) = tr(W_mᵀ Σ_mm W_m) − Σᵢ bᵢ (2/(sᵢ+λ) − sᵢ/(sᵢ+λ)²),
so one eigendecomposition prices every λ of the grid (:data:`ALPHAS` times the mean eigenvalue). GCV treats
the rows as independent; tokens of one sequence are not, so it errs toward too small a ridge.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from reprune.reconstruction import ReconstructionInput, Result, register
from reprune.reconstruction.closed_form import QSolver, liar_weights

ALPHAS = torch.logspace(-6, 1, 29, dtype=torch.float64)  # λ / mean eigenvalue of Σ_uu, the grid GCV searches


class GcvCurve(NamedTuple):
    """GCV over the λ grid, with the eigendecomposition that priced it (reused for Q)."""

    lams: torch.Tensor
    gcv: torch.Tensor
    eigenvalues: torch.Tensor  # S of Σ_uu = V S Vᵀ
    eigenvectors: torch.Tensor  # V
    projected: torch.Tensor  # Vᵀ Σ_um

    def q_at(self, lam: torch.Tensor) -> torch.Tensor:
        """Q = V (S + λ)⁻¹ Vᵀ Σ_um."""
        return self.eigenvectors @ (self.projected / (self.eigenvalues + lam).unsqueeze(1))


def gcv_curve(sigma: torch.Tensor, kept: torch.Tensor, removed: torch.Tensor, w_m: torch.Tensor, rows: int,
              extra_df: int = 0) -> GcvCurve:
    """GCV(λ) of the output-weighted regression of X_m on X_u."""
    s, v = torch.linalg.eigh(sigma[kept][:, kept])
    s = s.clamp_min(0.0)
    projected = v.T @ sigma[kept][:, removed]
    b = (projected @ w_m).pow(2).sum(1)
    energy = (w_m * (sigma[removed][:, removed] @ w_m)).sum()
    lams = ALPHAS.to(s.device) * s.mean().clamp_min(1e-30)
    shrink = s.unsqueeze(0) + lams.unsqueeze(1)  # (grid, |u|)
    rss = energy - (b * (2.0 / shrink - s / shrink.pow(2))).sum(1)
    df = (s / shrink).sum(1) + extra_df
    dof_left = 1.0 - df / rows
    gcv = torch.where(dof_left > 0, rss.clamp_min(0.0) / dof_left.clamp_min(1e-12).pow(2), torch.inf)
    return GcvCurve(lams, gcv, s, v, projected)


def gcv_solver(w_m: torch.Tensor, rows: int, extra_df: int) -> QSolver:
    """A Q solver for :func:`liar_weights`: the ridge of the grid with the least GCV, then Q from the same
    eigendecomposition."""

    def solve(sigma: torch.Tensor, kept: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
        curve = gcv_curve(sigma, kept, removed, w_m.to(sigma.device), rows, extra_df)
        return curve.q_at(curve.lams[int(torch.argmin(curve.gcv))])

    return solve


@register("liar-gcv", needs={"level2_in"},
          description="LIAR with each layer's ridge chosen by generalised cross-validation (one eigendecomposition)")
def liar_gcv(inp: ReconstructionInput) -> Result:
    w_m = inp.weight[inp.removed]
    return liar_weights(inp, gcv_solver(w_m, inp.stats.level2_in.n, int(inp.intercept)))
