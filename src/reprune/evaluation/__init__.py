"""Evaluation of dense and pruned models: perplexity, zero-shot tasks, encoder quality, size and speed."""

from reprune.evaluation.encoder import (
    Probe,
    embed,
    fit_probe,
    glue_probe,
    read_glue_tsv,
    score_probe,
    sts_spearman,
    stsb_label,
    stsb_probe,
)
from reprune.evaluation.perplexity import perplexity, read_text_file
from reprune.evaluation.speed import compare_speed, directory_size, forward_flops, measure_speed
from reprune.evaluation.tasks import TASKS, MultipleChoiceItem, default_task_path, load_task
from reprune.evaluation.zero_shot import evaluate_items, evaluate_task, evaluate_tasks, loglikelihoods

__all__ = [
    "TASKS",
    "MultipleChoiceItem",
    "Probe",
    "compare_speed",
    "default_task_path",
    "directory_size",
    "embed",
    "evaluate_items",
    "evaluate_task",
    "evaluate_tasks",
    "fit_probe",
    "forward_flops",
    "glue_probe",
    "load_task",
    "loglikelihoods",
    "measure_speed",
    "perplexity",
    "read_glue_tsv",
    "read_text_file",
    "score_probe",
    "sts_spearman",
    "stsb_label",
    "stsb_probe",
]
