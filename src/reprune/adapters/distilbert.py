"""DistilBERT encoders: post-norm blocks, plain FFN; config keys ``dim``, ``n_heads``, ``hidden_dim``.

Block: ``a = sa_layer_norm(x + out_lin(attn(x))); out = output_layer_norm(a + lin2(act(lin1(a))))``.
"""

from __future__ import annotations

from torch import nn

from reprune.adapters.base import Depth2Module, ModelAdapter, Projection, plain_ffn, qkv_attention


class DistilBertAdapter(ModelAdapter):
    """``transformer.layer[i].attention.{q,k,v,out}_lin`` and ``ffn.lin1``/``ffn.lin2``."""

    model_types = ("distilbert",)
    causal = False
    ffn_config_key = "hidden_dim"  # the FFN width; DistilBertConfig ignores intermediate_size

    def blocks(self) -> nn.ModuleList:
        return self.model.base_model.transformer.layer

    def modules_of(self, layer: nn.Module, block_index: int) -> list[Depth2Module]:
        attn, ffn = layer.attention, layer.ffn
        return [
            qkv_attention(attn, ("q_lin", "k_lin", "v_lin"), Projection(attn, "out_lin"), block_index,
                          attn.attention_head_size),
            plain_ffn(ffn, Projection(ffn, "lin1"), Projection(ffn, "lin2"), block_index),
        ]

    def attention_attributes(self, num_heads: int, num_kv_heads: int, head_dim: int) -> dict[str, int]:
        """The forward views by ``attention_head_size`` (unchanged); ``n_heads`` is kept true for readers."""
        return {"n_heads": num_heads}
