"""BERT-family encoders (BERT, RoBERTa, XLM-R, ELECTRA): post-norm blocks, plain GELU FFN.

Block: ``a = LN1(x + dense(attn(x))); out = LN2(a + output.dense(act(intermediate.dense(a))))``.
"""

from __future__ import annotations

from torch import nn

from reprune.adapters.base import Depth2Module, ModelAdapter, Projection, plain_ffn, qkv_attention


class BertAdapter(ModelAdapter):
    """``encoder.layer[i].attention.self.{query,key,value}``, ``attention.output.dense``,
    ``intermediate.dense`` and ``output.dense``."""

    model_types = ("bert", "roberta", "xlm-roberta", "electra")
    causal = False
    ffn_config_key = "intermediate_size"

    def blocks(self) -> nn.ModuleList:
        return self.model.base_model.encoder.layer

    def modules_of(self, layer: nn.Module, block_index: int) -> list[Depth2Module]:
        self_attn = layer.attention.self
        attention = qkv_attention(self_attn, ("query", "key", "value"), Projection(layer.attention.output, "dense"),
                                  block_index, self_attn.attention_head_size)
        ffn = plain_ffn(layer.intermediate, Projection(layer.intermediate, "dense"), Projection(layer.output, "dense"),
                        block_index)
        return [attention, ffn]

    def attention_attributes(self, num_heads: int, num_kv_heads: int, head_dim: int) -> dict[str, int]:
        return {"num_attention_heads": num_heads, "all_head_size": num_heads * head_dim}
