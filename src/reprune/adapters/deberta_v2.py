"""DeBERTa-v2/v3 encoders: post-norm blocks with disentangled attention over relative embeddings shared by all layers.

Block: ``a = LN(x + dense(attn(x, mask, relative_pos, rel_embeddings)))``;
``out = LN(a + output.dense(act(intermediate.dense(a))))``.
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


class DebertaV2Adapter(ModelAdapter):
    """``encoder.layer[i].attention.self.{query,key,value}_proj``, ``attention.output.dense``,
    ``intermediate.dense`` and ``output.dense``."""

    model_types = ("deberta-v2",)
    causal = False
    ffn_config_key = "intermediate_size"
    tiny_config = {"deberta-v2": {"relative_attention": True, "pos_att_type": ["p2c", "c2p"], "position_buckets": 16,
                                  "max_relative_positions": 32, "norm_rel_ebd": "layer_norm", "share_att_key": True}}

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        if getattr(model.config, "conv_kernel_size", 0) > 0:
            raise ValueError(
                "DeBERTa-v2 with conv_kernel_size > 0 (e.g. deberta-v2-xlarge) adds a convolution to block 0's "
                "output outside the block, which block-wise calibration cannot see; reprune supports "
                "conv_kernel_size 0 (DeBERTa-v3 and the base/large v2 checkpoints)"
            )
        for layer in self.blocks():
            expose_attention_probabilities(layer.attention.self, model.config)

    def blocks(self) -> nn.ModuleList:
        return self.model.base_model.encoder.layer

    def modules_of(self, layer: nn.Module, block_index: int) -> list[Depth2Module]:
        attn = layer.attention.self
        return [
            qkv_attention(attn, ("query_proj", "key_proj", "value_proj"), Projection(layer.attention.output, "dense"),
                          block_index, attn.attention_head_size),
            plain_ffn(layer.intermediate, Projection(layer.intermediate, "dense"), Projection(layer.output, "dense"),
                      block_index),
        ]

    def attention_attributes(self, num_heads: int, num_kv_heads: int, head_dim: int) -> dict[str, int]:
        return {"num_attention_heads": num_heads, "all_head_size": num_heads * head_dim}

    def remove_heads(self, module: Depth2Module, kept_heads: torch.Tensor, kept_kv_heads: torch.Tensor) -> None:
        """Without ``share_att_key`` the relative embeddings have their own per-head projections: keep their rows."""
        super().remove_heads(module, kept_heads, kept_kv_heads)
        rows = module.unit_channels(kept_heads)
        for name in ("pos_key_proj", "pos_query_proj"):
            if isinstance(getattr(module.parent, name, None), nn.Linear):
                projection = Projection(module.parent, name)
                bias = projection.bias()
                projection.replace(projection.weight()[rows].detach(), None if bias is None else bias[rows].detach())
