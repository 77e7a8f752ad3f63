"""GOA's greedy two-step recovery (J. Li, Y. Dong, Q. Lei, arXiv 2407.19126, Alg. 1, 3, 4).

Before a module is scored, level 1 is re-fitted on the pruned-path module input against each level-1
layer's dense output (one Gram serves all of them); the level-2 input is then recomputed through the
re-fitted level 1 and level 2 re-fitted against the dense level-2 output. The ridge is
``PruneConfig.recovery_alpha`` (1e-4, the authors' code), on the recovery rows
(``PruneConfig.recovery_samples``; the paper recovers from 1,024 extra examples, §4.1).

``goa`` shrinks toward zero, as the paper's ridge does; ``goa-current`` toward the module's current
weights, so directions the recovery rows barely cover keep their pretrained values.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from reprune.reconstruction.closed_form import ridge_to_dense
from reprune.recovery import RecoveryErrors, RecoveryInput, register
from reprune.stats import dense_output_error

Prior = Callable[[torch.Tensor], torch.Tensor]  # a layer's current weight (in, out) -> what the ridge shrinks toward


def greedy_recovery(inp: RecoveryInput, prior: Prior) -> RecoveryErrors:
    """Re-fit level 1, then level 2, to the dense outputs; the level-2 error before and after."""
    module, dense_module = inp.module, inp.dense_module
    if dense_module is None:
        raise RuntimeError(f"{module.name}: GOA recovery needs the dense path, which was not run")
    first = inp.restat(frozenset({"level1_cross", "level2_cross"}))
    dense_w, dense_b = dense_module.level2.as_target()
    before = dense_output_error(first.level2_cross, *module.level2.as_target(), dense_w, dense_b)
    refitted: set[int] = set()
    for part, dense_part in zip(module.level1, dense_module.level1):
        projection = part.projection
        if id(projection.module) in refitted:
            continue  # a fused projection (GPT-2 c_attn) is re-fitted once, whole
        refitted.add(id(projection.module))
        part_w, part_b = dense_part.projection.as_target()
        weight, bias = ridge_to_dense(first.level1_cross, None, part_w, part_b,
                                      prior(projection.as_target()[0]), inp.alpha, part_b is not None,
                                      f"{module.name} {projection.name} (GOA level 1)")
        projection.replace(weight.T, bias)
    level2_cross = inp.restat(frozenset({"level2_cross"})).level2_cross
    weight, bias = ridge_to_dense(level2_cross, None, dense_w, dense_b, prior(module.level2.as_target()[0]),
                                  inp.alpha, dense_b is not None, f"{module.name} (GOA level 2)")
    module.level2.replace(weight.T, bias)
    return RecoveryErrors(before, dense_output_error(level2_cross, weight, bias, dense_w, dense_b))


@register("goa", needs={"level1_cross", "level2_cross"}, two_path=True, every_module=True,
          description="GOA: re-fit level 1, then level 2, to the dense model's outputs before pruning (ridge toward 0)")
def goa_recover(inp: RecoveryInput) -> RecoveryErrors:
    return greedy_recovery(inp, torch.zeros_like)


@register("goa-current", needs={"level1_cross", "level2_cross"}, two_path=True, every_module=True,
          description="GOA's recovery with the ridge toward the module's current weights instead of zero")
def goa_current_recover(inp: RecoveryInput) -> RecoveryErrors:
    return greedy_recovery(inp, lambda current: current)
