"""Loader for a reprune checkpoint whose layers were pruned to different sizes.

Copied into the checkpoint folder by reprune, so ``from_pretrained(dir, trust_remote_code=True)`` works
without reprune installed: ``Reprune<Class>`` exists for every transformers model class (made on first
access), builds the original architecture, then, before the weights are loaded, applies
``config.reprune_manifest``: projection shapes, other parameters' shapes (per-head norms, a mixture's 3-D
expert parameters), biases added to a mixture's experts, module list
lengths (per-head norm lists), attention attributes (``config.<key>``: a key of the module's own
:class:`LayerConfig`), argument selections (the heads a layer reads from a position bias shared by all
layers) and output widths (the kept heads' channels of a norm taken over all heads, OLMo-2's q/k norms).
Only torch and transformers are needed.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import transformers
from torch import nn
from transformers.pytorch_utils import Conv1D

PREFIX = "Reprune"
# attribute of a module whose forward argument is indexed before the call: {"argument", "dim", "index"}
SELECTION = "reprune_selection"
# (experts, out) bias that reconstruction gives a mixture's experts when they have none
EXPERT_BIAS = "reprune_expert_bias"
# attribute of a module whose output is cut to its first ``width`` channels after the call
OUTPUT_WIDTH = "reprune_output_width"


def _resolve(model: nn.Module, path: str) -> nn.Module:
    """Find ``path`` in ``model``; checkpoints saved from a head model also load into the bare model."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        return model.get_submodule(path.partition(".")[2])


