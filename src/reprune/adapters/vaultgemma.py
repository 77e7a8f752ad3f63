"""VaultGemma decoders: Gemma 2's block without its post-branch norms (pre-norms only).

Block: ``h = x + o(attn(input_layernorm(x))); out = h + mlp(pre_feedforward_layernorm(h))``, sliding and
full attention layers alternating as in Gemma 2.
"""

from __future__ import annotations

import torch
from torch import nn

from reprune.adapters.base import ModuleKind
from reprune.adapters.gemma2 import TINY, Gemma2Adapter


class VaultGemmaAdapter(Gemma2Adapter):
    """Gemma 2's module names less ``post_attention_layernorm`` / ``post_feedforward_layernorm``."""

    model_types = ("vaultgemma",)
    tiny_config = {"vaultgemma": TINY}

    def post_branch(self, block: nn.Module, kind: ModuleKind) -> None:
        return None

    def after_attention(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + block.mlp(block.pre_feedforward_layernorm(hidden))
