"""``liar-dense-stats``: LIAR with Σ and μ of the dense model's level-2 input instead of the pruned path's.

FLAP measures everything once on the dense model; reprune measures each block on the path already pruned
before it. This is LIAR's interpolation, Q = (Σ_uu + λI)⁻¹ Σ_um and c = μ_m − Qᵀ μ_u, fitted to how the dense
model's channels co-vary (issue 16's lead 4), so the two can be compared on the same criterion.
"""

from __future__ import annotations

from dataclasses import replace

from reprune.reconstruction import ReconstructionInput, Result, register
from reprune.reconstruction.closed_form import liar_weights
from reprune.stats import ModuleStats


@register("liar-dense-stats", needs={"level2_cross"},
          description="LIAR fitted on the dense model's level-2 input statistics (FLAP's dense measurement)")
def liar_dense_statistics(inp: ReconstructionInput) -> Result:
    cross = inp.stats.level2_cross
    if cross is None:
        raise RuntimeError(f"{inp.module.name}: liar-dense-stats needs the dense path statistics")
    return liar_weights(replace(inp, stats=ModuleStats(level2_in=cross.dense)))
