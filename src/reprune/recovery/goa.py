"""GOA's greedy two-step recovery (J. Li, Y. Dong, Q. Lei, arXiv 2407.19126, Alg. 1, 3, 4).

Before a module is scored, level 1 is re-fitted on the pruned-path module input against each level-1
layer's dense output (one Gram serves all of them); the level-2 input is then recomputed through the
re-fitted level 1 and level 2 re-fitted against the dense level-2 output. Each pass gathers only what
its step reads. The ridge is ``PruneConfig.recovery_alpha`` (1e-4, the authors' code).
"""

from __future__ import annotations

import torch

from reprune.reconstruction.closed_form import ridge_to_dense
from reprune.recovery import RecoveryInput, register


@register("goa", needs={"level1_cross", "level2_cross"}, two_path=True, every_module=True,
          description="GOA: re-fit level 1, then level 2, to the dense model's outputs before pruning")
def goa_recover(inp: RecoveryInput) -> None:
    module, dense_module = inp.module, inp.dense_module
    if dense_module is None:
        raise RuntimeError(f"{module.name}: GOA recovery needs the dense path, which was not run")
    cross = inp.restat(frozenset({"level1_cross"})).level1_cross
    refitted: set[int] = set()
    for part, dense_part in zip(module.level1, dense_module.level1):
        projection = part.projection
        if id(projection.module) in refitted:
            continue  # a fused projection (GPT-2 c_attn) is re-fitted once, whole
        refitted.add(id(projection.module))
        dense_w, dense_b = dense_part.projection.as_target()
        weight, bias = ridge_to_dense(cross, None, dense_w, dense_b, torch.zeros_like(dense_w), inp.alpha,
                                      dense_b is not None, f"{module.name} {projection.name} (GOA level 1)")
        projection.replace(weight.T, bias)
    level2_cross = inp.restat(frozenset({"level2_cross"})).level2_cross
    dense_w, dense_b = dense_module.level2.as_target()
    weight, bias = ridge_to_dense(level2_cross, None, dense_w, dense_b, torch.zeros_like(dense_w), inp.alpha,
                                  dense_b is not None, f"{module.name} (GOA level 2)")
    module.level2.replace(weight.T, bias)
