"""Qwen3-MoE: Mixtral's layout with Qwen3's attention (per-head q/k norms); layers listed in
``mlp_only_layers`` (or off the ``decoder_sparse_step``) keep a dense MLP of width ``intermediate_size``."""

from __future__ import annotations

from reprune.adapters.llama import TINY_LLAMA_LIKE
from reprune.adapters.mixtral import MixtralAdapter


class Qwen3MoeAdapter(MixtralAdapter):
    """Experts' width is ``moe_intermediate_size``; dense layers' ``intermediate_size``."""

    model_types = ("qwen3_moe",)
    moe_config_key = "moe_intermediate_size"
    tiny_config = {"qwen3_moe": {**TINY_LLAMA_LIKE, "num_experts": 4, "num_experts_per_tok": 2,
                                 "moe_intermediate_size": 24}}