class LayerConfig:
    """One module's view of the model config with some keys of its own (Phi-3 attention reads its head
    count from ``self.config``); everything else, writes included, goes to the model config."""

    def __init__(self, base: Any, overrides: dict[str, Any]) -> None:
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_overrides", dict(overrides))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy/pickle protocol lookups, before __init__ ran
            raise AttributeError(name)
        overrides = object.__getattribute__(self, "_overrides")
        return overrides[name] if name in overrides else getattr(object.__getattribute__(self, "_base"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._overrides:
            self._overrides[name] = value
        else:
            setattr(self._base, name, value)


def set_attributes(module: nn.Module, attributes: dict[str, Any]) -> None:
    """Set a module's attributes; a key ``config.<name>`` overrides ``<name>`` in its own :class:`LayerConfig`."""
    for key, value in attributes.items():
        name = key.removeprefix("config.")
        if name == key:
            setattr(module, key, value)
            continue
        if not isinstance(module.config, LayerConfig):
            module.config = LayerConfig(module.config, {})
        object.__getattribute__(module.config, "_overrides")[name] = value


def _select_argument(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook: index the argument named in ``module.reprune_selection`` (positional or keyword)."""
    selection = getattr(module, SELECTION)
    name, dim = selection["argument"], selection["dim"]
    position = list(inspect.signature(module.forward).parameters).index(name)
    value = args[position] if position < len(args) else kwargs.get(name)
    if value is None:
        return args, kwargs
    value = value.index_select(dim, torch.as_tensor(selection["index"], device=value.device))
    if position < len(args):
        return args[:position] + (value,) + args[position + 1 :], kwargs
    return args, {**kwargs, name: value}


def select_argument(module: nn.Module, argument: str, dim: int, index: list[int]) -> None:
    """Make ``module`` see only ``index`` along ``dim`` of its forward argument ``argument`` (e.g. the
    kept heads of a relative position bias shared by all layers); a second call narrows the first."""
    previous = getattr(module, SELECTION, None)
    if previous is None:
        module.register_forward_pre_hook(_select_argument, with_kwargs=True)
    else:
        index = [previous["index"][i] for i in index]
    setattr(module, SELECTION, {"argument": argument, "dim": dim, "index": list(index)})


def _narrow_output(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: keep the first ``module.reprune_output_width`` channels of the output."""
    return output[..., : getattr(module, OUTPUT_WIDTH)]


def narrow_output(module: nn.Module, width: int) -> None:
    """Make ``module``'s output its first ``width`` channels (e.g. a norm over all heads' channels, of which
    the kept heads are the first); a second call replaces the width."""
    if not hasattr(module, OUTPUT_WIDTH):
        module.register_forward_hook(_narrow_output)
    setattr(module, OUTPUT_WIDTH, int(width))


def _add_routed_biases(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook of an experts module called as ``(hidden, top_k_index, top_k_weights)``: add the biases of
    each token's routed experts."""
    return output + getattr(module, EXPERT_BIAS)[args[1]].sum(1).to(output.dtype)


def expert_bias(experts: nn.Module, shape: tuple[int, int]) -> nn.Parameter:
    """The (experts, out) bias of a mixture's experts that have none, created (zero) with its hook on first use.

    An expert's level 2 sees its input already scaled by the token's gate value, so its bias is added once
    per routed token, unscaled.
    """
    if not hasattr(experts, EXPERT_BIAS):
        like = next(experts.parameters())
        experts.register_parameter(EXPERT_BIAS, nn.Parameter(torch.zeros(tuple(shape), dtype=like.dtype,
                                                                         device=like.device), requires_grad=False))
        experts.register_forward_hook(_add_routed_biases)
    return getattr(experts, EXPERT_BIAS)


def apply_manifest(model: nn.Module, manifest: dict[str, Any]) -> None:
    """Give the listed projections their pruned shapes, the attention modules their head counts, and
    per-head parameters, module lists, argument selections and output widths their pruned sizes."""
    for path, spec in manifest.get("modules", {}).items():
        parent_path, _, name = path.rpartition(".")
        parent = _resolve(model, parent_path)
        old = getattr(parent, name)
        if spec["type"] == "Conv1D":
            new: nn.Module = Conv1D(spec["out"], spec["in"])
        else:
            new = nn.Linear(spec["in"], spec["out"], bias=spec["bias"])
        setattr(parent, name, new.to(device=old.weight.device, dtype=old.weight.dtype))
    for path, shape in manifest.get("parameters", {}).items():
        parent_path, _, name = path.rpartition(".")
        parent = _resolve(model, parent_path)
        old = getattr(parent, name)
        setattr(parent, name, nn.Parameter(torch.empty(shape, dtype=old.dtype, device=old.device),
                                           requires_grad=old.requires_grad))
    for path, shape in manifest.get("expert_biases", {}).items():
        expert_bias(_resolve(model, path), shape)
    for path, length in manifest.get("module_lists", {}).items():
        modules = _resolve(model, path)
        del modules[length:]
    for path, attributes in manifest.get("attributes", {}).items():
        set_attributes(_resolve(model, path), attributes)
    for path, selection in manifest.get("selections", {}).items():
        select_argument(_resolve(model, path), selection["argument"], selection["dim"], selection["index"])
    for path, width in manifest.get("output_widths", {}).items():
        narrow_output(_resolve(model, path), width)


def _pruned_class(base: type) -> type:
    def __init__(self, config, *args, **kwargs):  # noqa: N807
        base.__init__(self, config, *args, **kwargs)
        apply_manifest(self, getattr(config, "reprune_manifest", {}) or {})

    name = f"{PREFIX}{base.__name__}"
    _share_weight_renames(base, name)
    return type(name, (base,), {"__init__": __init__, "__module__": __name__})


def _share_weight_renames(base: type, name: str) -> None:
    """Give class ``name`` the checkpoint key renames of ``base`` (e.g. GPT-NeoX's ``embed_out`` -> ``lm_head``):
    transformers looks them up by class name or model type and skips classes defined outside it."""
    from transformers import conversion_mapping

    model_type = getattr(getattr(base, "config_class", None), "model_type", None)
    mapping = (conversion_mapping.get_checkpoint_conversion_mapping(base.__name__)
               or (conversion_mapping.get_checkpoint_conversion_mapping(model_type) if model_type else None))
    if mapping:
        conversion_mapping.register_checkpoint_conversion_mapping(name, mapping, overwrite=True)


def __getattr__(name: str) -> type:
    """``Reprune<Class>`` for any transformers class ``<Class>``, built on first access and kept."""
    base = name.removeprefix(PREFIX)
    if base == name or not isinstance(getattr(transformers, base, None), type):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = cls = _pruned_class(getattr(transformers, base))
    return cls
