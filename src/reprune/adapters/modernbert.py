"""ModernBERT encoders: pre-norm blocks with a fused ``Wqkv`` [q|k|v] and a fused GLU ``Wi`` [input|gate].

Block: ``h = x + attn.Wo(attn(attn_norm(x))); out = h + mlp.Wo(act(input) * gate)``,
``input|gate = mlp.Wi(mlp_norm(h))`` (``attn_norm`` is the identity in layer 0). Sliding and global
attention layers (``config.layer_types``) have their own masks and rotary tables, which calibration keeps
per layer type. The forward reads the head count off the ``Wqkv`` width (``head_dim`` is unchanged), so
removing heads needs no attribute.
"""

from __future__ import annotations

import torch
from torch import nn

from reprune.adapters.base import Depth2Module, Level1Part, ModelAdapter, Projection

TINY = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "sep_token_id": 2, "cls_token_id": 1,
        "mask_token_id": 3, "global_attn_every_n_layers": 2, "local_attention": 4}


class ModernBertAdapter(ModelAdapter):
    """``model.layers[i].attn.{Wqkv,Wo}`` (MHA) and ``mlp.{Wi,Wo}``."""

    model_types = ("modernbert",)
    causal = False
    ffn_config_key = "intermediate_size"
    tiny_config = {"modernbert": TINY}

    def blocks(self) -> nn.ModuleList:
        return self.model.base_model.layers

    def modules_of(self, layer: nn.Module, block_index: int) -> list[Depth2Module]:
        attn, mlp = layer.attn, layer.mlp
        head_dim = attn.head_dim
        heads = attn.Wo.in_features // head_dim
        qkv = Projection(attn, "Wqkv")
        attention = Depth2Module(
            kind="attention", block=block_index, parent=attn,
            level1=[Level1Part(qkv), Level1Part(qkv, offset=heads * head_dim, per_kv_head=True),
                    Level1Part(qkv, offset=2 * heads * head_dim, per_kv_head=True)],
            level2=Projection(attn, "Wo"), num_units=heads, unit_width=head_dim, num_kv_heads=heads)
        width = mlp.Wo.in_features
        wi = Projection(mlp, "Wi")
        ffn = Depth2Module(kind="ffn", block=block_index, parent=mlp,
                           level1=[Level1Part(wi), Level1Part(wi, offset=width)],
                           level2=Projection(mlp, "Wo"), num_units=width, unit_width=1, gated=True)
        return [attention, ffn]

    def attention_residual(self, block: nn.Module) -> nn.Module:
        return block.attn_norm

    def ffn_residual(self, block: nn.Module) -> nn.Module:
        return block.mlp_norm

    def after_attention(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + block.mlp(block.mlp_norm(hidden))

    def attention_attributes(self, num_heads: int, num_kv_heads: int, head_dim: int) -> dict[str, int]:
        return {}
