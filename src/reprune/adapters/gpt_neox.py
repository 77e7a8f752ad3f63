"""GPT-NeoX decoders (Pythia): fused ``query_key_value`` interleaved per head ([q|k|v] of head 0, then head 1, ...),
plain FFN; parallel residual by default.

Block: ``out = x + dense(attn(input_layernorm(x))) + mlp(post_attention_layernorm(x))`` (parallel), or
``h = x + dense(attn(input_layernorm(x))); out = h + mlp(post_attention_layernorm(h))``
(``use_parallel_residual=False``).
"""

from __future__ import annotations

import torch
from torch import nn

from reprune.adapters.base import Depth2Module, Level1Part, ModelAdapter, Projection, plain_ffn


class GPTNeoXAdapter(ModelAdapter):
    """``layers[i].attention.{query_key_value,dense}`` and ``mlp.dense_h_to_4h``/``mlp.dense_4h_to_h``."""

    model_types = ("gpt_neox",)
    ffn_config_key = "intermediate_size"

    def blocks(self) -> nn.ModuleList:
        return self.model.base_model.layers

    def modules_of(self, layer: nn.Module, block_index: int) -> list[Depth2Module]:
        attn, mlp = layer.attention, layer.mlp
        head_dim = attn.head_size
        heads = attn.dense.in_features // head_dim
        qkv = Projection(attn, "query_key_value")
        stride = 3 * head_dim  # the forward views the output as (heads, 3 * head_dim), then chunks q, k, v
        attention = Depth2Module(
            kind="attention",
            block=block_index,
            parent=attn,
            level1=[
                Level1Part(qkv, stride=stride),
                Level1Part(qkv, offset=head_dim, per_kv_head=True, stride=stride),
                Level1Part(qkv, offset=2 * head_dim, per_kv_head=True, stride=stride),
            ],
            level2=Projection(attn, "dense"),
            num_units=heads,
            unit_width=head_dim,
            num_kv_heads=heads,
        )
        ffn = plain_ffn(mlp, Projection(mlp, "dense_h_to_4h"), Projection(mlp, "dense_4h_to_h"), block_index)
        return [attention, ffn]

    def _sequential(self, block: nn.Module) -> bool:
        return not block.use_parallel_residual

    def ffn_residual(self, block: nn.Module) -> nn.Module | None:
        """Parallel blocks add both branches to the block input: no post-attention stream, no shortcut."""
        return block.post_attention_layernorm if self._sequential(block) else None

    def attention_residual(self, block: nn.Module) -> nn.Module | None:
        """As :meth:`ffn_residual`."""
        return block.input_layernorm if self._sequential(block) else None

    def after_attention(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + block.mlp(block.post_attention_layernorm(hidden))

    def attention_attributes(self, num_heads: int, num_kv_heads: int, head_dim: int) -> dict[str, int]:
        """The forward views by ``head_size``, which does not change: nothing to update."""
        return {}
