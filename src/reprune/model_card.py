"""The Hugging Face model card (``README.md``) of every folder reprune writes.

YAML front matter for the Hub (``base_model`` where the input is a known Hub model, ``library_name``, ``tags``,
``pipeline_tag``, and a ``reprune`` summary of the run), then what was pruned, how, on which calibration data,
the latest ``reprune eval`` results, and how to load the folder. The card is rendered from the run record
(and the evaluation results), never edited in place: ``save_pruned`` writes it inside the staging folder,
``reprune eval`` re-renders it with its results.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from reprune.record import RunRecord

CARD_FILE = "README.md"
# the pipeline tag and auto class of a model class, by the suffix of its name
_TASKS = (
    ("ForCausalLM", "text-generation", "AutoModelForCausalLM"),
    ("ForConditionalGeneration", "image-text-to-text", "AutoModelForImageTextToText"),
    ("ForMaskedLM", "fill-mask", "AutoModelForMaskedLM"),
    ("ForSequenceClassification", "text-classification", "AutoModelForSequenceClassification"),
    ("Model", "feature-extraction", "AutoModel"),
)


def _task(architecture: str) -> tuple[str | None, str]:
    """Pipeline tag (None: unknown) and auto class of ``architecture``."""
    for suffix, pipeline_tag, auto_class in _TASKS:
        if architecture.endswith(suffix):
            return pipeline_tag, auto_class
    return None, "AutoModel"


def front_matter(record: RunRecord) -> dict[str, Any]:
    """The card's metadata; every value comes from the record."""
    config, counts = record.config, record.parameters
    pipeline_tag, _ = _task(record.architecture)
    meta: dict[str, Any] = {}
    if record.base_model:
        meta["base_model"] = record.base_model
    meta |= {"library_name": "transformers",
             "tags": ["reprune", "pruning", "structured-pruning", record.model_type]}
    if pipeline_tag:
        meta["pipeline_tag"] = pipeline_tag
    meta["reprune"] = {
        "criterion": config.criterion, "attention_criterion": config.attention_criterion,
        "ffn_criterion": config.ffn_criterion, "reconstruction": config.reconstruction,
        "allocation": config.allocation, "recovery": config.recovery, "targets": config.targets,
        "ratio": config.ratio, "ratio_prunable": counts.ratio_prunable, "ratio_total": counts.ratio_total,
        "parameters_before": counts.total_before, "parameters_after": counts.total_after,
        "calibration_source": record.calibration.source if record.calibration.used else None,
        "calibration_samples": record.calibration.num_samples if record.calibration.used else None,
        "calibration_seq_len": record.calibration.seq_len if record.calibration.used else None,
        "plain_transformers": record.plain_transformers,
    }
    return meta


def _yaml(value: Any, indent: int = 0) -> list[str]:
    """Block YAML of nested dicts and lists of scalars; scalars are JSON, which YAML reads as the same values."""
    pad = " " * indent
    lines = []
    for key, item in value.items():
        if isinstance(item, dict):
            lines += [f"{pad}{key}:", *_yaml(item, indent + 2)]
        elif isinstance(item, list):
            lines += [f"{pad}{key}:", *(f"{pad}- {json.dumps(entry)}" for entry in item)]
        else:
            lines.append(f"{pad}{key}: {json.dumps(item)}")
    return lines


