"""Folder to folder: load a Hugging Face (or reprune) checkpoint, prune it, save the smaller one.

What ``reprune prune`` does, as one library call: every cheap check (the output folder) comes before
the model is loaded, and the record names the input folder.
"""

from __future__ import annotations

from pathlib import Path

from reprune.checkpoint import check_output_dir, save_pruned
from reprune.config import PruneConfig
from reprune.data import Calibration
from reprune.models import load_model
from reprune.pipeline import prune
from reprune.record import RunRecord


def prune_folder(model: str | Path, out: str | Path, config: PruneConfig, calibration: Calibration = "wiki-embedded",
                 *, text_field: str = "text", dtype: str = "auto", overwrite: bool = False,
                 progress: bool = True) -> tuple[Path, RunRecord]:
    """Prune the model in folder ``model`` (or a bundled name: ``smollm2``, ``minilm``) into folder ``out``.

    Returns the written folder and the run's record (also saved there as ``reprune_report.json``).
    """
    check_output_dir(out, overwrite)
    loaded, tokenizer, folder = load_model(model, dtype)
    loaded, record = prune(loaded, calibration, config, tokenizer=tokenizer, text_field=text_field,
                           progress=progress)
    record.input_model = str(folder)
    return save_pruned(loaded, tokenizer, out, record, overwrite=overwrite), record
