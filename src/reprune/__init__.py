"""reprune: retraining-free structured pruning of transformers (LIAR and Greedy Output Approximation).

Typical use::

    import reprune
    config = reprune.PruneConfig(ratio=0.3, reconstruction="liar")
    model, record = reprune.prune(model, "wiki-embedded", config, tokenizer=tokenizer)
    reprune.save_pruned(model, tokenizer, "out/", record)
    smaller = reprune.load("out/")
"""

from __future__ import annotations

from reprune.checkpoint import load, save_pruned
from reprune.config import PruneConfig
from reprune.data import calibration_ids
from reprune.pipeline import global_scores, prune
from reprune.record import RunRecord

__version__ = "0.1.0"

__all__ = ["PruneConfig", "RunRecord", "calibration_ids", "global_scores", "load", "prune", "save_pruned"]
