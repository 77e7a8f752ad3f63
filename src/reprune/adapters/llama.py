"""LLaMA-family decoders (LLaMA, Mistral, Qwen2/3, Gemma, SmolLM3, CWM and other LLaMA-named pre-norm decoders).

Block: ``h = x + o(attn(input_layernorm(x))); out = h + down(act(gate(n)) * up(n))``,
``n = post_attention_layernorm(h)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from reprune.adapters.base import Depth2Module, LayerShape, ModelAdapter, Projection, gated_ffn, qkv_attention


# head_dim defaults to 128/256 in several LLaMA-like configs; some default pad/bos/eos ids exceed a tiny vocabulary
TINY_LLAMA_LIKE: dict[str, Any] = {"head_dim": 8, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
# families whose layers alternate sliding and full attention (``config.layer_types``)
TINY_SLIDING: dict[str, Any] = {"sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"]}


class LlamaAdapter(ModelAdapter):
    """``model.layers[i].self_attn.{q,k,v,o}_proj`` and ``mlp.{gate,up,down}_proj``."""

    model_types = ("llama", "mistral", "qwen2", "qwen3", "gemma", "smollm3", "helium", "olmo", "ministral",
                   "ministral3", "hunyuan_v1_dense", "exaone", "internlm3", "iquestcoder", "cwm")
    ffn_config_key = "intermediate_size"
    tiny_config = {**{model_type: TINY_LLAMA_LIKE for model_type in model_types
                      if model_type not in ("llama", "mistral", "qwen2")},
                   "cwm": {**TINY_LLAMA_LIKE, **TINY_SLIDING}}

    def blocks(self) -> nn.ModuleList:
        return self.model.base_model.layers

    def modules_of(self, layer: nn.Module, block_index: int) -> list[Depth2Module]:
        return [self.attention_of(layer, block_index), self.ffn_of(layer, block_index)]

    def attention_of(self, layer: nn.Module, block_index: int) -> Depth2Module:
        """The layer's attention (a family with other projection names overrides this)."""
        attn = layer.self_attn
        return qkv_attention(attn, ("q_proj", "k_proj", "v_proj"), Projection(attn, "o_proj"), block_index,
                             attn.head_dim)

    def ffn_of(self, layer: nn.Module, block_index: int) -> Depth2Module:
        """The layer's FFN (a family with a fused or non-gated FFN overrides this)."""
        return gated_ffn(layer.mlp, ("gate_proj", "up_proj", "down_proj"), block_index)

    def ffn_residual(self, block: nn.Module) -> nn.Module:
        return block.post_attention_layernorm  # out = h + mlp(post_attention_layernorm(h))

    def attention_residual(self, block: nn.Module) -> nn.Module:
        return block.input_layernorm

    def after_attention(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + block.mlp(block.post_attention_layernorm(hidden))

    def attention_attributes(self, num_heads: int, num_kv_heads: int, head_dim: int) -> dict[str, int]:
        return {"num_key_value_groups": num_heads // num_kv_heads}

    def plain_config_updates(self, shapes: list[LayerShape]) -> dict[str, Any] | None:
        first = shapes[0]
        if any(shape != first for shape in shapes):
            return None
        return {
            "num_attention_heads": first.num_heads,
            "num_key_value_heads": first.num_kv_heads,
            "head_dim": first.head_dim,
            "intermediate_size": first.intermediate_size,
        }

    def bias_config_updates(self) -> dict[str, Any]:
        """A flag is True when any projection it covers has a bias (families whose flag skips one, e.g.
        helium's o_proj, then differ from the reference model: :mod:`reprune.stock` rewrites Qwen2 and Mistral
        as LLaMA, the others save with the manifest)."""
        return {"attention_bias": self.any_bias("attention"), "mlp_bias": self.any_bias("ffn")}

    def any_bias(self, kind: str | None = None) -> bool:
        """Whether any projection of any ``kind`` module (None: any module) has a bias."""
        modules = [m for i in range(len(self.blocks())) for m in self.depth2_modules(i) if kind in (None, m.kind)]
        return any(p.bias() is not None for m in modules for p in [part.projection for part in m.level1] + [m.level2])

    def materialise_bias_partners(self, module: Depth2Module) -> None:
        if module.level2.bias() is None:
            return
        for part in module.level1:
            if part.projection.bias() is None:
                weight = part.projection.weight()
                part.projection.replace(weight, torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))
