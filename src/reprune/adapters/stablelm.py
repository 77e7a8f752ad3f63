"""StableLM decoders: LLaMA's module names with LayerNorms, optional per-head q/k LayerNorms and an optional
parallel residual; the head size is always hidden_size / num_attention_heads.

Block: ``h = x + o_proj(attn(input_layernorm(x))); out = h + mlp(post_attention_layernorm(h))``, or
``out = x + o_proj(attn(n)) + mlp(n)`` with ``n = input_layernorm(x)`` (``use_parallel_residual``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from reprune.adapters.base import Depth2Module, LayerShape, ModelAdapter
from reprune.adapters.llama import LlamaAdapter


class StableLmAdapter(LlamaAdapter):
    """``model.layers[i].self_attn.{q,k,v,o}_proj`` (+ ``{q,k}_layernorm.norms``) and ``mlp.{gate,up,down}_proj``."""

    model_types = ("stablelm",)
    tiny_config = {"stablelm": {"qk_layernorm": True}}

    def ffn_residual(self, block: nn.Module) -> nn.Module | None:
        """A parallel block's FFN reads the block input's norm, not a post-attention stream: no shortcut."""
        return None if block.use_parallel_residual else block.post_attention_layernorm

    def attention_residual(self, block: nn.Module) -> nn.Module | None:
        """As :meth:`ffn_residual`."""
        return None if block.use_parallel_residual else block.input_layernorm

    def attention_attributes(self, num_heads: int, num_kv_heads: int, head_dim: int) -> dict[str, int]:
        return {"num_heads": num_heads, "num_key_value_heads": num_kv_heads,
                "num_key_value_groups": num_heads // num_kv_heads}

    def remove_heads(self, module: Depth2Module, kept_heads: torch.Tensor, kept_kv_heads: torch.Tensor) -> None:
        """The per-head q/k LayerNorms are zipped with the heads in order: keep the kept heads' norms."""
        super().remove_heads(module, kept_heads, kept_kv_heads)
        attn = module.parent
        if attn.qk_layernorm:
            for norm, kept in ((attn.q_layernorm, kept_heads), (attn.k_layernorm, kept_kv_heads)):
                norm.norms = nn.ModuleList(norm.norms[i] for i in kept.tolist())

    def bias_config_updates(self) -> dict[str, Any]:
        """``use_qkv_bias`` covers q/k/v; o_proj and the MLP never have biases (added ones need the manifest)."""
        return {"use_qkv_bias": any(part.projection.bias() is not None for i in range(len(self.blocks()))
                                    for part in self.depth2_modules(i)[0].level1)}

    def plain_config_updates(self, shapes: list[LayerShape]) -> dict[str, Any] | None:
        """The config has no head size: only FFN-only pruning is plain (the base class's rule)."""
        return ModelAdapter.plain_config_updates(self, shapes)
