"""Folder to folder: load a Hugging Face (or reprune) checkpoint, prune it, save the smaller one.

What ``reprune prune`` does, as one library call: every check that needs no model (options, the model's
config.json, memory, the calibration file, the output folder) comes first, and the output folder is
locked for the whole run (:mod:`reprune.outputs`); the record names the input folder.
"""

from __future__ import annotations

from pathlib import Path

from reprune import pipeline
from reprune.checkpoint import save_pruned
from reprune.config import PruneConfig
from reprune.data import Calibration
from reprune.models import load_model, resolve_model_dir
from reprune.outputs import reserve_output
from reprune.preflight import check_prune
from reprune.record import RunRecord


def prune_folder(model: str | Path, out: str | Path, config: PruneConfig, calibration: Calibration = "wiki-embedded",
                 *, text_field: str = "text", dtype: str = "auto", overwrite: bool = False,
                 progress: bool = True) -> tuple[Path, RunRecord]:
    """Prune the model in folder ``model`` (or a bundled name: ``smollm2``, ``minilm``) into folder ``out``.

    Returns the written folder and the run's record (also saved there as ``reprune_report.json``).
    """
    source = resolve_model_dir(model)
    check_prune(source, config, dtype, calibration if isinstance(calibration, (str, Path)) else "", text_field)
    with reserve_output(out, overwrite, inputs=[source]):
        loaded, tokenizer, folder = load_model(source, dtype)
        loaded, record = pipeline.prune(loaded, calibration, config, tokenizer=tokenizer, text_field=text_field,
                                        progress=progress)
        record.input_model = str(folder)
        return save_pruned(loaded, tokenizer, out, record, overwrite=overwrite), record
