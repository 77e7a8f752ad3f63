"""``obs-flap``: heads by ``obs``, neurons by ``flap``, the pair measured best under LIAR (benchmarks/README.md:
obs's heads lower uniform LIAR's perplexity; its neurons changed the layer error by 1–2 % and cost 30× more).
One name, so that ``criterion="obs-flap"`` can be the default while ``criterion="wanda-sp"`` still sets both kinds.
"""

from __future__ import annotations

import torch

from reprune.adapters import Depth2Module
from reprune.criteria import register
from reprune.criteria.baselines import flap_score
from reprune.criteria.obs import obs_score
from reprune.stats import ModuleStats


@register("obs-flap", needs={"level2_in"}, description="heads by obs (structured OBS under LIAR), neurons by flap")
def obs_flap_score(module: Depth2Module, stats: ModuleStats, generator: torch.Generator) -> torch.Tensor:
    score = obs_score if module.kind == "attention" else flap_score
    return score(module, stats, generator)
