"""Folder to folder: load a Hugging Face (or reprune) checkpoint, prune it, save the smaller one.

What ``reprune prune`` does, as one library call: every check that needs no model (options, the model's
config.json, memory, the calibration file, the output folder) comes first, and the output folder is
locked for the whole run (:mod:`reprune.outputs`); the record names the input folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reprune import pipeline
from reprune.checkpoint import save_pruned
from reprune.config import PruneConfig
from reprune.data import Calibration
from reprune.model_card import write_card
from reprune.models import BUNDLED_HUB_IDS, is_gguf, load_model, resolve_model_dir
from reprune.outputs import check_output_dir, reserve_output
from reprune.outputs import write_json
from reprune.preflight import check_calibration_file, check_config, check_eval, check_prune
from reprune.record import EVAL_FILE, RECORD_FILE, RunRecord


def prune_folder(model: str | Path, out: str | Path, config: PruneConfig, calibration: Calibration = "wiki-embedded",
                 *, text_field: str = "text", dtype: str = "auto", overwrite: bool = False,
                 progress: bool = True, heldout: Calibration | None = None) -> tuple[Path, RunRecord]:
    """Prune the model in folder ``model`` (or a ``.gguf`` file, or a bundled name: ``smollm2``, ``gemma3``,
    ``minilm``) into folder ``out``, with a model card (``README.md``).

    ``heldout``: text for the held-out rows instead of a slice drawn from ``calibration``.
    Returns the written folder and the run's record (also saved there as ``reprune_report.json``).
    """
    if is_gguf(model):  # the options and the output are checked before the once-per-file conversion
        check_config(config)
        check_output_dir(out, overwrite)
    source = resolve_model_dir(model)  # a GGUF file is checked (exists, readable, GGUF) before it is converted
    check_prune(source, config, dtype, calibration if isinstance(calibration, (str, Path)) else "", text_field)
    if isinstance(heldout, (str, Path)):
        check_calibration_file(str(heldout), text_field)
    with reserve_output(out, overwrite, inputs=[source]):
        loaded, tokenizer, folder = load_model(source, dtype)
        loaded, record = pipeline.prune(loaded, calibration, config, tokenizer=tokenizer, text_field=text_field,
                                        progress=progress, heldout=heldout)
        record.input_model = str(Path(model).resolve()) if is_gguf(model) else str(folder)
        record.base_model = BUNDLED_HUB_IDS.get(str(model))
        return save_pruned(loaded, tokenizer, out, record, overwrite=overwrite), record


@dataclass
class EvalOptions:
    """What ``reprune eval`` measures; every field maps to the option of the same name."""

    ppl: str | None = None  # text file for perplexity
    seq_lens: list[int] = field(default_factory=lambda: [512])
    max_windows: int | None = None
    tasks: list[str] = field(default_factory=list)
    task_files: dict[str, str] = field(default_factory=dict)  # task name -> local .jsonl(.gz) instead of the shared one
    limit: int | None = None
    sts: bool = False
    speed: bool = False
    speed_batch: int = 1
    speed_len: int = 128
    batch_size: int = 8
    device: str | None = None
    json: str | None = None  # default: <checkpoint>/reprune_eval.json for reprune checkpoints


def evaluate_folder(model: str | Path, options: EvalOptions, dtype: str = "auto",
                    announce: Callable[[str], None] = print) -> tuple[dict[str, Any], Path | None]:
    """Measure the model in folder ``model`` (or a ``.gguf`` file, or a bundled name); returns the results and
    where they were written. Every option and file is checked before the model loads; results are written
    after each metric, so a later failure loses nothing; a reprune checkpoint's model card shows them.
    ``announce`` gets one line per metric."""
    from reprune import evaluation

    source = resolve_model_dir(model)
    check_eval(source, ppl=options.ppl, seq_lens=options.seq_lens, tasks=options.tasks, sts=options.sts,
               limit=options.limit, batch_size=options.batch_size, max_windows=options.max_windows,
               speed_batch=options.speed_batch, speed_len=options.speed_len, device=options.device,
               json_path=options.json, task_files=options.task_files)
    target = Path(options.json) if options.json else None
    if target is None and (source / RECORD_FILE).exists():
        target = source / EVAL_FILE  # beside the checkpoint, where `reprune report` looks
    beside = target == source / EVAL_FILE and (source / RECORD_FILE).is_file()
    card_record = RunRecord.read(source) if beside else None  # the model card shows the folder's own evaluation
    loaded, tokenizer, folder = load_model(source, dtype, options.device)
    results: dict[str, Any] = {"model": str(folder), "parameters": sum(p.numel() for p in loaded.parameters()),
                               "bytes_on_disk": evaluation.directory_size(folder)}

    def keep(key: str, value: Any) -> None:
        results[key] = value
        if target is not None:
            write_json(target, results)
        if card_record is not None:
            write_card(source, card_record, results)

    if options.ppl:
        text = evaluation.read_text_file(options.ppl)
        for seq_len in options.seq_lens:
            r = evaluation.perplexity(loaded, tokenizer, text, seq_len=seq_len, batch_size=options.batch_size,
                                      max_windows=options.max_windows, device=options.device)
            keep(f"ppl@{seq_len}", r)
            announce(f"perplexity ({Path(options.ppl).name}, length {seq_len}): {r['ppl']:.3f}")
    for task in options.tasks:
        paths = {task: options.task_files[task]} if task in options.task_files else None
        r = evaluation.evaluate_tasks(loaded, tokenizer, [task], paths, limit=options.limit,
                                      batch_size=options.batch_size, device=options.device)[task]
        keep("tasks", {**results.get("tasks", {}), task: r})
        announce(f"{task}: " + ", ".join(f"{k}={v:.4f}" for k, v in r.items() if isinstance(v, float)))
    if options.sts:
        keep("sts", evaluation.sts_spearman(loaded, tokenizer, device=options.device, limit=options.limit))
        announce(f"STS-B dev Spearman: {results['sts']['spearman']:.4f}")
    if options.speed:
        keep("speed", evaluation.measure_speed(loaded, tokenizer, batch_size=options.speed_batch,
                                               prompt_len=options.speed_len, device=options.device))
        announce("speed: " + ", ".join(f"{k}={v:.4g}" for k, v in results["speed"].items()
                                       if isinstance(v, (int, float))))
    return results, target
