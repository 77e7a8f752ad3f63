"""Adapter registry: one adapter class per architecture family, chosen by ``config.model_type``."""

from __future__ import annotations

from torch import nn

from reprune.adapters.base import Depth2Module, Level1Part, ModelAdapter, Projection, block_output
from reprune.adapters.bert import BertAdapter
from reprune.adapters.gpt2 import GPT2Adapter
from reprune.adapters.llama import LlamaAdapter
from reprune.adapters.opt import OPTAdapter

ADAPTERS: tuple[type[ModelAdapter], ...] = (LlamaAdapter, BertAdapter, GPT2Adapter, OPTAdapter)


class UnsupportedArchitectureError(ValueError):
    """The model's family has no adapter."""


def supported_model_types() -> list[str]:
    return sorted(t for adapter in ADAPTERS for t in adapter.model_types)


def get_adapter(model: nn.Module) -> ModelAdapter:
    """Return the adapter for ``model`` or raise an error listing the supported architectures."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter(model=model, family=adapter.__name__.removesuffix("Adapter").lower(),
                           causal=model_type not in BertAdapter.model_types)
    raise UnsupportedArchitectureError(
        f"Unsupported architecture: model_type={model_type!r}. reprune supports "
        f"{', '.join(supported_model_types())} (LLaMA family, BERT family, GPT-2, OPT). "
        "Adding one is a new adapter in src/reprune/adapters/."
    )


__all__ = [
    "ADAPTERS",
    "Depth2Module",
    "Level1Part",
    "ModelAdapter",
    "Projection",
    "UnsupportedArchitectureError",
    "block_output",
    "get_adapter",
    "supported_model_types",
]
