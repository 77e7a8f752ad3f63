"""Reconstruction registry: given the kept/removed inner channels of a level-2 layer and calibration
statistics, return the layer's new weight and bias in closed form (no gradients).

A reconstruction is one small function registered with the statistics it needs; METHODS.md's notation
is used inside (``W`` is (in, out), the transpose of ``nn.Linear.weight``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from reprune.adapters import Depth2Module
from reprune.stats import Moments, ModuleStats


@dataclass
class ReconstructionInput:
    """What a reconstruction sees for one level-2 layer."""

    module: Depth2Module
    kept: torch.Tensor  # inner channels kept (level-2 input columns), sorted
    removed: torch.Tensor  # inner channels removed
    stats: ModuleStats
    alpha: float
    dense_weight: torch.Tensor | None = None  # dense-path level-2 weight, (in, out), float64
    dense_bias: torch.Tensor | None = None

    @property
    def weight(self) -> torch.Tensor:
        """Current level-2 weight W, (in, out), float64, on the module's device (where the statistics are)."""
        return self.module.level2.weight().detach().T.to(torch.float64)

    @property
    def bias(self) -> torch.Tensor:
        b = self.module.level2.bias()
        out = self.module.level2.out_features
        device = self.module.level2.weight().device
        return torch.zeros(out, dtype=torch.float64, device=device) if b is None else b.detach().to(device, torch.float64)


Result = tuple[torch.Tensor, torch.Tensor | None]  # new W_u (|u|, out) and bias (out) or None
ReconstructFn = Callable[[ReconstructionInput], Result]


@dataclass(frozen=True)
class Reconstruction:
    name: str
    fn: ReconstructFn
    needs: frozenset[str] = field(default_factory=frozenset)
    description: str = ""


RECONSTRUCTIONS: dict[str, Reconstruction] = {}


def register(name: str, needs: set[str] | None = None, description: str = "") -> Callable[[ReconstructFn], ReconstructFn]:
    def wrap(fn: ReconstructFn) -> ReconstructFn:
        RECONSTRUCTIONS[name] = Reconstruction(name, fn, frozenset(needs or ()), description or (fn.__doc__ or "").strip())
        return fn

    return wrap


def get_reconstruction(name: str) -> Reconstruction:
    if name not in RECONSTRUCTIONS:
        raise ValueError(f"Unknown reconstruction {name!r}; choose one of: {', '.join(sorted(RECONSTRUCTIONS))}")
    return RECONSTRUCTIONS[name]


def output_error(moments: Moments, full_weight: torch.Tensor, full_bias: torch.Tensor, kept: torch.Tensor,
                 new_weight: torch.Tensor, new_bias: torch.Tensor | None) -> float:
    """Mean squared output error ``E||x W + b − (x_u W' + b')||²`` over the calibration rows, from moments.

    Only the input channels whose weights changed enter the quadratic form, so plain pruning and bias
    compensation (which leave the kept rows alone) cost ``|removed|²`` instead of ``d²`` per output.
    """
    diff = full_weight.clone()
    diff[kept] -= new_weight
    changed = torch.nonzero(diff.ne(0).any(dim=1)).reshape(-1)
    diff = diff[changed]
    delta = full_bias - (new_bias if new_bias is not None else torch.zeros_like(full_bias))
    n = moments.n
    quad = (diff * (moments.gram[changed][:, changed] @ diff)).sum()
    linear = 2.0 * (moments.sum[changed] @ diff) @ delta
    return float((quad + linear) / n + delta.pow(2).sum())


def output_energy(moments: Moments, weight: torch.Tensor, bias: torch.Tensor) -> float:
    """Mean squared norm of the layer's full output ``E||x W + b||²`` (the scale for relative errors)."""
    n = moments.n
    quad = (weight * (moments.gram @ weight)).sum()
    return float(quad / n + 2.0 * (moments.sum @ weight) @ bias / n + bias.pow(2).sum())


from reprune.reconstruction import closed_form  # noqa: E402,F401  (registration side effects)

__all__ = [
    "RECONSTRUCTIONS",
    "Reconstruction",
    "ReconstructionInput",
    "get_reconstruction",
    "output_energy",
    "output_error",
    "register",
]
