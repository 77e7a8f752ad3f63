"""Running sufficient statistics over token rows, accumulated in float64 and never storing the rows."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

# The statistics a criterion, reconstruction or recovery may declare in ``needs``: the vocabulary that
# calibration knows how to gather. Registration refuses any other name.
STATISTICS: dict[str, str] = {
    "level2_diag": "per-channel mean and sum of squares of the level-2 input (pruned path)",
    "level2_in": "full Gram of the level-2 input (pruned path)",
    "level1_in": "Gram of the module input after its norm (pruned path)",
    "level2_folds": "full Gram of the level-2 input, also per fold of the calibration sequences (cross-validation)",
    "level2_cross": "level-2 input paired with the dense path's (two-path)",
    "level1_cross": "module input paired with the dense path's (two-path)",
    "head_divergence": "(heads x heads) mean Jensen-Shannon divergence of attention rows (eager attention)",
}
TWO_PATH_STATISTICS = frozenset({"level2_cross", "level1_cross"})
CV_FOLDS = 4  # folds of ``level2_folds``: sequence i (or, for rows without a sequence axis, batch i) goes to i mod 4


def declared_statistics(names: Iterable[str], owner: str) -> frozenset[str]:
    """``names`` as a frozenset, after checking each is in :data:`STATISTICS` (``owner`` names the culprit)."""
    needs = frozenset(names)
    unknown = sorted(needs - STATISTICS.keys())
    if unknown:
        raise ValueError(f"{owner} needs unknown statistics {unknown}; known: {', '.join(sorted(STATISTICS))}")
    return needs


@dataclass
class Moments:
    """Count, sum and Gram of the rows of X: ``n``, ``s = X^T 1``, ``G = X^T X`` (float64).

    ``diagonal_only`` keeps ``diag(G)`` alone (``squares``, no ``gram``): per-channel moments for criteria
    that read nothing else, at a fraction of the cost of a wide Gram. ``folds`` (see :meth:`folded`) also keep
    the moments of each fold of the rows, for cross-validation; the totals are their sums, at no extra Gram.
    """

    n: int = 0
    sum: torch.Tensor | None = None
    gram: torch.Tensor | None = None
    diagonal_only: bool = False
    squares: torch.Tensor | None = None
    folds: list[Moments] | None = None
    position: int = 0  # sequences (or batches of 2-D rows) seen: where the next one's fold starts

    @classmethod
    def folded(cls, count: int = CV_FOLDS) -> Moments:
        """Moments that also keep ``count`` folds: a batch's sequence i goes to fold (position + i) mod count;
        rows without a sequence axis (a mixture expert's routed tokens) go whole, batch by batch."""
        return cls(folds=[cls() for _ in range(count)])

    def update(self, rows: torch.Tensor) -> None:
        """Add a (..., d) batch of rows; NaN or Inf activations are a hard error (the model is broken).

        One batch's Gram is formed in float32 (a few thousand rows: rounding ~1e-7 relative, far below
        the ridge) and the running sums are kept in float64, so long calibration runs do not drift.
        """
        if self.folds is None:
            self._add(*self._batch(rows))
            return
        sequences = rows.reshape(-1, *rows.shape[-2:]) if rows.dim() >= 3 else rows.unsqueeze(0)
        count = len(self.folds)
        for offset in range(min(count, sequences.shape[0])):
            fold = self.folds[(self.position + offset) % count]
            batch = self._batch(sequences[offset::count])
            fold._add(*batch)
            self._add(*batch)
        self.position += sequences.shape[0]

    def _batch(self, rows: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
        """Row count, column sums and Gram (or squares) of one batch, checked finite."""
        x = rows.reshape(-1, rows.shape[-1])
        if not torch.isfinite(x).all():
            raise FloatingPointError(
                "NaN or Inf in calibration activations: the model overflows on the calibration text. "
                "Load it in float32 (or bfloat16 instead of float16), or check the input model's weights."
            )
        x = x.to(torch.float32) if x.dtype != torch.float64 else x
        batch_squares = (x * x).sum(0) if self.diagonal_only else x.T @ x
        if not torch.isfinite(batch_squares).all():
            raise FloatingPointError(
                f"calibration activations as large as {x.abs().max().item():.3g} overflow float32 when squared: "
                "the model is numerically broken on the calibration text. Check the input model's weights."
            )
        return x.shape[0], x.sum(0, dtype=torch.float64), batch_squares.to(torch.float64)

    def _add(self, n: int, total: torch.Tensor, squares: torch.Tensor) -> None:
        if self.sum is None:
            self.sum = torch.zeros_like(total)
            if self.diagonal_only:
                self.squares = torch.zeros_like(squares)
            else:
                self.gram = torch.zeros_like(squares)
        self.n += n
        self.sum += total
        if self.diagonal_only:
            self.squares += squares
        else:
            self.gram += squares

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.n

    @property
    def square_sum(self) -> torch.Tensor:
        """diag(G): each channel's sum of squares (full or diagonal-only moments)."""
        return self.squares if self.diagonal_only else self.gram.diagonal()

    @property
    def variance(self) -> torch.Tensor:
        """Each channel's population variance, diag(Σ)."""
        return self.square_sum / self.n - self.mean.pow(2)

    def _full(self) -> torch.Tensor:
        if self.diagonal_only:
            raise RuntimeError("only the diagonal of these moments was gathered; declare the full statistic "
                               "(e.g. needs={'level2_in'}) to read the Gram")
        return self.gram

    @property
    def second_moment(self) -> torch.Tensor:
        """E[x x^T] (uncentred)."""
        return self._full() / self.n

    @property
    def covariance(self) -> torch.Tensor:
        """Population covariance Σ = G/n − μ μ^T."""
        mu = self.mean
        return self._full() / self.n - torch.outer(mu, mu)


@dataclass
class CrossMoments:
    """Statistics of two aligned row sets: the pruned path X̂ and the dense path X of the same tokens.

    Holds the Moments of X̂ and of X and the cross-Gram ``C = X̂^T X``: enough for any ridge regression of
    a dense-path linear output on pruned-path inputs, and for the error of its fit (:func:`dense_output_error`).
    """

    pruned: Moments = field(default_factory=Moments)
    dense: Moments = field(default_factory=Moments)
    cross: torch.Tensor | None = None

    def update(self, pruned_rows: torch.Tensor, dense_rows: torch.Tensor) -> None:
        self.pruned.update(pruned_rows)
        self.dense.update(dense_rows)
        y = dense_rows.reshape(-1, dense_rows.shape[-1])
        x = pruned_rows.reshape(-1, pruned_rows.shape[-1])
        y = y.to(torch.float32) if y.dtype != torch.float64 else y
        x = x.to(y.dtype)
        if self.cross is None:
            self.cross = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64, device=y.device)
        self.cross += (x.T @ y).to(torch.float64)

    @property
    def dense_mean(self) -> torch.Tensor:
        return self.dense.mean

    @property
    def cross_covariance(self) -> torch.Tensor:
        """Cov(X̂, X) = C/n − μ̂ μ^T."""
        return self.cross / self.pruned.n - torch.outer(self.pruned.mean, self.dense_mean)


def dense_output_error(cross: CrossMoments, weight: torch.Tensor, bias: torch.Tensor | None,
                       dense_weight: torch.Tensor, dense_bias: torch.Tensor | None) -> float:
    """``E||x̂ W + b − (x W_d + b_d)||² / E||x W_d + b_d||²`` over the rows of ``cross``: how far a layer on
    the pruned path is from the dense model's same layer (weights (in, out), float64; no bias: zero)."""
    device = cross.cross.device
    w, w_d = weight.to(device, torch.float64), dense_weight.to(device, torch.float64)
    b = torch.zeros(w.shape[1], dtype=torch.float64, device=device) if bias is None else bias.to(device, torch.float64)
    b_d = torch.zeros_like(b) if dense_bias is None else dense_bias.to(device, torch.float64)
    n, mean_p, mean_d = cross.pruned.n, cross.pruned.mean, cross.dense.mean
    pruned_energy = (w * (cross.pruned.gram @ w)).sum() / n + 2 * (mean_p @ w) @ b + b @ b
    dense_energy = (w_d * (cross.dense.gram @ w_d)).sum() / n + 2 * (mean_d @ w_d) @ b_d + b_d @ b_d
    product = (w * (cross.cross @ w_d)).sum() / n + (mean_p @ w) @ b_d + (mean_d @ w_d) @ b + b @ b_d
    return float((pruned_energy - 2 * product + dense_energy).clamp(min=0.0) / max(float(dense_energy), 1e-30))


@dataclass
class ModuleStats:
    """Everything calibration gathered for one depth-2 module; fields stay None when no method asked.

    - ``level2_in``: the level-2 layer's input on the pruned path (full width, before pruning).
    - ``level1_in``: the module's input (after the norm) on the pruned path.
    - ``level2_cross`` / ``level1_cross``: the same rows paired with the dense path (two-path methods).
    - ``head_divergence``: (heads × heads) mean Jensen–Shannon divergence of attention rows.
    - ``experts``: a mixture-of-experts FFN's statistics, one per expert (global allocation's scoring pass).
    """

    level2_in: Moments = field(default_factory=Moments)
    level1_in: Moments | None = None
    level2_cross: CrossMoments | None = None
    level1_cross: CrossMoments | None = None
    head_divergence: torch.Tensor | None = None
    experts: list[ModuleStats] = field(default_factory=list)  # a mixture's, per expert (global scoring)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (natural log) over the last dimension; zero probabilities contribute 0."""
    return -torch.special.xlogy(p, p).sum(-1)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Textbook Jensen–Shannon divergence over the last dimension, natural log, in [0, ln 2]."""
    p, q = p.to(torch.float64), q.to(torch.float64)
    js = entropy(0.5 * (p + q)) - 0.5 * (entropy(p) + entropy(q))
    return js.clamp(0.0, math.log(2.0))  # rounding only


def head_divergence_sum(probs: torch.Tensor, max_elements: int = 1 << 24) -> torch.Tensor:
    """(H, H) sum over all query rows of the JS divergence between the heads' attention rows.

    ``probs`` is (batch, heads, queries, keys). Query rows go in chunks of about ``max_elements``
    (rows × heads × keys, float64) so no (heads × heads × rows × keys) tensor is ever built.
    """
    heads, keys = probs.shape[1], probs.shape[-1]
    rows = probs.transpose(0, 1).reshape(heads, -1, keys)  # (H, batch·queries, keys)
    chunk = max(1, max_elements // (heads * keys))
    total = torch.zeros(heads, heads, dtype=torch.float64, device=probs.device)
    for start in range(0, rows.shape[1], chunk):
        p = rows[:, start : start + chunk].to(torch.float64)
        own = entropy(p)  # (H, rows), shared by every pair
        for i in range(heads):
            js = entropy(0.5 * (p[i : i + 1] + p)) - 0.5 * (own[i : i + 1] + own)
            total[i] += js.clamp(0.0, math.log(2.0)).sum(-1)
    return total
