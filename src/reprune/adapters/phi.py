"""Phi-1/Phi-2 decoders: one LayerNorm feeding parallel attention (``dense`` output projection, partial rotary,
optional per-head q/k LayerNorms of head size, shared by every head) and a non-gated ``fc1``/``fc2`` FFN.

Block: ``n = input_layernorm(x); out = x + dense(attn(n)) + fc2(act(fc1(n)))``.
"""

from __future__ import annotations

from torch import nn

from reprune.adapters.base import Depth2Module, Projection, plain_ffn, qkv_attention
from reprune.adapters.llama import LlamaAdapter


class PhiAdapter(LlamaAdapter):
    """``model.layers[i].self_attn.{q,k,v}_proj`` + ``dense`` and ``mlp.{fc1,fc2}``."""

    model_types = ("phi",)
    tiny_config = {"phi": {"qk_layernorm": True, "pad_token_id": 0}}

    def attention_of(self, layer: nn.Module, block_index: int) -> Depth2Module:
        attn = layer.self_attn
        return qkv_attention(attn, ("q_proj", "k_proj", "v_proj"), Projection(attn, "dense"), block_index,
                             attn.head_dim)

    def ffn_of(self, layer: nn.Module, block_index: int) -> Depth2Module:
        mlp = layer.mlp
        return plain_ffn(mlp, Projection(mlp, "fc1"), Projection(mlp, "fc2"), block_index)

    def ffn_residual(self, block: nn.Module) -> None:
        """Both branches read the block input's norm and are added together: no sequential shortcut."""
        return None

    def attention_residual(self, block: nn.Module) -> None:
        """As :meth:`ffn_residual`."""
        return None
