"""EXAONE-4 decoders: OLMo-2's block (no pre-norms, a norm on each branch's output) with per-head q/k RMSNorms
(one weight of head size, shared by every head, unlike OLMo-2's norms over all heads), sliding and full
attention layers alternating (``config.layer_types``; rotary on sliding layers only when any exist).

Block: ``h = x + post_attention_layernorm(o_proj(attn(x))); out = h + post_feedforward_layernorm(mlp(h))``.
"""

from __future__ import annotations

from reprune.adapters.llama import TINY_SLIDING, LlamaAdapter
from reprune.adapters.olmo2 import Olmo2Adapter


class Exaone4Adapter(Olmo2Adapter):
    """OLMo-2's block shortcuts; LLaMA's attention, so heads go as in LLaMA (q/k rows and all) and a
    uniformly pruned model saves as plain transformers."""

    model_types = ("exaone4",)
    tiny_config = {"exaone4": {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **TINY_SLIDING}}
    attention_of = LlamaAdapter.attention_of
    remove_heads = LlamaAdapter.remove_heads
    plain_config_updates = LlamaAdapter.plain_config_updates
