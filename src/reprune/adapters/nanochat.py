"""NanoChat decoders: LLaMA's pre-norm block with weightless RMSNorms (also per head on q/k, after rotary),
a non-gated ``fc1``/``fc2`` FFN (relu²) and soft-capped logits.

Block: ``h = x + o_proj(attn(input_layernorm(x))); out = h + fc2(act(fc1(post_attention_layernorm(h))))``.
"""

from __future__ import annotations

from torch import nn

from reprune.adapters.base import Depth2Module, Projection, plain_ffn
from reprune.adapters.llama import LlamaAdapter


class NanoChatAdapter(LlamaAdapter):
    """``model.layers[i].self_attn.{q,k,v,o}_proj`` and ``mlp.{fc1,fc2}``."""

    model_types = ("nanochat",)
    tiny_config = {"nanochat": {"pad_token_id": 0}}

    def ffn_of(self, layer: nn.Module, block_index: int) -> Depth2Module:
        mlp = layer.mlp
        return plain_ffn(mlp, Projection(mlp, "fc1"), Projection(mlp, "fc2"), block_index)
