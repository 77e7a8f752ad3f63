"""reprune: retraining-free structured pruning of transformers (LIAR and Greedy Output Approximation).

Typical use::

    import reprune
    model, report = reprune.prune(model, tokenizer, reprune.PruneConfig(ratio=0.3, reconstruction="liar"))
    reprune.save_pruned(model, tokenizer, "out/", report)
    smaller = reprune.load("out/")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from reprune.checkpoint import load, save_pruned
from reprune.data import calibration_ids
from reprune.pipeline import PruneConfig
from reprune.pipeline import prune as prune_with_ids

__version__ = "0.1.0"


def prune(
    model: nn.Module,
    tokenizer: Any = None,
    config: PruneConfig | None = None,
    calibration: str | Path | list[str] | torch.Tensor = "wiki-embedded",
    progress: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Prune ``model`` in place; returns it and a report (kept units, parameter counts, errors, timings).

    ``calibration`` is a corpus (a file, ``'wiki-embedded'``, a list of texts, a Hugging Face dataset
    name) tokenised with ``tokenizer`` into ``config.num_samples`` × ``config.seq_len`` samples, or a
    ready (N, L) tensor of token ids.
    """
    config = config or PruneConfig()
    if isinstance(calibration, torch.Tensor):
        ids = calibration
    else:
        if tokenizer is None:
            raise ValueError("a tokenizer is needed to turn the calibration corpus into samples")
        ids = calibration_ids(tokenizer, calibration, config.num_samples, config.seq_len, config.seed)
    return prune_with_ids(model, ids, config, progress=progress)


__all__ = ["PruneConfig", "calibration_ids", "load", "prune", "prune_with_ids", "save_pruned"]
