"""SmolLM2-135M dense vs pruned: zero-shot tasks, WikiText-2 perplexity, size and speed.

Each variant is pruned, saved with :func:`reprune.checkpoint.save_pruned`, loaded back from disk (the
checkpoint a user would ship) and evaluated: zero-shot accuracy on the shared task files (lm-eval's
log-likelihood scoring, first ``--limit`` items of each), WikiText-2 test perplexity at length 512,
bytes on disk, and prefill / KV-cached decode throughput at the same batch and length as the dense model.
A variant is ``PRESET`` followed by ``:RECONSTRUCTION`` and/or ``:FIELD=VALUE`` changes (e.g. ``goa:liar`` =
the GOA preset, then LIAR; ``goa:liar:recovery=none`` = GOA's criteria and kept blocks, LIAR, no recovery).

    python -m benchmarks.smollm2_eval --variants liar,goa --ratios 0.2,0.5 --limit 300
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks.common import ResultLog, markdown_table
from reprune.checkpoint import load, save_pruned
from reprune.data import calibration_ids
from reprune.evaluation import directory_size, evaluate_tasks, measure_speed, perplexity, read_text_file
from reprune.models import shared_data_dir, smollm2_path
from reprune import prune
from reprune.presets import preset_config

RESULTS = Path(__file__).parent / "results"
TASKS = "boolq,piqa,winogrande,arc_easy,arc_challenge,openbookqa,lambada"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="liar,goa", help="PRESET[:RECONSTRUCTION][:FIELD=VALUE...], comma-separated")
    p.add_argument("--ratios", default="0.2,0.5")
    p.add_argument("--tasks", default=TASKS)
    p.add_argument("--limit", type=int, default=None, help="first N items of each task (default: all)")
    p.add_argument("--eval-tokens", type=int, default=16384, help="first N tokens of WikiText-2 test")
    p.add_argument("--speed-batch", type=int, default=1)
    p.add_argument("--speed-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tag", default="smollm2-eval")
    return p.parse_args()


def evaluate(model: torch.nn.Module, tokenizer: Any, folder: Path, text: str, args: argparse.Namespace
             ) -> dict[str, Any]:
    """Every number of one row: tasks, perplexity, size and speed of the checkpoint in ``folder``."""
    start = time.perf_counter()
    tasks = evaluate_tasks(model, tokenizer, [t for t in args.tasks.split(",") if t], limit=args.limit,
                           batch_size=args.batch_size, device=args.device, progress=False)
    ppl = perplexity(model, tokenizer, text, seq_len=512, batch_size=8, max_windows=args.eval_tokens // 512,
                     device=args.device)["ppl"]
    speed = measure_speed(model, tokenizer, batch_size=args.speed_batch, prompt_len=args.speed_len,
                          device=args.device)
    row: dict[str, Any] = {"ppl512": ppl, "params": speed["params"], "bytes_on_disk": directory_size(folder),
                           "prefill_tok_s": speed["prefill_tokens_per_s"], "decode_tok_s": speed["decode_tokens_per_s"],
                           "eval_seconds": time.perf_counter() - start}
    for name, result in tasks.items():
        row[f"{name}.acc"] = result["acc"]
        row[f"{name}.n"] = result["n"]
        if "acc_norm" in result:
            row[f"{name}.acc_norm"] = result["acc_norm"]
        if "ppl" in result:
            row[f"{name}.ppl"] = result["ppl"]
    # lm-eval papers average acc_norm where a task has it (ARC, OpenBookQA, PIQA), acc elsewhere.
    headline = [tasks[t].get("acc_norm", tasks[t]["acc"]) if t in ("arc_easy", "arc_challenge", "openbookqa", "piqa")
                else tasks[t]["acc"] for t in tasks]
    row["mean_acc"] = sum(headline) / len(headline)
    return row


def main() -> None:
    args = parse_args()
    source = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(source)
    dense = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    text = read_text_file(shared_data_dir() / "wikitext-2-raw" / "canonical" / "wiki.test.raw")
    log = ResultLog(RESULTS / f"{args.tag}.jsonl")
    key = f"limit{args.limit}-tok{args.eval_tokens}-{args.device}"
    rows = [log.run(f"dense-{key}", lambda: {"variant": "dense", "ratio": 0.0, "achieved": 0.0,
                                             **evaluate(dense, tokenizer, source, text, args)})]
    for ratio in [float(r) for r in args.ratios.split(",")]:
        for variant in [v for v in args.variants.split(",") if v]:
            preset, *changes = variant.split(":")
            overrides: dict[str, Any] = {}
            for change in changes:  # RECONSTRUCTION, or FIELD=VALUE (e.g. recovery=none, num_samples=64)
                field, is_pair, value = change.partition("=")
                if not is_pair:
                    field, value = "reconstruction", change
                overrides[field] = int(value) if value.isdigit() else value

            def job(preset: str = preset, overrides: dict = overrides, ratio: float = ratio,
                    variant: str = variant) -> dict[str, Any]:
                config = preset_config(preset, ratio=ratio, device=args.device, **overrides)
                ids = calibration_ids(tokenizer, "wiki-embedded", config.num_samples, config.seq_len, config.seed)
                start = time.perf_counter()
                model, report = prune(copy.deepcopy(dense), ids, config, progress=False)
                seconds = time.perf_counter() - start
                folder = RESULTS / "checkpoints" / f"{variant.replace(':', '+')}-{ratio}"
                save_pruned(model, tokenizer, folder, report, overwrite=True)
                del model
                reloaded = load(folder, dtype=torch.float32).eval()  # what a user would evaluate
                return {"variant": variant, "ratio": ratio, "achieved": report.parameters.ratio_prunable,
                        "prune_seconds": seconds, "calibration": f"{config.num_samples}x{config.seq_len}",
                        **evaluate(reloaded, tokenizer, folder, text, args)}

            print(f"running {variant} at {ratio:.0%} …", flush=True)
            rows.append(log.run(f"{variant}-r{ratio}-{key}", job))

    tasks = [t for t in args.tasks.split(",") if t]
    columns = [("variant", "variant", "{}"), ("ratio", "ratio", "{:.0%}"), ("achieved", "achieved", "{:.1%}")]
    for task in tasks:
        metric = "acc" if task in ("boolq", "winogrande", "lambada") else "acc_norm"
        columns.append((f"{task} {metric}", f"{task}.{metric}", "{:.3f}"))
    columns += [("mean", "mean_acc", "{:.3f}"), ("LAMBADA ppl", "lambada.ppl", "{:.1f}"),
                ("WikiText-2 ppl@512", "ppl512", "{:.2f}")]
    print(f"\nSmolLM2-135M zero-shot, first {args.limit or 'all'} items per task; perplexity on the first "
          f"{args.eval_tokens} WikiText-2 test tokens; device={args.device}\n")
    print(markdown_table(rows, columns))
    dense_row = rows[0]
    for row in rows:
        row["prefill_x"] = row["prefill_tok_s"] / dense_row["prefill_tok_s"]
        row["decode_x"] = row["decode_tok_s"] / dense_row["decode_tok_s"]
        row["mib"] = row["bytes_on_disk"] / 2**20
    print(f"\nSize and speed (batch {args.speed_batch}, prompt {args.speed_len} tokens, 32 decoded tokens, "
          f"median of 3, {args.device})\n")
    print(markdown_table(rows, [("variant", "variant", "{}"), ("ratio", "ratio", "{:.0%}"),
                                ("parameters", "params", "{:,}"), ("MiB on disk", "mib", "{:.1f}"),
                                ("prefill tok/s", "prefill_tok_s", "{:.0f}"), ("× dense", "prefill_x", "{:.2f}"),
                                ("decode tok/s", "decode_tok_s", "{:.1f}"), ("× dense", "decode_x", "{:.2f}"),
                                ("prune s", "prune_seconds", "{:.0f}")]))


if __name__ == "__main__":
    main()
