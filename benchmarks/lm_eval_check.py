"""Our zero-shot scorer against lm-evaluation-harness: the same prompts, the same log-likelihoods, the same
predictions, item by item.

lm-eval runs its own ``piqa`` / ``arc_easy`` task definitions (prompt templates, choices, targets) on the
shared data files, rewritten into the field layout those definitions read (HF dataset names need a network;
the rows are the same). reprune scores the same files with :mod:`reprune.evaluation`. Per model and task the
script prints whether every (context, continuation) pair is identical, the largest log-likelihood difference,
and for how many items our acc / acc_norm correctness differs from lm-eval's per-sample metrics; it exits 1 if any prompt differs, any difference
exceeds ``--tolerance`` or any prediction differs.

Needs lm-eval (``pip install "lm-eval[hf]==0.4.13"``) beside reprune, in a virtual environment of its own:

    python benchmarks/lm_eval_check.py --models smollm2 runs/smol-20 runs/smol-20-global --limit 200
"""

from __future__ import annotations

import argparse
import json
import string
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from reprune.checkpoint import load
from reprune.evaluation.tasks import default_task_path, load_task
from reprune.evaluation.zero_shot import _answer_length, loglikelihoods
from reprune.models import resolve_model_dir

TASKS = ("piqa", "arc_easy")


def _piqa_rows(path: Path) -> list[dict]:
    """The original release (goal/sol1/sol2 + labels file) as rows with a ``label`` field, as lm-eval reads."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    labels = path.with_name("valid-labels.lst").read_text().split()
    return [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(label)}
            for r, label in zip(rows, labels, strict=True)]


def _arc_rows(path: Path) -> list[dict]:
    """MosaicML rows (query "Question: …", choices, gold) in the HF layout lm-eval's arc_easy reads."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        labels = list(string.ascii_uppercase[: len(r["choices"])])
        rows.append({"question": r["query"].removeprefix("Question: "), "choices": {"text": r["choices"], "label": labels},
                     "answerKey": labels[r["gold"]]})
    return rows


def write_lm_eval_tasks(folder: Path) -> dict[str, str]:
    """lm-eval task configs: the stock ``piqa``/``arc_easy`` definitions (prompts, choices, targets, metrics)
    with only the data source replaced by local JSONL."""
    import lm_eval
    import yaml

    stock = Path(lm_eval.__file__).parent / "tasks"
    names = {}
    for task, rows, yaml_path in (("piqa", _piqa_rows(default_task_path("piqa")), stock / "piqa" / "piqa.yaml"),
                                  ("arc_easy", _arc_rows(default_task_path("arc_easy")), stock / "arc" / "arc_easy.yaml")):
        data = folder / f"{task}.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        names[task] = f"{task}_reprune_check"
        config = yaml.safe_load(yaml_path.read_text())
        config.pop("tag", None)
        config |= {"task": names[task], "dataset_path": "json", "dataset_name": None,
                   "dataset_kwargs": {"data_files": {"test": str(data)}}, "training_split": None,
                   "validation_split": None, "test_split": "test"}
        (folder / f"{task}.yaml").write_text(yaml.safe_dump(config))
    return names


def compare(model_name: str, limit: int | None, batch_size: int, tolerance: float) -> list[dict]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    folder = resolve_model_dir(model_name)
    manifest = "reprune_manifest" in json.loads((folder / "config.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        names = write_lm_eval_tasks(Path(tmp))
        out = simple_evaluate(model="hf", model_args=f"pretrained={folder},dtype=float32,trust_remote_code={manifest}",
                              tasks=list(names.values()), task_manager=TaskManager(include_path=tmp), limit=limit,
                              batch_size=batch_size, device="cpu", log_samples=True, num_fewshot=0)
    model = load(folder, dtype=torch.float32).eval()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    # lm-eval scores every task's requests in one call, so batches mix tasks: score them together likewise
    samples = {task: sorted(out["samples"][name], key=lambda s: s["doc_id"]) for task, name in names.items()}
    items = {task: load_task(task, default_task_path(task), limit) for task in names}
    flat = [request for task in names for item in items[task] for request in item.requests()]
    scores = iter(score.logprob for score in loglikelihoods(model, tokenizer, flat, batch_size, progress=False))
    rows = []
    for task in names:
        ours_requests = [item.requests() for item in items[task]]
        theirs_requests = [[tuple(arg[:2]) for arg in s["arguments"]] for s in samples[task]]
        same_prompts = ours_requests == theirs_requests
        ours = [next(scores) for requests in ours_requests for _ in requests]
        theirs = [float(resp[0][0]) for s in samples[task] for resp in s["resps"]]
        diff = float(np.max(np.abs(np.array(ours) - np.array(theirs))))
        acc_diff = norm_diff = position = 0
        for item, sample in zip(items[task], samples[task]):  # our correctness per item against lm-eval's own
            choice_scores = np.array(ours[position:position + item.num_choices])
            lengths = np.array([_answer_length(c) for _, c in item.requests()], dtype=float)
            position += item.num_choices
            acc_diff += int(float(np.argmax(choice_scores) == item.gold) != sample["acc"])
            norm_diff += int(float(np.argmax(choice_scores / lengths) == item.gold) != sample["acc_norm"])
        rows.append({"model": model_name, "task": task, "n": len(items[task]), "same_prompts": same_prompts,
                     "max_abs_loglik_diff": diff, "acc_predictions_differing": acc_diff,
                     "acc_norm_predictions_differing": norm_diff,
                     "ok": same_prompts and diff <= tolerance and acc_diff == 0 and norm_diff == 0})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["smollm2"], help="model folders or bundled names")
    p.add_argument("--limit", type=int, help="first N items per task (default: all)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tolerance", type=float, default=3e-5)
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()
    rows = [row for model in args.models for row in compare(model, args.limit, args.batch_size, args.tolerance)]
    print("| model | task | n | same prompts | max abs Δ log-lik | items whose acc differs | items whose acc_norm differs |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['task']} | {r['n']} | {r['same_prompts']} | {r['max_abs_loglik_diff']:.2e} | "
              f"{r['acc_predictions_differing']} | {r['acc_norm_predictions_differing']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
