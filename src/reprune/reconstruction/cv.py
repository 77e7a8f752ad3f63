"""``liar-cv``: LIAR with each layer's ridge chosen by cross-validation over the calibration sequences.

LIAR's Q = (Σ_uu + λI)⁻¹ Σ_um is fitted on tokens that are not independent: the tokens of one sequence share
its topic, so a fit can follow one document's quirks. GCV (``liar-gcv``) counts every token as a free row and
picks ridges too small; holding out whole sequences does not. The calibration sequences fall into
:data:`reprune.stats.CV_FOLDS` folds (``level2_folds``); for each fold k, Q is fitted on the others and scored
by the output error it leaves on fold k,

    e_k(λ) = tr(W_mᵀ (M_mm − 2 M_mu Q + Qᵀ M_uu Q) W_m),

M the fold's second moments about the training mean (without an intercept: uncentred, as LIAR's fit). With
the training Σ_uu = V S Vᵀ, P = Vᵀ Σ_um W_m and d = 1 / (S + λ), Q W_m = V diag(d) P, so one
eigendecomposition per fold prices every λ of :data:`ALPHAS`: e_k = c − 2 Σᵢ dᵢ aᵢ + dᵀ H d with
aᵢ = ⟨(Vᵀ M_um W_m)ᵢ, Pᵢ⟩ and H = (Vᵀ M_uu V) ∘ (P Pᵀ). The ridge with the least row-weighted error over
the folds refits Q on all rows. Fewer than two folds with rows (one short batch): LIAR's fixed α.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from reprune.reconstruction import ReconstructionInput, Result, register
from reprune.reconstruction.closed_form import liar_weights
from reprune.stats import Moments

ALPHAS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0)  # λ / mean diag Σ_uu, the ridges compared


def fold_errors(moments: Moments, kept: torch.Tensor, removed: torch.Tensor, w_m: torch.Tensor,
                intercept: bool) -> torch.Tensor:
    """Held-out output error summed over the folds' rows, one entry per ridge of :data:`ALPHAS`.

    ``moments``: folded moments of the level-2 input; ``w_m``: the removed channels' weights (|m|, out)."""
    folds = [fold for fold in moments.folds or [] if fold.n]
    device = moments.gram.device
    alphas = torch.tensor(ALPHAS, dtype=torch.float64, device=device)
    total = torch.zeros_like(alphas)
    u, m = kept.to(device), removed.to(device)
    w_m = w_m.to(device, torch.float64)
    for fold in folds:
        rows = moments.n - fold.n
        train = (moments.gram - fold.gram) / rows
        held = fold.gram / fold.n
        if intercept:
            mean, fold_mean = (moments.sum - fold.sum) / rows, fold.sum / fold.n
            train = train - torch.outer(mean, mean)
            held = held - torch.outer(fold_mean, mean) - torch.outer(mean, fold_mean) + torch.outer(mean, mean)
        s, v = torch.linalg.eigh(train[u][:, u])
        s = s.clamp_min(0.0)
        p = v.T @ (train[u][:, m] @ w_m)
        a = ((v.T @ (held[u][:, m] @ w_m)) * p).sum(1)
        h = (v.T @ held[u][:, u] @ v) * (p @ p.T)
        constant = (w_m * (held[m][:, m] @ w_m)).sum()
        d = 1.0 / (s.unsqueeze(0) + alphas.unsqueeze(1) * s.mean().clamp_min(1e-30))  # (ridges, |u|)
        total += fold.n * (constant - 2.0 * d @ a + ((d @ h) * d).sum(1))
    return total


def chosen_alpha(inp: ReconstructionInput) -> float:
    """The ridge of :data:`ALPHAS` with the least held-out error; ``inp.alpha`` when fewer than two folds
    have rows."""
    moments = inp.stats.level2_in
    if sum(1 for fold in moments.folds or [] if fold.n) < 2 or inp.removed.numel() == 0:
        return inp.alpha
    errors = fold_errors(moments, inp.kept, inp.removed, inp.weight[inp.removed], inp.intercept)
    return ALPHAS[int(torch.argmin(errors))]


@register("liar-cv", needs={"level2_folds"},
          description="LIAR with each layer's ridge chosen by cross-validation over calibration sequences")
def liar_cv(inp: ReconstructionInput) -> Result:
    return liar_weights(replace(inp, alpha=chosen_alpha(inp)))
