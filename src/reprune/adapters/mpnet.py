"""MPNet encoders: BERT-like post-norm blocks whose attention adds a relative position bias shared by all layers.

Block: ``a = LN(x + o(attn(x, mask, position_bias))); out = LN(a + output.dense(act(intermediate.dense(a))))``.
"""

from __future__ import annotations

import torch
from torch import nn

from reprune.adapters.base import (
    Depth2Module,
    ModelAdapter,
    Projection,
    expose_attention_probabilities,
    plain_ffn,
    qkv_attention,
)
from reprune.remote_code.modeling_reprune import select_argument


class MPNetAdapter(ModelAdapter):
    """``encoder.layer[i].attention.attn.{q,k,v,o}``, ``intermediate.dense`` and ``output.dense``."""

    model_types = ("mpnet",)
    causal = False
    ffn_config_key = "intermediate_size"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        for layer in self.blocks():
            expose_attention_probabilities(layer.attention.attn, model.config)

    def blocks(self) -> nn.ModuleList:
        return self.model.base_model.encoder.layer

    def modules_of(self, layer: nn.Module, block_index: int) -> list[Depth2Module]:
        attn = layer.attention.attn
        return [
            qkv_attention(attn, ("q", "k", "v"), Projection(attn, "o"), block_index, attn.attention_head_size),
            plain_ffn(layer.intermediate, Projection(layer.intermediate, "dense"), Projection(layer.output, "dense"),
                      block_index),
        ]

    def attention_attributes(self, num_heads: int, num_kv_heads: int, head_dim: int) -> dict[str, int]:
        return {"num_attention_heads": num_heads, "all_head_size": num_heads * head_dim}

    def remove_heads(self, module: Depth2Module, kept_heads: torch.Tensor, kept_kv_heads: torch.Tensor) -> None:
        """The encoder computes one [B, H, T, T] bias for all layers: this layer must read its kept heads'."""
        super().remove_heads(module, kept_heads, kept_kv_heads)
        select_argument(module.parent, "position_bias", 1, kept_heads.tolist())
