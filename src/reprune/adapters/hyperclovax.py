"""HyperCLOVA X decoders: Granite's block (branches scaled by ``residual_multiplier``) with an optional
norm on each branch's output (``use_post_norm``: ``post_norm1`` after attention, ``post_norm2`` after the FFN).

Block: ``h = x + m * post_norm1(o_proj(attn(input_layernorm(x)))); out = h + m * post_norm2(mlp(n))``,
``n = post_attention_layernorm(h)``.
"""

from __future__ import annotations

import torch
from torch import nn

from reprune.adapters.base import ModuleKind
from reprune.adapters.granite import GraniteAdapter
from reprune.adapters.llama import TINY_LLAMA_LIKE


class HyperClovaXAdapter(GraniteAdapter):
    """Granite's module names, plus ``post_norm1`` / ``post_norm2`` (``nn.Identity`` without ``use_post_norm``)."""

    model_types = ("hyperclovax",)
    tiny_config = {"hyperclovax": {**TINY_LLAMA_LIKE, "residual_multiplier": 0.5, "attention_multiplier": 0.35,
                                   "use_post_norm": True}}

    def post_branch(self, block: nn.Module, kind: ModuleKind) -> nn.Module:
        return block.post_norm1 if kind == "attention" else block.post_norm2

    def after_attention(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + block.residual_multiplier * block.post_norm2(block.mlp(block.post_attention_layernorm(hidden)))
