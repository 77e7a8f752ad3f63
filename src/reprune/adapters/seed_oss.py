"""Seed-OSS decoders: LLaMA's block, with the o_proj bias under its own config flag ``attention_out_bias``.

Block: ``h = x + o_proj(attn(input_layernorm(x))); out = h + down(act(gate(n)) * up(n))``,
``n = post_attention_layernorm(h)``.
"""

from __future__ import annotations

from typing import Any

from reprune.adapters.llama import TINY_LLAMA_LIKE, LlamaAdapter


class SeedOssAdapter(LlamaAdapter):
    """LLaMA's module names; ``attention_bias`` covers q/k/v only."""

    model_types = ("seed_oss",)
    tiny_config = {"seed_oss": TINY_LLAMA_LIKE}

    def bias_config_updates(self) -> dict[str, Any]:
        """Reconstruction may give o_proj a bias: state it with ``attention_out_bias``."""
        o_bias = any(self.depth2_modules(i)[0].level2.bias() is not None for i in range(len(self.blocks())))
        return {**super().bias_config_updates(), "attention_out_bias": o_bias}
