"""Apertus decoders: Nemotron's non-gated FFN (xIELU activation) with Qwen3's per-head q/k RMSNorms (one
weight of head size, shared by every head) and its own names for the two pre-norms.

Block: ``h = x + o_proj(attn(attention_layernorm(x))); out = h + down_proj(act(up_proj(feedforward_layernorm(h))))``.
"""

from __future__ import annotations

import torch
from torch import nn

from reprune.adapters.nemotron import NemotronAdapter


class ApertusAdapter(NemotronAdapter):
    """``model.layers[i].self_attn.{q,k,v,o}_proj`` and ``mlp.{up,down}_proj``."""

    model_types = ("apertus",)
    tiny_config = {"apertus": {"pad_token_id": 0}}

    def attention_residual(self, block: nn.Module) -> nn.Module:
        return block.attention_layernorm

    def ffn_residual(self, block: nn.Module) -> nn.Module:
        return block.feedforward_layernorm

    def after_attention(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + block.mlp(block.feedforward_layernorm(hidden))
