"""Recovery registry: steps that re-fit a module to the dense model *before* it is scored and pruned.

A recovery is one function registered with the flags the pipeline needs to plan for it, so a new one
is one new file in this folder (every module here is imported). It changes the module's weights in
place, gathering statistics through ``RecoveryInput.restat`` (over the recovery rows: their own set,
``PruneConfig.recovery_samples``, or the scoring rows), and returns the module's output error against the
dense model before and after, on those rows; the pipeline then gathers the scoring and reconstruction
statistics from the recovered module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from reprune.adapters import Depth2Module
from reprune.registry import Registry, import_submodules
from reprune.stats import ModuleStats, declared_statistics


@dataclass
class RecoveryInput:
    """What a recovery sees for one module."""

    module: Depth2Module  # the pruned path's module, re-fitted in place
    dense_module: Depth2Module | None  # the same module of the dense model (None unless ``two_path``)
    alpha: float  # relative ridge (``PruneConfig.recovery_alpha``)
    restat: Callable[[frozenset[str]], ModuleStats]  # one pass over the recovery rows gathering the named statistics


@dataclass(frozen=True)
class RecoveryErrors:
    """The module's level-2 output error relative to the dense model's, on the rows the recovery fitted."""

    before: float
    after: float


RecoverFn = Callable[[RecoveryInput], RecoveryErrors | None]  # None: nothing was fitted


@dataclass(frozen=True)
class Recovery:
    name: str
    fn: RecoverFn
    needs: frozenset[str]  # the statistics its passes gather (declared, for the plan and the docs)
    two_path: bool  # reads the dense model's activations, so the dense path is propagated
    every_module: bool  # runs on every eligible module, also those that lose no unit
    description: str = ""


RECOVERIES: Registry[Recovery] = Registry("recovery")


def register(name: str, needs: set[str] | None = None, two_path: bool = False, every_module: bool = False,
             description: str = "") -> Callable[[RecoverFn], RecoverFn]:
    def wrap(fn: RecoverFn) -> RecoverFn:
        RECOVERIES.add(Recovery(name, fn, declared_statistics(needs or (), f"recovery {name!r}"), two_path,
                                every_module, description or (fn.__doc__ or "").strip()))
        return fn

    return wrap


@register("none", description="no recovery: modules are scored as the earlier blocks' pruning left them")
def no_recovery(inp: RecoveryInput) -> RecoveryErrors | None:
    return None


import_submodules(__name__, __path__)

__all__ = ["RECOVERIES", "Recovery", "RecoveryErrors", "RecoveryInput", "register"]
