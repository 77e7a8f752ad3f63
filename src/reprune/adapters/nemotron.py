"""Nemotron, Arcee (AFM) and Jais-2 decoders: LLaMA's attention and pre-norm block with a non-gated FFN.

Block: ``h = x + o_proj(attn(input_layernorm(x))); out = h + down_proj(act(up_proj(n)))``,
``n = post_attention_layernorm(h)`` (Nemotron: LayerNorm1P and partial rotary; Jais-2: LayerNorm and biases).
"""

from __future__ import annotations

from torch import nn

from reprune.adapters.base import Depth2Module, Projection, plain_ffn
from reprune.adapters.llama import TINY_LLAMA_LIKE, LlamaAdapter


class NemotronAdapter(LlamaAdapter):
    """``model.layers[i].self_attn.{q,k,v,o}_proj`` and ``mlp.{up,down}_proj`` (one neuron per ``up_proj`` row)."""

    model_types = ("nemotron", "arcee", "jais2")
    tiny_config = {model_type: TINY_LLAMA_LIKE for model_type in model_types}

    def ffn_of(self, layer: nn.Module, block_index: int) -> Depth2Module:
        mlp = layer.mlp
        return plain_ffn(mlp, Projection(mlp, "up_proj"), Projection(mlp, "down_proj"), block_index)
