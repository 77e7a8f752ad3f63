"""Held-out rows: calibration text that no fit sees, on which every layer's errors are measured again.

A reconstruction or recovery fitted to its own rows always lowers the error on them; on rows it never saw
the error may rise instead (a least-squares fit on n rows of a d-wide input inflates the held-out error
by about 1 + d/(n − d)). The record keeps both, so overfitting shows as the gap between them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from reprune.adapters import Depth2Module
from reprune.calibration import RowSet
from reprune.reconstruction import ReconstructionInput, relative_errors
from reprune.stats import CrossMoments, dense_output_error


@dataclass(frozen=True)
class HeldOutErrors:
    """One module's errors on the held-out rows."""

    error_none: float  # plain pruning, relative to the unpruned module's output (as on the calibration rows)
    error: float  # after the reconstruction
    recovery_error: float | None  # the unpruned module against the dense model's (None: no dense path)


def _against_dense(module: Depth2Module, rows: RowSet, cross: CrossMoments) -> float:
    """The module's level-2 output error against the dense path's same layer, over the rows of ``cross``."""
    return dense_output_error(cross, *module.level2.as_target(), *rows.dense_module(module.kind).level2.as_target())


def heldout_recovery_error(module: Depth2Module, rows: RowSet) -> float:
    """The module's level-2 output error against the dense model's on the held-out rows, as it is now."""
    return _against_dense(module, rows, rows.stats(module, frozenset({"level2_cross"})).level2_cross)


def heldout_errors(module: Depth2Module, rows: RowSet, fitted: ReconstructionInput, weight: torch.Tensor,
                   bias: torch.Tensor | None) -> HeldOutErrors:
    """Errors on the held-out ``rows`` of the reconstruction that ``fitted`` (the scoring rows' input) gave
    as ``weight``/``bias``; the pass also fills the rows' residual tails, so it comes last before surgery."""
    two_path = rows.dense is not None
    stats = rows.stats(module, frozenset({"level2_cross" if two_path else "level2_in"}))
    error_none, error = relative_errors(replace(fitted, stats=stats), weight, bias)
    recovery_error = None
    if two_path:
        recovery_error = _against_dense(module, rows, stats.level2_cross)
    return HeldOutErrors(error_none, error, recovery_error)
