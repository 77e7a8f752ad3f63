"""Cohere (Command-R) decoders: LLaMA's module names, one LayerNorm feeding parallel attention and FFN,
optional per-head q/k norms (weights [heads, head_dim]).

Block: ``n = input_layernorm(x); out = x + o_proj(attn(n)) + mlp(n)``.
"""

from __future__ import annotations

import torch
from torch import nn

from reprune.adapters.base import Depth2Module
from reprune.adapters.llama import LlamaAdapter


class CohereAdapter(LlamaAdapter):
    """``model.layers[i].self_attn.{q,k,v,o}_proj`` (+ ``{q,k}_norm``) and ``mlp.{gate,up,down}_proj``."""

    model_types = ("cohere",)
    tiny_config = {"cohere": {"use_qk_norm": True, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}}

    def ffn_residual(self, block: nn.Module) -> None:
        """Both branches read the block input's norm and are added together: no sequential shortcut."""
        return None

    def attention_residual(self, block: nn.Module) -> None:
        """As :meth:`ffn_residual`."""
        return None

    def remove_heads(self, module: Depth2Module, kept_heads: torch.Tensor, kept_kv_heads: torch.Tensor) -> None:
        """With ``use_qk_norm`` each head has its own norm weight row: keep the kept heads' rows."""
        super().remove_heads(module, kept_heads, kept_kv_heads)
        attn = module.parent
        if attn.use_qk_norm:
            for norm, kept in ((attn.q_norm, kept_heads), (attn.k_norm, kept_kv_heads)):
                norm.weight = nn.Parameter(norm.weight.detach()[kept.to(norm.weight.device)], requires_grad=False)
