"""OLMo-3 decoders: OLMo-2's block (post-branch norms, q/k RMSNorms over all heads) with sliding and full
attention layers alternating (``config.layer_types``), whose masks calibration keeps per layer type."""

from __future__ import annotations

from reprune.adapters.olmo2 import Olmo2Adapter


class Olmo3Adapter(Olmo2Adapter):
    """As :class:`Olmo2Adapter`: heads removed exactly, their q/k rows kept only for the norms' RMS."""

    model_types = ("olmo3",)
    tiny_config = {"olmo3": {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "sliding_window": 4,
                             "layer_types": ["sliding_attention", "full_attention"]}}
