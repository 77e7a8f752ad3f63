"""GLM-4 (``glm``) and GLM-4-0414 (``glm4``) decoders: LLaMA's attention (partial, interleaved rotary; no
o_proj bias) with Phi-3's fused ``gate_up_proj``; ``glm4`` adds a norm after each branch.

Block (glm): ``h = x + o_proj(attn(input_layernorm(x))); out = h + down_proj(up * act(gate))``,
``gate|up = gate_up_proj(post_attention_layernorm(h))``; glm4 wraps each branch's output in
``post_self_attn_layernorm`` / ``post_mlp_layernorm`` before adding it.
"""

from __future__ import annotations

import torch
from torch import nn

from reprune.adapters.base import ModuleKind
from reprune.adapters.llama import TINY_LLAMA_LIKE, LlamaAdapter
from reprune.adapters.phi3 import Phi3Adapter


class GlmAdapter(LlamaAdapter):
    """``model.layers[i].self_attn.{q,k,v,o}_proj`` and ``mlp.{gate_up_proj,down_proj}`` (as Phi-3's, including
    why the FFN has no shortcut)."""

    model_types = ("glm",)
    tiny_config = {"glm": TINY_LLAMA_LIKE}
    ffn_of = Phi3Adapter.ffn_of
    ffn_residual = Phi3Adapter.ffn_residual


class Glm4Adapter(GlmAdapter):
    """As :class:`GlmAdapter`, with ``post_self_attn_layernorm`` and ``post_mlp_layernorm`` on the branches."""

    model_types = ("glm4",)
    tiny_config = {"glm4": TINY_LLAMA_LIKE}

    def post_branch(self, block: nn.Module, kind: ModuleKind) -> nn.Module:
        return block.post_self_attn_layernorm if kind == "attention" else block.post_mlp_layernorm

    def after_attention(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + block.post_mlp_layernorm(block.mlp(block.post_attention_layernorm(hidden)))
