"""Adapter registry: one adapter class per architecture family, chosen by ``config.model_type``.

Every module in this folder is imported, and each :class:`ModelAdapter` subclass registers itself for
its ``model_types``, so a new family is one new file (see :class:`ModelAdapter` for what it must define).
"""

from __future__ import annotations

from torch import nn

from reprune.adapters.base import (
    ADAPTER_CLASSES,
    Depth2Module,
    ExpertProjection,
    Experts,
    LayerShape,
    Level1Part,
    ModelAdapter,
    ModuleKind,
    Projection,
    block_output,
)
from reprune.registry import import_submodules

import_submodules(__name__, __path__)


class UnsupportedArchitectureError(ValueError):
    """The model's family has no adapter."""


def supported_model_types() -> list[str]:
    return sorted(ADAPTER_CLASSES)


def adapter_class(model_type: str | None) -> type[ModelAdapter]:
    """The adapter class for a ``config.model_type``, or an error listing the supported ones.

    Cheap (a config is enough), so callers check a model folder before loading its weights.
    """
    if model_type not in ADAPTER_CLASSES:
        raise UnsupportedArchitectureError(
            f"Unsupported architecture: model_type={model_type!r}. reprune supports "
            f"{', '.join(supported_model_types())}. Adding one is a new adapter file in src/reprune/adapters/ "
            "(see ARCHITECTURE.md)."
        )
    return ADAPTER_CLASSES[model_type]


def get_adapter(model: nn.Module) -> ModelAdapter:
    """Return the adapter for ``model`` or raise an error listing the supported architectures."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return adapter_class(model_type)(model)


__all__ = [
    "ADAPTER_CLASSES",
    "Depth2Module",
    "ExpertProjection",
    "Experts",
    "LayerShape",
    "Level1Part",
    "ModelAdapter",
    "ModuleKind",
    "Projection",
    "UnsupportedArchitectureError",
    "adapter_class",
    "block_output",
    "get_adapter",
    "supported_model_types",
]
