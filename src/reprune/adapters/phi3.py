"""Phi-3/Phi-4-mini decoders: LLaMA's pre-norm block with fused ``qkv_proj`` [q|k|v] and ``gate_up_proj`` [gate|up].

Block: ``h = x + o_proj(attn(input_layernorm(x))); out = h + down_proj(up * act(gate))``,
``gate|up = gate_up_proj(post_attention_layernorm(h))``.
"""

from __future__ import annotations

from torch import nn

from reprune.adapters.base import Depth2Module, Level1Part, Projection
from reprune.adapters.llama import LlamaAdapter


class Phi3Adapter(LlamaAdapter):
    """``model.layers[i].self_attn.{qkv_proj,o_proj}`` and ``mlp.{gate_up_proj,down_proj}``."""

    model_types = ("phi3",)
    tiny_config = {"phi3": {"pad_token_id": 0}}

    def attention_of(self, layer: nn.Module, block_index: int) -> Depth2Module:
        attn = layer.self_attn
        head_dim, kv_heads = attn.head_dim, attn.num_key_value_heads
        heads = attn.o_proj.in_features // head_dim
        qkv = Projection(attn, "qkv_proj")
        return Depth2Module(
            kind="attention",
            block=block_index,
            parent=attn,
            level1=[
                Level1Part(qkv),
                Level1Part(qkv, offset=heads * head_dim, per_kv_head=True),
                Level1Part(qkv, offset=(heads + kv_heads) * head_dim, per_kv_head=True),
            ],
            level2=Projection(attn, "o_proj"),
            num_units=heads,
            unit_width=head_dim,
            num_kv_heads=kv_heads,
        )

    def ffn_of(self, layer: nn.Module, block_index: int) -> Depth2Module:
        mlp = layer.mlp
        width = mlp.down_proj.in_features
        gate_up = Projection(mlp, "gate_up_proj")
        return Depth2Module(kind="ffn", block=block_index, parent=mlp,
                            level1=[Level1Part(gate_up), Level1Part(gate_up, offset=width)],
                            level2=Projection(mlp, "down_proj"), num_units=width, unit_width=1, gated=True)

    def ffn_residual(self, block: nn.Module) -> None:
        """No FFN shortcut: ``act`` runs on the strided gate half of ``gate_up_proj``'s output, so a pruned FFN's
        activations differ from the tail's by an ulp (vectorised vs scalar loop tails), which GOA's float32
        re-fit of the next block amplifies past the contract's 1e-4; running the block's FFN again is exact."""
        return None

    def attention_attributes(self, num_heads: int, num_kv_heads: int, head_dim: int) -> dict[str, int]:
        """The forward splits q from k/v at ``self.config.num_attention_heads``: each layer gets its own view."""
        return {"config.num_attention_heads": num_heads, "num_key_value_heads": num_kv_heads,
                "num_key_value_groups": num_heads // num_kv_heads}
