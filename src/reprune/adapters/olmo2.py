"""OLMo-2 decoders: LLaMA's module names, no pre-norms, RMSNorms on each branch's output and q/k RMSNorms
over all heads together.

Block: ``h = x + post_attention_layernorm(o_proj(attn(x))); out = h + post_feedforward_layernorm(mlp(h))``,
with ``q = q_norm(q_proj(x))`` normalised over all heads' channels at once (``k`` likewise over all KV heads).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from reprune.adapters.base import Depth2Module, LayerShape, Level1Part, ModuleKind, Projection
from reprune.adapters.llama import LlamaAdapter
from reprune.remote_code.modeling_reprune import narrow_output


class Olmo2Adapter(LlamaAdapter):
    """``model.layers[i].self_attn.{q,k,v,o}_proj`` (+ ``{q,k}_norm``) and ``mlp.{gate,up,down}_proj``.

    Heads are removed exactly. ``q_norm`` divides every query channel by one RMS over *all* heads'
    channels, per token, so a kept head's query depends on the removed heads' queries (``k_norm`` likewise
    over all KV heads). Deleting their rows would rescale the kept queries and keys by a per-token factor
    sqrt(ms_all / ms_kept) that no weight can undo: on the tiny contract model, removing one head per KV
    group that way gives a 1.1 % relative logit error against masking the heads, and rescaling the kept norm
    weights by the calibration mean of that factor does not reduce it (1.2 %: the factor varies per token;
    ``python -m benchmarks.olmo2_heads``). It would also break what every reconstruction assumes: that the
    kept heads' outputs, which it re-weights, do not change when others go.

    So a removed head keeps its q/k rows (``keeps_removed_rows``), moved behind the kept heads' rows, only to
    feed the norm's statistic; ``q_norm``/``k_norm`` keep their full weights (permuted alike) and their output
    is cut to the kept heads' channels (:func:`~reprune.remote_code.modeling_reprune.narrow_output`). Its
    value rows, ``o_proj`` columns, attention scores and KV-cache entries go, so the model is exactly the
    dense one with the removed heads' ``o_proj`` columns zeroed, and every contract holds as for LLaMA. What
    it costs: q/k projections keep their width (a head's parameter saving is its v/o share, which the
    allocation counts), and a head-pruned checkpoint loads with the manifest (``trust_remote_code``), as the
    config cannot state a norm over heads the attention no longer has. FFN-only pruning still saves as plain
    transformers. The post-branch norms ride on :meth:`post_branch`, so calibration keeps its residual shortcuts.
    """

    model_types = ("olmo2",)
    tiny_config = {"olmo2": {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}}

    def attention_of(self, layer: nn.Module, block_index: int) -> Depth2Module:
        """Heads counted from ``o_proj``/``v_proj``: after head pruning q/k still hold removed heads' rows."""
        attn = layer.self_attn
        head_dim = attn.head_dim
        return Depth2Module(
            kind="attention",
            block=block_index,
            parent=attn,
            level1=[Level1Part(Projection(attn, "q_proj"), keeps_removed_rows=True),
                    Level1Part(Projection(attn, "k_proj"), per_kv_head=True, keeps_removed_rows=True),
                    Level1Part(Projection(attn, "v_proj"), per_kv_head=True)],
            level2=Projection(attn, "o_proj"),
            num_units=attn.o_proj.in_features // head_dim,
            unit_width=head_dim,
            num_kv_heads=attn.v_proj.out_features // head_dim,
        )

    def remove_heads(self, module: Depth2Module, kept_heads: torch.Tensor, kept_kv_heads: torch.Tensor) -> None:
        """Order the norm weights as surgery ordered the q/k rows (kept heads first) and cut the norms' output
        to the kept heads' channels: the RMS still spans every original head."""
        super().remove_heads(module, kept_heads, kept_kv_heads)
        attn = module.parent
        query, key = module.level1[0], module.level1[1]
        for norm, part, kept_count in ((attn.q_norm, query, len(kept_heads)), (attn.k_norm, key, len(kept_kv_heads))):
            order = module.surgery_rows(part, kept_heads).to(norm.weight.device)
            norm.weight = nn.Parameter(norm.weight.detach()[order], requires_grad=False)
            narrow_output(norm, kept_count * module.unit_width)

    def plain_config_updates(self, shapes: list[LayerShape]) -> dict[str, Any] | None:
        """Plain only while every head is kept: the config cannot state q/k rows that feed the norm alone."""
        heads = self.model.config.num_attention_heads
        if any(shape.num_heads != heads for shape in shapes):
            return None
        return super().plain_config_updates(shapes)

    def attention_residual(self, block: nn.Module) -> nn.Module:
        """No pre-norm: ``q_proj`` reads the residual stream itself."""
        return block.self_attn.q_proj

    def ffn_residual(self, block: nn.Module) -> nn.Module:
        return block.mlp.gate_proj  # out = h + post_ff(mlp(h))

    def post_branch(self, block: nn.Module, kind: ModuleKind) -> nn.Module:
        return block.post_attention_layernorm if kind == "attention" else block.post_feedforward_layernorm

    def after_attention(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + block.post_feedforward_layernorm(block.mlp(hidden))
