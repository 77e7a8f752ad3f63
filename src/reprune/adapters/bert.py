"""BERT-family encoders (BertModel and task heads on top): post-norm blocks, plain GELU FFN."""

from __future__ import annotations

from typing import Any

from torch import nn

from reprune.adapters.base import Depth2Module, Level1Part, ModelAdapter, Projection


class BertAdapter(ModelAdapter):
    """``encoder.layer[i].attention.self.{query,key,value}``, ``attention.output.dense``,
    ``intermediate.dense`` and ``output.dense``."""

    model_types = ("bert", "roberta")

    def blocks(self) -> nn.ModuleList:
        return self.model.base_model.encoder.layer

    def modules_of(self, layer: nn.Module, block_index: int) -> list[Depth2Module]:
        self_attn = layer.attention.self
        head_dim = self_attn.attention_head_size
        num_heads = self_attn.query.out_features // head_dim
        attention = Depth2Module(
            kind="attention",
            block=block_index,
            parent=self_attn,
            level1=[
                Level1Part(Projection(self_attn, "query")),
                Level1Part(Projection(self_attn, "key"), per_kv_head=True),
                Level1Part(Projection(self_attn, "value"), per_kv_head=True),
            ],
            level2=Projection(layer.attention.output, "dense"),
            num_units=num_heads,
            unit_width=head_dim,
            num_kv_heads=num_heads,
        )
        ffn = Depth2Module(
            kind="ffn",
            block=block_index,
            parent=layer.intermediate,
            level1=[Level1Part(Projection(layer.intermediate, "dense"))],
            level2=Projection(layer.output, "dense"),
            num_units=layer.output.dense.in_features,
            unit_width=1,
            activation=str(self.model.config.hidden_act),
        )
        return [attention, ffn]

    def attention_attributes(self, num_heads: int, num_kv_heads: int, head_dim: int) -> dict[str, int]:
        return {"num_attention_heads": num_heads, "all_head_size": num_heads * head_dim}

    def plain_config_updates(self, layer_shapes: list[dict[str, int]]) -> dict[str, Any] | None:
        first = layer_shapes[0]
        if any(shape != first for shape in layer_shapes):
            return None
        if first["num_heads"] * first["head_dim"] != self.model.config.hidden_size:
            return None  # BERT derives head_dim from hidden_size: pruned heads need the manifest
        return {"intermediate_size": first["intermediate_size"]}
