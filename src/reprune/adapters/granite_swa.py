"""Granite-SWA decoders: Granite's block (branches scaled by ``residual_multiplier``) with sliding and full
attention layers (``config.layer_types``), a per-layer rotary base (``layer_rope_theta``; 0 = no rotary) and
a learned sink logit per head, which scales each head's output by ``sigmoid(logsumexp(scores) - sink)``.
"""

from __future__ import annotations

import torch
from torch import nn

from reprune.adapters.base import Depth2Module
from reprune.adapters.granite import GraniteAdapter
from reprune.adapters.llama import TINY_LLAMA_LIKE, TINY_SLIDING


class GraniteSwaAdapter(GraniteAdapter):
    """Granite's module names, plus ``self_attn.sinks`` (one per query head)."""

    model_types = ("granite_swa",)
    tiny_config = {"granite_swa": {**TINY_LLAMA_LIKE, "residual_multiplier": 0.5, "attention_multiplier": 0.35,
                                   **TINY_SLIDING, "layer_rope_theta": [10000.0, 0.0]}}

    def remove_heads(self, module: Depth2Module, kept_heads: torch.Tensor, kept_kv_heads: torch.Tensor) -> None:
        """Keep the kept heads' sinks."""
        super().remove_heads(module, kept_heads, kept_kv_heads)
        sinks = module.parent.sinks
        module.parent.sinks = nn.Parameter(sinks.detach()[kept_heads.to(sinks.device)].clone(), requires_grad=False)
