"""Cohere 2 (Command R7B / Command A) decoders: Cohere's parallel block without q/k norms, sliding and full
attention layers alternating (``config.layer_types``; only sliding layers apply rotary).

Block: ``n = input_layernorm(x); out = x + o_proj(attn(n)) + mlp(n)``.
"""

from __future__ import annotations

from reprune.adapters.cohere import CohereAdapter
from reprune.adapters.llama import TINY_SLIDING, LlamaAdapter


class Cohere2Adapter(CohereAdapter):
    """Cohere's module names; no per-head parameters outside the projections."""

    model_types = ("cohere2",)
    tiny_config = {"cohere2": {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **TINY_SLIDING}}
    remove_heads = LlamaAdapter.remove_heads
