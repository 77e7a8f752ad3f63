"""ERNIE-4.5 dense decoders: LLaMA's block with one bias flag ``use_bias`` for every projection.

Block: ``h = x + o_proj(attn(input_layernorm(x))); out = h + down(act(gate(n)) * up(n))``,
``n = post_attention_layernorm(h)``.
"""

from __future__ import annotations

from typing import Any

from reprune.adapters.llama import TINY_LLAMA_LIKE, LlamaAdapter


class Ernie45Adapter(LlamaAdapter):
    """LLaMA's module names; the config states biases for all projections at once."""

    model_types = ("ernie4_5",)
    tiny_config = {"ernie4_5": TINY_LLAMA_LIKE}

    def bias_config_updates(self) -> dict[str, Any]:
        """``use_bias`` is plain only when every projection has a bias (otherwise the manifest says which)."""
        return {"use_bias": self.any_bias()}
