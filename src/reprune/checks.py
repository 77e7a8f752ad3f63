"""Checks of a pruning run's inputs that cost little, made before any calibration work."""

from __future__ import annotations

import torch
from torch import nn


def check_finite_weights(model: nn.Module) -> None:
    """A NaN/Inf weight is a corrupted model, and it does not always show in the activations (PyTorch's
    causal SDPA turns a NaN query row into zeros), so it is caught here, by name, before any work."""
    for name, parameter in model.named_parameters():
        if not torch.isfinite(parameter).all():
            raise FloatingPointError(
                f"{name} holds NaN or Inf values: the input model is corrupted (or was saved after an overflow). "
                "Reload it from a good checkpoint before pruning."
            )


def check_calibration_ids(calibration_ids: torch.Tensor) -> None:
    if calibration_ids.ndim != 2 or calibration_ids.shape[0] == 0:
        raise ValueError(f"calibration_ids must be a non-empty (samples, tokens) tensor, got {tuple(calibration_ids.shape)}")