def _method_section(record: RunRecord) -> list[str]:
    config, counts = record.config, record.parameters
    criterion = config.criterion
    if config.attention_criterion or config.ffn_criterion:
        criterion += f" (attention: {config.attention_criterion or criterion}, FFN: {config.ffn_criterion or criterion})"
    rows = [("criterion", criterion), ("reconstruction", config.reconstruction), ("allocation", config.allocation),
            ("recovery", config.recovery or "none"), ("targets", config.targets), ("ratio asked", f"{config.ratio:g}"),
            ("prunable parameters removed", f"{counts.ratio_prunable:.1%} ({counts.prunable_before:,} → "
                                            f"{counts.prunable_after:,})"),
            ("all parameters removed", f"{counts.ratio_total:.1%} ({counts.total_before:,} → {counts.total_after:,})")]
    if record.block_similarities:  # influence: what each FFN's share was set by
        rows.append(("block input-output cosines (dense)",
                     ", ".join(f"{block}: {value:.3f}" for block, value in sorted(record.block_similarities.items()))))
    return ["## Pruning", "", "| setting | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]


def _calibration_section(record: RunRecord) -> list[str]:
    calibration = record.calibration
    if not calibration.used:
        return ["## Calibration", "", "None: the method reads no statistics (data-free).", ""]
    source = calibration.source or "token ids given by the caller"
    extra = [f"{count} more samples {role}" for count, role in (
        (calibration.recovery_samples, "for the recovery"),
        (calibration.heldout_samples, "held out of every fit, on which each layer's error was measured too"))
        if count]
    return ["## Calibration", "",
            f"{calibration.num_samples} samples × {calibration.seq_len} tokens of `{source}` (seed {calibration.seed})"
            + "".join(f"; {line}" for line in extra) + ".", ""]


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _evaluation_section(results: dict[str, Any] | None, name: str) -> list[str]:
    lines = ["## Evaluation", ""]
    if not results:
        return lines + [f"Not evaluated yet. `reprune eval --model {name} ...` adds its results here.", ""]
    lines += ["Results of `reprune eval` on this folder:", "", "| metric | value |", "|---|---|"]
    for key, value in results.items():
        if key.startswith("ppl@"):
            lines.append(f"| perplexity, length {key[4:]} ({value['tokens']:,} tokens) | {value['ppl']:.3f} |")
    for task, scores in results.get("tasks", {}).items():
        for metric in ("acc", "acc_norm", "ppl"):
            if metric in scores:
                lines.append(f"| {task} {metric} (n={scores['n']}) | {scores[metric]:.4f} |")
    if "sts" in results:
        lines.append(f"| STS-B dev Spearman (n={results['sts']['n']}) | {results['sts']['spearman']:.4f} |")
    for metric, value in results.get("speed", {}).items():
        if isinstance(value, (int, float)) and metric.endswith(("_per_s", "_s")):
            lines.append(f"| speed {metric} | {_number(value)} |")
    return lines + [""]


def _loading_section(record: RunRecord) -> list[str]:
    _, auto_class = _task(record.architecture)
    remote = not record.plain_transformers
    argument = ", trust_remote_code=True" if remote else ""
    why = ("Per-layer sizes differ, so the folder carries its loader (`modeling_reprune.py`, named by "
           "`auto_map` in config.json): load it with `trust_remote_code=True`, or with `reprune.checkpoint.load` "
           "without running the folder's code." if remote else
           "The pruned sizes are stated in config.json, so plain transformers loads it.")
    return ["## How to load", "", why, "", "```python",
            f"from transformers import {auto_class}, AutoTokenizer", "",
            f'model = {auto_class}.from_pretrained("path/to/this/folder"{argument})',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")', "```", ""]


def render_card(record: RunRecord, name: str, results: dict[str, Any] | None = None) -> str:
    """The whole ``README.md`` of the folder called ``name``."""
    source = record.base_model or record.input_model or record.architecture
    body = [f"# {name}", "",
            f"`{source}` ({record.architecture}) with {record.parameters.ratio_total:.1%} of its parameters removed by "
            "structured pruning (attention heads and FFN neurons) with reprune, without retraining.", "",
            *_method_section(record), *_calibration_section(record), *_evaluation_section(results, name),
            *_loading_section(record)]
    return "\n".join(["---", *_yaml(front_matter(record)), "---", "", *body])


def write_card(folder: str | Path, record: RunRecord, results: dict[str, Any] | None = None,
               name: str | None = None) -> Path:
    """Write (or replace, in one rename) the card of ``folder``, whose final name is ``name`` (default: its own;
    a staging folder passes the output's)."""
    folder = Path(folder)
    path = folder / CARD_FILE
    staging = folder / f".{CARD_FILE}.partial-{os.getpid()}"
    try:
        staging.write_text(render_card(record, name or folder.name, results), encoding="utf-8")
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return path
