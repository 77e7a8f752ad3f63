"""Reconstruction registry: given the kept/removed inner channels of a level-2 layer and calibration
statistics, return the layer's new weight and bias in closed form (no gradients). Where
``ReconstructionInput.intercept`` is False the layer has no bias and must keep none: a reconstruction then
returns ``None`` for the bias and fits without a constant term.

A reconstruction is one small function registered with the statistics it needs (names from
:data:`reprune.stats.STATISTICS`), so a new one is one new file in this folder: every module here is
imported. METHODS.md's notation is used inside (``W`` is (in, out), the transpose of ``nn.Linear.weight``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from reprune.adapters import Depth2Module
from reprune.registry import Registry, import_submodules
from reprune.stats import Moments, ModuleStats, declared_statistics


@dataclass
class ReconstructionInput:
    """What a reconstruction sees for one level-2 layer."""

    module: Depth2Module
    kept: torch.Tensor  # inner channels kept (level-2 input columns), sorted
    removed: torch.Tensor  # inner channels removed
    stats: ModuleStats
    alpha: float
    dense_module: Depth2Module | None = None  # the same module on the dense path (two-path methods)
    # fit a constant term (a bias); False only for a bias-less layer that must stay bias-less (reprune.stock)
    intercept: bool = True

    @property
    def dense_target(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The dense path's level-2 weight (in, out) and bias, float64: what two-path fits aim at."""
        if self.dense_module is None:
            raise RuntimeError(f"{self.module.name}: this reconstruction needs the dense path, which was not run")
        return self.dense_module.level2.as_target()

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


RECONSTRUCTIONS: Registry[Reconstruction] = Registry("reconstruction")


def register(name: str, needs: set[str] | None = None, description: str = "") -> Callable[[ReconstructFn], ReconstructFn]:
    def wrap(fn: ReconstructFn) -> ReconstructFn:
        RECONSTRUCTIONS.add(Reconstruction(name, fn, declared_statistics(needs or (), f"reconstruction {name!r}"),
                                           description or (fn.__doc__ or "").strip()))
        return fn

    return wrap


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


def relative_errors(inp: ReconstructionInput, new_weight: torch.Tensor,
                    new_bias: torch.Tensor | None) -> tuple[float | None, float | None]:
    """Output errors on the calibration rows relative to the full layer's output energy: of plain pruning
    and of the given new weights. None when no rows were gathered (a data-free method)."""
    moments = inp.stats.level2_in
    if not moments.n:
        return None, None
    full_w, full_b = inp.weight, inp.bias
    energy = max(output_energy(moments, full_w, full_b), 1e-30)
    plain_bias = full_b if inp.module.level2.bias() is not None else None
    error_none = output_error(moments, full_w, full_b, inp.kept, full_w[inp.kept], plain_bias) / energy
    return error_none, output_error(moments, full_w, full_b, inp.kept, new_weight, new_bias) / energy


import_submodules(__name__, __path__)

__all__ = [
    "RECONSTRUCTIONS",
    "Reconstruction",
    "ReconstructionInput",
    "output_energy",
    "output_error",
    "relative_errors",
    "register",
]
