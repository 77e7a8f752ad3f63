"""OLMo-2 decoders: LLaMA's module names, no pre-norms, RMSNorms on each branch's output and q/k RMSNorms
over all heads together.

Block: ``h = x + post_attention_layernorm(o_proj(attn(x))); out = h + post_feedforward_layernorm(mlp(h))``,
with ``q = q_norm(q_proj(x))`` normalised over all heads' channels at once.
"""

from __future__ import annotations

import torch
from torch import nn

from reprune.adapters.base import Depth2Module, ModuleKind
from reprune.adapters.llama import LlamaAdapter


class Olmo2Adapter(LlamaAdapter):
    """``model.layers[i].self_attn.{q,k,v,o}_proj`` and ``mlp.{gate,up,down}_proj``; FFN neurons only.

    Heads are kept: ``q_norm``/``k_norm`` take one RMS over every head, so removing a head rescales the
    others' queries and keys per token (1e-2 logit error on a tiny model), which no reconstruction of
    ``o_proj`` can undo. Only FFN neurons are pruned (exactly), and ``targets="attention"`` has nothing to remove.
    The post-branch norms ride on :meth:`post_branch`, so calibration keeps its residual shortcuts.
    """

    model_types = ("olmo2",)
    tiny_config = {"olmo2": {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}}

    def attention_of(self, layer: nn.Module, block_index: int) -> Depth2Module:
        attention = super().attention_of(layer, block_index)
        attention.removable = False
        return attention

    def attention_residual(self, block: nn.Module) -> nn.Module:
        """No pre-norm: ``q_proj`` reads the residual stream itself."""
        return block.self_attn.q_proj

    def ffn_residual(self, block: nn.Module) -> nn.Module:
        return block.mlp.gate_proj  # out = h + post_ff(mlp(h))

    def post_branch(self, block: nn.Module, kind: ModuleKind) -> nn.Module:
        return block.post_attention_layernorm if kind == "attention" else block.post_feedforward_layernorm

    def after_attention(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + block.post_feedforward_layernorm(block.mlp(hidden))
