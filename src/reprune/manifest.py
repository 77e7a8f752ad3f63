"""The manifest: what a pruned model has that the model its config builds lacks (projection shapes and
biases, per-head parameters, module list lengths, argument selections, output widths of norms over all
heads), for :mod:`reprune.remote_code` to rebuild. An empty manifest means the config alone describes the model.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from torch import nn
from transformers.pytorch_utils import Conv1D

from reprune.adapters import ModelAdapter
from reprune.remote_code import modeling_reprune


def _shape_spec(module: nn.Module) -> dict[str, Any]:
    if isinstance(module, Conv1D):
        return {"type": "Conv1D", "in": module.weight.shape[0], "out": module.weight.shape[1], "bias": True}
    return {"type": "Linear", "in": module.in_features, "out": module.out_features, "bias": module.bias is not None}


def _reference_model(model: nn.Module, config: transformers.PretrainedConfig) -> nn.Module:
    """The architecture as ``config`` alone would build it, on the meta device (no memory)."""
    with torch.device("meta"):
        return type(model)(config)


def manifest_against(model: nn.Module, config: transformers.PretrainedConfig, adapter: ModelAdapter) -> dict[str, Any]:
    """What differs from the model ``config`` builds: projection shapes and biases, other parameters'
    shapes (per-head norms, a mixture's 3-D expert parameters), biases reprune gave a mixture's experts,
    module list lengths (per-head norm lists), argument selections (heads of a shared position bias), output
    widths (kept heads of a norm over all heads); plus the attention attributes. Empty when nothing differs."""
    reference = _reference_model(model, config)
    modules, parameters, expert_biases, module_lists, selections, output_widths = {}, {}, {}, {}, {}, {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, Conv1D)):
            spec = _shape_spec(module)
            if spec != _shape_spec(reference.get_submodule(name)):
                modules[name] = spec
            continue
        for param_name, param in module.named_parameters(recurse=False):
            if param_name == modeling_reprune.EXPERT_BIAS:
                expert_biases[name] = list(param.shape)
            elif param.shape != getattr(reference.get_submodule(name), param_name).shape:
                parameters[f"{name}.{param_name}" if name else param_name] = list(param.shape)
        if isinstance(module, nn.ModuleList) and len(module) != len(reference.get_submodule(name)):
            module_lists[name] = len(module)
        if hasattr(module, modeling_reprune.SELECTION):
            selections[name] = getattr(module, modeling_reprune.SELECTION)
        if hasattr(module, modeling_reprune.OUTPUT_WIDTH):
            output_widths[name] = getattr(module, modeling_reprune.OUTPUT_WIDTH)
    if not (modules or parameters or expert_biases or module_lists or selections or output_widths):
        return {}
    paths = {id(m): name for name, m in model.named_modules()}
    attributes = {}
    for index, shape in enumerate(adapter.layer_shapes()):
        attention = adapter.depth2_modules(index)[0]
        attributes[paths[id(attention.parent)]] = adapter.attention_attributes(
            shape.num_heads, shape.num_kv_heads, shape.head_dim)
    return {"version": 1, "modules": modules, "parameters": parameters, "expert_biases": expert_biases,
            "module_lists": module_lists, "selections": selections, "output_widths": output_widths,
            "attributes": attributes}
