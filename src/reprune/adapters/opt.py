"""OPT decoders: separate q/k/v/out projections with biases, fc1/fc2 ReLU FFN on the layer itself."""

from __future__ import annotations

from typing import Any

from torch import nn

from reprune.adapters.base import Depth2Module, Level1Part, ModelAdapter, Projection


class OPTAdapter(ModelAdapter):
    """``decoder.layers[i].self_attn.{q,k,v,out}_proj``, ``fc1`` and ``fc2``."""

    model_types = ("opt",)

    def blocks(self) -> nn.ModuleList:
        return self.model.base_model.decoder.layers

    def modules_of(self, layer: nn.Module, block_index: int) -> list[Depth2Module]:
        attn = layer.self_attn
        num_heads = attn.q_proj.out_features // attn.head_dim
        attention = Depth2Module(
            kind="attention",
            block=block_index,
            parent=attn,
            level1=[
                Level1Part(Projection(attn, "q_proj")),
                Level1Part(Projection(attn, "k_proj"), per_kv_head=True),
                Level1Part(Projection(attn, "v_proj"), per_kv_head=True),
            ],
            level2=Projection(attn, "out_proj"),
            num_units=num_heads,
            unit_width=attn.head_dim,
            num_kv_heads=num_heads,
        )
        ffn = Depth2Module(
            kind="ffn",
            block=block_index,
            parent=layer,
            level1=[Level1Part(Projection(layer, "fc1"))],
            level2=Projection(layer, "fc2"),
            num_units=layer.fc2.in_features,
            unit_width=1,
            activation=str(self.model.config.activation_function),
        )
        return [attention, ffn]

    def attention_attributes(self, num_heads: int, num_kv_heads: int, head_dim: int) -> dict[str, int]:
        return {"num_heads": num_heads}

    def plain_config_updates(self, layer_shapes: list[dict[str, int]]) -> dict[str, Any] | None:
        first = layer_shapes[0]
        if any(shape != first for shape in layer_shapes):
            return None
        if first["num_heads"] * first["head_dim"] != self.model.config.hidden_size:
            return None  # OPT derives head_dim from hidden_size: pruned heads need the manifest
        return {"ffn_dim": first["intermediate_size"]}
