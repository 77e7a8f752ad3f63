"""Multimodal Gemma 3 (``Gemma3ForConditionalGeneration``): only the text decoder is pruned, as Gemma 3's
text model (see :mod:`reprune.adapters.gemma2`); the vision tower and its projector are left alone.

The decoder's blocks are ``base_model.language_model.layers`` and its sizes live in ``config.text_config``
(the top-level config has none), so a uniformly pruned model states them there.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from reprune.adapters.base import LayerShape
from reprune.adapters.gemma2 import TINY, Gemma2Adapter

TEXT = {"vocab_size": 300, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64, **TINY}
VISION = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
          "image_size": 28, "patch_size": 14}


class Gemma3Adapter(Gemma2Adapter):
    """``model.language_model.layers[i]`` as Gemma 3 text's."""

    model_types = ("gemma3",)
    tiny_config = {"gemma3": {"text_config": TEXT, "vision_config": VISION, "mm_tokens_per_image": 4,
                              "image_token_index": 299, "boi_token_index": 297, "eoi_token_index": 298}}

    def blocks(self) -> nn.ModuleList:
        return self.model.base_model.language_model.layers

    def plain_config_updates(self, shapes: list[LayerShape]) -> dict[str, Any] | None:
        """A text config with the pruned sizes and the bias flags (plain transformers reads both there)."""
        updates = super().plain_config_updates(shapes)
        if updates is None:
            return None
        text = copy.deepcopy(self.model.config.text_config)
        for key, value in {**updates, **super().bias_config_updates()}.items():
            setattr(text, key, value)
        return {"text_config": text}

    def bias_config_updates(self) -> dict[str, Any]:
        """None at the top level: :meth:`plain_config_updates` puts the flags into the text config."""
        return {}
