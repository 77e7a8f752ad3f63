"""StarCoder2 decoders: LLaMA's pre-norm attention (GQA) with a plain, non-gated FFN; one bias flag ``use_bias``.

Block: ``h = x + o_proj(attn(input_layernorm(x))); out = h + c_proj(act(c_fc(post_attention_layernorm(h))))``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from reprune.adapters.base import Depth2Module, Projection, plain_ffn
from reprune.adapters.llama import LlamaAdapter


class Starcoder2Adapter(LlamaAdapter):
    """``model.layers[i].self_attn.{q,k,v,o}_proj`` and ``mlp.c_fc``/``mlp.c_proj``."""

    model_types = ("starcoder2",)
    tiny_config = {}

    def ffn_of(self, layer: nn.Module, block_index: int) -> Depth2Module:
        mlp = layer.mlp
        return plain_ffn(mlp, Projection(mlp, "c_fc"), Projection(mlp, "c_proj"), block_index)

    def bias_config_updates(self) -> dict[str, Any]:
        """``use_bias`` covers every projection: plain only when all have one (otherwise the manifest says which)."""
        return {"use_bias": self.any_bias()}
