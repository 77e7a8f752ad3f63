"""OPT decoders: separate q/k/v/out projections with biases, fc1/fc2 ReLU FFN on the layer itself."""

from __future__ import annotations

import torch
from torch import nn

from reprune.adapters.base import Depth2Module, ModelAdapter, Projection, plain_ffn, qkv_attention


class OPTAdapter(ModelAdapter):
    """``decoder.layers[i].self_attn.{q,k,v,out}_proj``, ``fc1`` and ``fc2``."""

    model_types = ("opt",)
    ffn_config_key = "ffn_dim"

    def blocks(self) -> nn.ModuleList:
        return self.model.base_model.decoder.layers

    def modules_of(self, layer: nn.Module, block_index: int) -> list[Depth2Module]:
        attn = layer.self_attn
        attention = qkv_attention(attn, ("q_proj", "k_proj", "v_proj"), Projection(attn, "out_proj"),
                                  block_index, attn.head_dim)
        ffn = plain_ffn(layer, Projection(layer, "fc1"), Projection(layer, "fc2"), block_index)
        return [attention, ffn]

    def ffn_residual(self, block: nn.Module) -> nn.Module | None:
        # OPT-350m normalises after the residual addition; the other sizes before the FFN
        return block.final_layer_norm if self.model.config.do_layer_norm_before else None

    def attention_residual(self, block: nn.Module) -> nn.Module | None:
        return block.self_attn_layer_norm if self.model.config.do_layer_norm_before else None

    def after_attention(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + block.fc2(block.activation_fn(block.fc1(block.final_layer_norm(hidden))))

    def attention_attributes(self, num_heads: int, num_kv_heads: int, head_dim: int) -> dict[str, int]:
        return {"num_heads": num_heads}
