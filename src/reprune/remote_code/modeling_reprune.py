"""Loader for a reprune checkpoint whose layers were pruned to different sizes.

Copied into the checkpoint folder by reprune, so ``from_pretrained(dir, trust_remote_code=True)`` works
without reprune installed: ``Reprune<Class>`` exists for every transformers model class (made on first
access), builds the original architecture, then resizes the projections and attention attributes listed
in ``config.reprune_manifest`` before the weights are loaded. Only torch and transformers are needed.
"""

from __future__ import annotations

from typing import Any

import transformers
from torch import nn
from transformers.pytorch_utils import Conv1D

PREFIX = "Reprune"


def _resolve(model: nn.Module, path: str) -> nn.Module:
    """Find ``path`` in ``model``; checkpoints saved from a head model also load into the bare model."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        return model.get_submodule(path.partition(".")[2])


def apply_manifest(model: nn.Module, manifest: dict[str, Any]) -> None:
    """Give the listed projections their pruned shapes and the attention modules their head counts."""
    for path, spec in manifest.get("modules", {}).items():
        parent_path, _, name = path.rpartition(".")
        parent = _resolve(model, parent_path)
        old = getattr(parent, name)
        if spec["type"] == "Conv1D":
            new: nn.Module = Conv1D(spec["out"], spec["in"])
        else:
            new = nn.Linear(spec["in"], spec["out"], bias=spec["bias"])
        setattr(parent, name, new.to(device=old.weight.device, dtype=old.weight.dtype))
    for path, attributes in manifest.get("attributes", {}).items():
        module = _resolve(model, path)
        for key, value in attributes.items():
            setattr(module, key, value)


def _pruned_class(base: type) -> type:
    def __init__(self, config, *args, **kwargs):  # noqa: N807
        base.__init__(self, config, *args, **kwargs)
        apply_manifest(self, getattr(config, "reprune_manifest", {}) or {})

    return type(f"{PREFIX}{base.__name__}", (base,), {"__init__": __init__, "__module__": __name__})


def __getattr__(name: str) -> type:
    """``Reprune<Class>`` for any transformers class ``<Class>``, built on first access and kept."""
    base = name.removeprefix(PREFIX)
    if base == name or not isinstance(getattr(transformers, base, None), type):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = cls = _pruned_class(getattr(transformers, base))
    return cls
