"""Mellum decoders: Qwen3-MoE's block (per-head q/k norms, a mixture without shared experts) with sliding and
full attention layers (``config.layer_types``) and dense or sparse FFNs chosen per layer (``mlp_layer_types``)."""

from __future__ import annotations

from reprune.adapters.llama import TINY_LLAMA_LIKE, TINY_SLIDING
from reprune.adapters.qwen3_moe import Qwen3MoeAdapter


class MellumAdapter(Qwen3MoeAdapter):
    """As :class:`Qwen3MoeAdapter`: experts' width ``moe_intermediate_size``, dense layers' ``intermediate_size``."""

    model_types = ("mellum",)
    tiny_config = {"mellum": {**TINY_LLAMA_LIKE, **TINY_SLIDING, "num_experts": 4, "num_experts_per_tok": 2,
                              "moe_intermediate_size": 24, "mlp_layer_types": ["dense", "sparse"]}}
