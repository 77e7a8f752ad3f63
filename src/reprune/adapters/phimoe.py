"""Phi-3.5-MoE decoders: Mixtral's block (experts in 3-D ``gate_up_proj``/``down_proj``) with LayerNorms and
Phi-MoE's sparsemixer router (``mlp.router``, left untouched)."""

from __future__ import annotations

from reprune.adapters.mixtral import TINY_MOE, MixtralAdapter


class PhimoeAdapter(MixtralAdapter):
    """As :class:`MixtralAdapter`; the experts' width is ``intermediate_size``."""

    model_types = ("phimoe",)
    tiny_config = {"phimoe": {**TINY_MOE, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}}
