"""Mixture-of-experts decoders with LLaMA's attention and residual form (Mixtral; base of Qwen3-MoE).

Block: ``h = x + o(attn(input_layernorm(x))); out = h + mlp(post_attention_layernorm(h))``, where ``mlp``
routes each token to its top-k experts (``mlp.gate``, left untouched) and ``mlp.experts`` keeps all
experts in 3-D parameters ``gate_up_proj`` (experts, [gate|up], d) and ``down_proj`` (experts, d, width).
Each expert is pruned on its own routed tokens, all by the same count (one tensor holds them all).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from reprune.adapters.base import Depth2Module, LayerShape, gated_experts
from reprune.adapters.llama import LlamaAdapter

TINY_MOE: dict[str, Any] = {"num_local_experts": 4, "num_experts_per_tok": 2}


class MixtralAdapter(LlamaAdapter):
    """``model.layers[i].self_attn`` as LLaMA's; ``mlp.experts`` a mixture (or, for a dense layer, LLaMA's MLP).

    Subclasses set ``moe_config_key``, the config key of the experts' width (``ffn_config_key``: dense layers').
    """

    model_types = ("mixtral",)
    moe_config_key: ClassVar[str] = "intermediate_size"
    tiny_config = {"mixtral": TINY_MOE}

    def ffn_of(self, layer: nn.Module, block_index: int) -> Depth2Module:
        if not hasattr(layer.mlp, "experts"):
            return super().ffn_of(layer, block_index)
        return gated_experts(layer.mlp, layer.mlp.experts, ("gate_up_proj", "down_proj"), block_index)

    def plain_config_updates(self, shapes: list[LayerShape]) -> dict[str, Any] | None:
        heads = {(shape.num_heads, shape.num_kv_heads, shape.head_dim) for shape in shapes}
        widths: dict[str, set[int]] = {}
        for index, shape in enumerate(shapes):
            key = self.moe_config_key if self.depth2_modules(index)[1].moe else self.ffn_config_key
            widths.setdefault(key, set()).add(shape.intermediate_size)
        if len(heads) > 1 or any(len(width) > 1 for width in widths.values()):
            return None
        ((num_heads, num_kv_heads, head_dim),) = heads
        return {"num_attention_heads": num_heads, "num_key_value_heads": num_kv_heads, "head_dim": head_dim,
                **{key: width.pop() for key, width in widths.items()}}

    def bias_config_updates(self) -> dict[str, Any]:
        """Only the attention's flag, where the config has one: the experts' biases are reprune's own."""
        return {"attention_bias": self.any_bias("attention")} if hasattr(self.model.config, "attention_bias") else {}
