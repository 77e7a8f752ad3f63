"""Checkpoint I/O: a ``save_pretrained`` folder (safetensors, tokenizer, config, run record).

A uniformly pruned model whose sizes and biases a stock config can state (its own architecture's, or one it
is exactly, see :mod:`reprune.stock`) loads with plain transformers. Otherwise
the config carries a ``reprune_manifest`` of the changed projection shapes, and a small modelling file
in the folder makes it load with ``trust_remote_code=True`` (or with :func:`load`) without reprune.
Output goes through :mod:`reprune.outputs` (locked, staged beside the target, swapped in when complete).
"""

from __future__ import annotations

import dataclasses
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers.models.auto import modeling_auto

from reprune.adapters import get_adapter
from reprune.allocation import count_parameters, prunable_parameters
from reprune.manifest import manifest_against
from reprune.model_card import write_card
from reprune.outputs import OutputExistsError, check_output_dir, reserve_output  # noqa: F401  (re-exported)
from reprune.preflight import PreflightError, check_device, read_model_config
from reprune.record import REMOTE_FILE, ParameterCounts, RunRecord
from reprune.remote_code import modeling_reprune
from reprune.stock import StockForm, bare_config, stock_form

# auto classes a checkpoint's ``auto_map`` may name, with transformers' table of their model classes
AUTO_MAPPINGS = (
    ("AutoModelForCausalLM", modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
    ("AutoModelForMaskedLM", modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES),
    ("AutoModelForSequenceClassification", modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES),
    ("AutoModel", modeling_auto.MODEL_MAPPING_NAMES),
)
# the config fields a checkpoint's ``config.reprune`` summary repeats from the record
SUMMARY_FIELDS = ("ratio", "criterion", "attention_criterion", "ffn_criterion", "reconstruction", "recovery",
                  "allocation", "targets", "gqa_mode")


def _auto_map(model: nn.Module) -> dict[str, str]:
    """The auto classes under which transformers lists the model's class and its base model's class."""
    mapping = {}
    for name in (type(model).__name__, type(model.base_model).__name__):
        for auto, classes in AUTO_MAPPINGS:
            listed = classes.get(model.config.model_type, ())
            if name in ((listed,) if isinstance(listed, str) else listed) and auto not in mapping:
                mapping[auto] = f"modeling_reprune.Reprune{name}"
                break
    return mapping


def finalise_config(model: nn.Module, pruning_summary: dict[str, Any]) -> StockForm | None:
    """Make ``model.config`` describe the pruned model in its own architecture (with a manifest where its
    config cannot state every size and bias); returns the stock form that saving writes instead, if any."""
    form = stock_form(model)
    if form is not None and not form.reexpressed:
        config = form.config
    else:
        config = bare_config(model.config)
        config.reprune_manifest = manifest_against(model, config, get_adapter(model))
        if form is None and not hasattr(transformers, type(model).__name__):
            raise ValueError(f"{type(model).__name__} is not a transformers class, so its per-layer sizes cannot "
                             "be saved for the loader; prune the model as loaded from its Hugging Face folder")
        config.auto_map = _auto_map(model)
    config.reprune = pruning_summary
    model.config = config
    if form is not None:
        form.config.reprune = pruning_summary
    return form


def _saved_counts(counts: ParameterCounts, saved: nn.Module) -> ParameterCounts:
    """The counts of the model as saved: a stock rewrite's config may state biases for every projection
    (LLaMA's ``attention_bias``/``mlp_bias``), whose zero partners load back as parameters."""
    return dataclasses.replace(counts, total_after=count_parameters(saved),
                               prunable_after=prunable_parameters(get_adapter(saved)))


def save_pruned(model: nn.Module, tokenizer: Any, out_dir: str | Path, record: RunRecord | None = None,
                overwrite: bool = False) -> Path:
    """Write the pruned model atomically (see :mod:`reprune.outputs`); the folder the model was loaded
    from, and any folder holding it, is never replaced."""
    source = getattr(model.config, "name_or_path", "") or ""  # empty for a model built from a config, not "."
    inputs = [Path(source)] if source and Path(source).is_dir() else []
    with reserve_output(out_dir, overwrite, inputs) as reservation:
        summary = {} if record is None else {key: getattr(record.config, key) for key in SUMMARY_FIELDS}
        form = finalise_config(model, summary)
        saved = model if form is None else form.model_to_save(model)
        with reservation.staging() as staging:
            saved.save_pretrained(staging)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
            if form is None:
                shutil.copyfile(Path(modeling_reprune.__file__), staging / REMOTE_FILE)
            if record is not None:
                final = dataclasses.replace(record, plain_transformers=form is not None,
                                            saved_architecture=type(saved).__name__,
                                            parameters=_saved_counts(record.parameters, saved))
                final.write(staging)
                write_card(staging, final, name=reservation.out.name)
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
