"""OLMoE decoders: LLaMA's pre-norm block with OLMo-2's q/k RMSNorms over all heads and Mixtral's mixture
(experts in 3-D ``gate_up_proj``/``down_proj``, no shared expert); ``clip_qkv`` clamps q/k/v elementwise.

Block: ``h = x + o(attn(input_layernorm(x))); out = h + mlp(post_attention_layernorm(h))``,
``q = clamp(q_norm(q_proj(x)))`` normalised over all heads' channels at once (``k`` over all KV heads).
"""

from __future__ import annotations

from reprune.adapters.llama import LlamaAdapter
from reprune.adapters.mixtral import TINY_MOE, MixtralAdapter
from reprune.adapters.olmo2 import Olmo2Adapter


class OlmoeAdapter(Olmo2Adapter, MixtralAdapter):
    """OLMo-2's attention (heads removed exactly, their q/k rows kept only for the norms' RMS, so a
    head-pruned checkpoint needs the manifest), Mixtral's FFN and config keys, LLaMA's pre-norm shortcuts."""

    model_types = ("olmoe",)
    tiny_config = {"olmoe": {**TINY_MOE, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}}
    attention_residual = LlamaAdapter.attention_residual
    ffn_residual = LlamaAdapter.ffn_residual
    after_attention = LlamaAdapter.after_attention
    post_branch = MixtralAdapter.post_branch
