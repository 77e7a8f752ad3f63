"""Each paper's own configuration, so ``--method goa`` / ``--method liar`` reproduce its setting.

``goa`` — J. Li, Y. Dong, Q. Lei, "Greedy Output Approximation: Towards Efficient Structured Pruning for
LLMs Without Retraining", arXiv 2407.19126 (CPAL 2025):

- ``attention_criterion="head-similarity"``: one head of each pair with similar attention (§3.2.2,
  Alg. 2), heads by count: the k most similar pairs for the ratio's k. The paper's τ (0.16–0.21) is on
  its code's scale (√KL, swapped arguments), not this JS divergence, so it is not borrowed;
  ``criterion_options={"tau": τ}`` still sets a threshold of one's own.
- ``ffn_criterion="second-moment"``: the data-dependent second-moment metric (§3.2.3); gated FFNs in the
  authors' code's form, the best measured of the three (see :mod:`reprune.criteria.second_moment`).
- ``recovery="goa"``, ``recovery_alpha=1e-4``: greedy two-step recovery of every pruned module before
  scoring (Alg. 1, 3, 4), with the ridge of the authors' code, on ``recovery_samples=1024`` samples of
  their own (§4.1: "an additional 1024 examples"), drawn apart from the 16 scoring samples.
- ``reconstruction="none"``: removed units get no compensation in the paper.
- ``keep_first=4``, ``keep_last=2``: blocks 0-3 and the last two stay dense (LLaMA-7B prunes blocks
  [4, 30): Tables 1–2, the code's ``start=4, end=30``); ``clip_keep`` lowers them on models too small.
- ``num_samples=16``, ``seq_len=128``: 16 calibration samples of 128 tokens; uniform allocation.

``liar`` — P. Wang et al., "Reconstruct the Pruned Model without Any Retraining", arXiv 2407.13331
(IEEE J-STSP 2025). LIAR repairs the pruning of any criterion; FLAP's is the one used here:

- ``criterion="flap"``: fluctuation ``Var(x_j) · ||W[:, j]||²``.
- ``reconstruction="liar"``, ``alpha=1e-2``: least-squares interpolation of the removed channels,
  ``W_u' = W_u + Q W_m``, ``b' = b + W_mᵀ c`` (METHODS.md's ridge [choice]).
- ``allocation="uniform"``: the same fraction of heads and neurons in every block; no block kept dense.
- ``num_samples=128``, ``seq_len=128``: 128 calibration samples of 128 tokens.

``reprune`` — this toolkit's best measured combination (benchmarks/README.md, "flap and global allocation as
FLAP's code, and the obs criterion"): ``criterion="obs-flap"``, heads chosen by ``obs`` (greedy structured OBS: the head whose removal
LIAR repairs worst goes last), neurons by ``flap``, ``allocation="ffn-first"`` (the budget from every FFN alike,
heads only beyond what the FFNs can lose: "Which units carry the budget"); every other field is the ``liar``
preset's. Its outputs are stock checkpoints (one FFN width for all blocks), which is why it is the default.

``reprune-influence`` — the lowest perplexity measured (benchmarks/README.md, "Allocation by block influence"):
``reprune`` with ``allocation="influence"``: the FFNs of blocks that rewrite the residual stream (input-output
cosine below ½ on the dense model) lose neurons in proportion to that cosine, the others alike. Its FFN widths
differ per block, which a stock config cannot state: its checkpoints load with ``reprune.load`` or
``trust_remote_code=True`` (the manifest), and vLLM does not serve them.

Any field can still be overridden: ``preset_config("goa", ratio=0.5, criterion_options={"tau": 0.1})``.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from reprune.config import PruneConfig

LIAR: dict[str, Any] = {  # LIAR, arXiv 2407.13331
    "criterion": "flap",
    "reconstruction": "liar",
    "alpha": 1e-2,
    "recovery": "none",
    "allocation": "uniform",
    "keep_first": 0,
    "keep_last": 0,
    "num_samples": 128,
    "seq_len": 128,
}

PRESETS: dict[str, dict[str, Any]] = {
    "goa": {  # GOA, arXiv 2407.19126: see the module docstring for each field's source
        "criterion": "second-moment",
        "attention_criterion": "head-similarity",
        "ffn_criterion": "second-moment",
        "recovery": "goa",
        "recovery_alpha": 1e-4,
        "reconstruction": "none",
        "allocation": "uniform",
        "keep_first": 4,
        "keep_last": 2,
        "clip_keep": True,
        "num_samples": 16,
        "seq_len": 128,
        "recovery_samples": 1024,
    },
    "liar": LIAR,
    # benchmarks/README.md: obs heads beat flap heads under LIAR, uniform, at 20, 35 and 50 %; taking the budget
    # from the FFNs first beats uniform at all three (SmolLM2 perplexity, MiniLM STS-B)
    "reprune": {**LIAR, "criterion": "obs-flap", "allocation": "ffn-first"},
    # benchmarks/README.md: influence beats ffn-first on SmolLM2 (and Gemma-3 at 50 %) but needs per-layer widths
    "reprune-influence": {**LIAR, "criterion": "obs-flap", "allocation": "influence"},
}


def preset_config(name: str, **overrides: Any) -> PruneConfig:
    """A :class:`PruneConfig` with preset ``name``'s fields, then ``overrides`` (e.g. ratio, device)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    known = {f.name for f in fields(PruneConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown PruneConfig field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(known))}")
    return PruneConfig(**{**PRESETS[name], **overrides})
