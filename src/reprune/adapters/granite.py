"""Granite decoders: LLaMA's block with each branch scaled by ``residual_multiplier`` before the residual addition.

Block: ``h = x + m * o_proj(attn(input_layernorm(x))); out = h + m * mlp(post_attention_layernorm(h))``.
"""

from __future__ import annotations

import torch
from torch import nn

from reprune.adapters.llama import LlamaAdapter


class GraniteAdapter(LlamaAdapter):
    """LLaMA's module names; the shortcuts hold only when the multiplier is 1."""

    model_types = ("granite",)
    # multipliers other than 1, as real checkpoints have (0.22), so the contracts see them
    tiny_config = {"granite": {"residual_multiplier": 0.5, "attention_multiplier": 0.35}}

    def _unscaled(self) -> bool:
        return self.model.config.residual_multiplier == 1.0

    def ffn_residual(self, block: nn.Module) -> nn.Module | None:
        """Calibration's tail adds level 2's output unscaled: exact only for ``m == 1``."""
        return super().ffn_residual(block) if self._unscaled() else None

    def attention_residual(self, block: nn.Module) -> nn.Module | None:
        """As :meth:`ffn_residual`."""
        return super().attention_residual(block) if self._unscaled() else None

    def after_attention(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + block.residual_multiplier * block.mlp(block.post_attention_layernorm(hidden))
