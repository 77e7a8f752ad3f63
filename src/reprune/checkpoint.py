"""Checkpoint I/O: a ``save_pretrained`` folder (safetensors, tokenizer, config, report).

A uniformly pruned model whose sizes the config can state loads with plain transformers. Otherwise
the config carries a ``reprune_manifest`` of the changed projection shapes, and a small modelling file
in the folder makes it load with ``trust_remote_code=True`` (or with :func:`load`) without reprune.
Output goes through :mod:`reprune.outputs` (locked, staged beside the target, swapped in when complete).
"""

from __future__ import annotations

import copy
import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers.pytorch_utils import Conv1D

from reprune.adapters import ModelAdapter, get_adapter
from reprune.outputs import REPORT_FILE, OutputExistsError, check_output_dir, reserve_output  # noqa: F401
from reprune.pipeline import layer_shapes
from reprune.preflight import PreflightError, check_device, read_model_config
from reprune.remote_code import modeling_reprune

REMOTE_FILE = "modeling_reprune.py"

AUTO_CLASSES = (
    ("ForCausalLM", "AutoModelForCausalLM"),
    ("LMHeadModel", "AutoModelForCausalLM"),
    ("ForMaskedLM", "AutoModelForMaskedLM"),
    ("ForSequenceClassification", "AutoModelForSequenceClassification"),
    ("Model", "AutoModel"),
)


def _shape_spec(module: nn.Module) -> dict[str, Any]:
    if isinstance(module, Conv1D):
        return {"type": "Conv1D", "in": module.weight.shape[0], "out": module.weight.shape[1], "bias": True}
    return {"type": "Linear", "in": module.in_features, "out": module.out_features, "bias": module.bias is not None}


def _reference_model(model: nn.Module, config: transformers.PretrainedConfig) -> nn.Module:
    """The architecture as ``config`` alone would build it, on the meta device (no memory)."""
    with torch.device("meta"):
        return type(model)(config)


def manifest_against(model: nn.Module, config: transformers.PretrainedConfig, adapter: ModelAdapter) -> dict[str, Any]:
    """Projections whose shape or bias differs from what ``config`` builds, plus attention attributes."""
    reference = _reference_model(model, config)
    modules = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, Conv1D)):
            spec = _shape_spec(module)
            if spec != _shape_spec(reference.get_submodule(name)):
                modules[name] = spec
    if not modules:
        return {}
    paths = {id(m): name for name, m in model.named_modules()}
    attributes = {}
    for index, shape in enumerate(layer_shapes(adapter)):
        attention = adapter.depth2_modules(index)[0]
        attributes[paths[id(attention.parent)]] = adapter.attention_attributes(
            shape["num_heads"], shape["num_kv_heads"], shape["head_dim"])
    return {"version": 1, "modules": modules, "attributes": attributes}


def _auto_map(model: nn.Module) -> dict[str, str]:
    names = [type(model).__name__, type(model.base_model).__name__]
    mapping = {}
    for name in names:
        for suffix, auto in AUTO_CLASSES:
            if name.endswith(suffix) and auto not in mapping:
                mapping[auto] = f"modeling_reprune.Reprune{name}"
                break
    return mapping


def finalise_config(model: nn.Module, pruning_summary: dict[str, Any]) -> bool:
    """Make ``model.config`` describe the pruned model; returns True if plain transformers can load it."""
    adapter = get_adapter(model)
    original = copy.deepcopy(model.config)
    for key in ("reprune_manifest", "auto_map"):
        if hasattr(original, key):
            delattr(original, key)
    plain = copy.deepcopy(original)
    updates = adapter.plain_config_updates(layer_shapes(adapter))
    if updates is not None:
        for key, value in {**updates, **adapter.bias_config_updates()}.items():
            setattr(plain, key, value)
        try:
            plain.validate()  # e.g. LlamaConfig insists that hidden_size is a multiple of the head count
        except Exception:  # noqa: BLE001  (any validation failure means: not expressible)
            updates = None
    if updates is not None and not manifest_against(model, plain, adapter):
        config, is_plain = plain, True
    else:
        config, is_plain = original, False
        config.reprune_manifest = manifest_against(model, original, adapter)
        if type(model).__name__ not in modeling_reprune.SUPPORTED:
            raise ValueError(f"{type(model).__name__} cannot be saved with per-layer sizes yet")
        config.auto_map = _auto_map(model)
    config.reprune = pruning_summary
    model.config = config
    return is_plain


def save_pruned(model: nn.Module, tokenizer: Any, out_dir: str | Path, report: dict[str, Any] | None = None,
                overwrite: bool = False) -> Path:
    """Write the pruned model atomically (see :mod:`reprune.outputs`); the folder the model was loaded
    from, and any folder holding it, is never replaced."""
    source = Path(getattr(model.config, "name_or_path", "") or "")
    inputs = [source] if str(source) and source.is_dir() else []
    with reserve_output(out_dir, overwrite, inputs) as reservation:
        summary = {} if report is None else {
            key: report["config"][key] for key in ("ratio", "criterion", "attention_criterion", "ffn_criterion",
                                                   "reconstruction", "recovery", "allocation", "targets", "gqa_mode")
        }
        is_plain = finalise_config(model, summary)
        with reservation.staging() as staging:
            model.save_pretrained(staging)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
            if not is_plain:
                shutil.copyfile(Path(modeling_reprune.__file__), staging / REMOTE_FILE)
            if report is not None:
                (staging / REPORT_FILE).write_text(json.dumps({**report, "plain_transformers": is_plain}, indent=2))
        return reservation.out


class PickleCheckpointError(PreflightError):
    """The weights are a pickle that torch's safe (weights-only) loader refuses."""


def load(model_dir: str | Path, dtype: torch.dtype | str | None = None, device: str | None = None) -> nn.Module:
    """Load any reprune checkpoint (plain or per-layer sizes) or an ordinary Hugging Face folder.

    Code in the folder is never run: reprune's own per-layer checkpoints load with reprune's copy of
    ``modeling_reprune``, everything else with the transformers class that ``config.architectures`` names.
    """
    path = Path(model_dir)
    read_model_config(path)
    check_device(device)
    config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=False)
    architecture = (config.architectures or [None])[0]
    if architecture is None or not hasattr(transformers, architecture):
        raise ValueError(f"{path}: config.architectures does not name a transformers class ({architecture!r})")
    cls = getattr(transformers, architecture)
    if getattr(config, "reprune_manifest", None):
        cls = getattr(modeling_reprune, f"Reprune{architecture}")
    kwargs: dict[str, Any] = {"dtype": dtype or "auto", "trust_remote_code": False}
    try:
        model = cls.from_pretrained(path, config=config, **kwargs)
    except pickle.UnpicklingError as err:
        lines = str(err).splitlines() or ["(no reason given)"]
        reason = next((line for line in lines if "GLOBAL" in line), lines[0])
        pickles = ", ".join(sorted(p.name for p in path.glob("*.bin"))) or "the weights file"
        raise PickleCheckpointError(
            f"{path}: {pickles} is a pickle that torch's safe (weights-only) loader refused: {reason} reprune never "
            "unpickles arbitrary objects, which can run code. If you trust the file, convert it once to safetensors, "
            "e.g. python -c \"import torch, safetensors.torch as s; s.save_file(torch.load('pytorch_model.bin', "
            "weights_only=False), 'model.safetensors')\" in the folder, then remove the .bin file.") from None
    return model.to(device) if device else model
