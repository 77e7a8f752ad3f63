"""OLMo-2 decoders: LLaMA's module names, no pre-norms, RMSNorms on each branch's output and q/k RMSNorms
over all heads together.

Block: ``h = x + post_attention_layernorm(o_proj(attn(x))); out = h + post_feedforward_layernorm(mlp(h))``,
with ``q = q_norm(q_proj(x))`` normalised over all heads' channels at once.
"""

from __future__ import annotations

from torch import nn

from reprune.adapters.base import Depth2Module
from reprune.adapters.llama import LlamaAdapter


class Olmo2Adapter(LlamaAdapter):
    """``model.layers[i].self_attn.{q,k,v,o}_proj`` and ``mlp.{gate,up,down}_proj``; FFN neurons only.

    Heads are kept: ``q_norm``/``k_norm`` take one RMS over every head, so removing a head rescales the
    others' queries and keys per token (1e-2 logit error on a tiny model), which no reconstruction of
    ``o_proj`` can undo. Only FFN neurons are pruned (exactly), and ``targets="attention"`` has nothing to remove.
    """

    model_types = ("olmo2",)
    tiny_config = {"olmo2": {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}}

    def attention_of(self, layer: nn.Module, block_index: int) -> Depth2Module:
        attention = super().attention_of(layer, block_index)
        attention.removable = False
        return attention

    def ffn_residual(self, block: nn.Module) -> None:
        """The FFN output passes ``post_feedforward_layernorm`` before the addition: no shortcut."""
        return None

    def attention_residual(self, block: nn.Module) -> None:
        """The attention output passes ``post_attention_layernorm`` before the addition: no shortcut."""
        return None
