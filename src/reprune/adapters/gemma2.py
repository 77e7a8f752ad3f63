"""Gemma 2 and Gemma 3 (text) decoders: LLaMA's projections, with a norm after each branch as well.

``h = x + post_attention_layernorm(o(attn(input_layernorm(x))))``;
``out = h + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h)))``. Sliding and full attention
layers alternate (``config.layer_types``), each with its own mask (Gemma 3: its own rotary table too),
which calibration keeps per layer type. The attention scale comes from ``query_pre_attn_scalar``, not
the head size, so removing heads changes nothing else.
"""

from __future__ import annotations

import torch
from torch import nn

from reprune.adapters.base import ModuleKind
from reprune.adapters.llama import LlamaAdapter

TINY = {"head_dim": 8, "query_pre_attn_scalar": 8, "sliding_window": 4,
        "layer_types": ["sliding_attention", "full_attention"]}


class Gemma2Adapter(LlamaAdapter):
    """``model.layers[i]`` as LLaMA's, plus ``pre_feedforward_layernorm`` and the two post-branch norms."""

    model_types = ("gemma2", "gemma3_text")
    tiny_config = {"gemma2": TINY, "gemma3_text": TINY}

    def ffn_residual(self, block: nn.Module) -> nn.Module:
        return block.pre_feedforward_layernorm  # out = h + post_ff(mlp(pre_ff(h)))

    def post_branch(self, block: nn.Module, kind: ModuleKind) -> nn.Module:
        return block.post_attention_layernorm if kind == "attention" else block.post_feedforward_layernorm

    def after_attention(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + block.post_feedforward_layernorm(block.mlp(block.pre_feedforward_layernorm(hidden)))
