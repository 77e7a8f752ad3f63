"""GPT-2: fused q/k/v in one ``Conv1D`` (weights stored transposed), plain GELU FFN."""

from __future__ import annotations

import torch
from torch import nn

from reprune.adapters.base import Depth2Module, Level1Part, ModelAdapter, Projection, plain_ffn


class GPT2Adapter(ModelAdapter):
    """``h[i].attn.c_attn`` (q|k|v sections), ``attn.c_proj``, ``mlp.c_fc`` and ``mlp.c_proj``."""

    model_types = ("gpt2",)
    ffn_config_key = "n_inner"

    def blocks(self) -> nn.ModuleList:
        return self.model.base_model.h

    def modules_of(self, block: nn.Module, block_index: int) -> list[Depth2Module]:
        attn, mlp = block.attn, block.mlp
        width = attn.split_size
        fused = Projection(attn, "c_attn")
        attention = Depth2Module(
            kind="attention",
            block=block_index,
            parent=attn,
            level1=[
                Level1Part(fused, offset=0),
                Level1Part(fused, offset=width, per_kv_head=True),
                Level1Part(fused, offset=2 * width, per_kv_head=True),
            ],
            level2=Projection(attn, "c_proj"),
            num_units=width // attn.head_dim,
            unit_width=attn.head_dim,
            num_kv_heads=width // attn.head_dim,
        )
        ffn = plain_ffn(mlp, Projection(mlp, "c_fc"), Projection(mlp, "c_proj"), block_index)
        return [attention, ffn]

    def ffn_residual(self, block: nn.Module) -> nn.Module:
        return block.ln_2  # out = h + mlp(ln_2(h))

    def attention_residual(self, block: nn.Module) -> nn.Module:
        return block.ln_1

    def after_attention(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + block.mlp(block.ln_2(hidden))

    def attention_attributes(self, num_heads: int, num_kv_heads: int, head_dim: int) -> dict[str, int]:
        return {"num_heads": num_heads, "split_size": num_heads * head_dim}
