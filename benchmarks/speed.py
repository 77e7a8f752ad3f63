"""Does speed follow size? SmolLM2-135M pruned at several ratios, with exact kept widths (``--multiple-of 1``)
and rounded ones (the default), each saved and loaded back: parameters, prefill throughput at batch 1 and 8,
KV-cached decode throughput, and the forward FLOPs of its shapes (:func:`reprune.evaluation.forward_flops`).

The issue's target: the prefill speed-up comes within 10 % of the FLOP reduction (``speed-up / FLOPs`` ≥ 0.9).
Pruning is uniform, flap + LIAR, on a small calibration set (speed depends on shapes only). Timings are
:func:`reprune.evaluation.measure_speed`'s (what ``reprune eval --speed`` runs): one warm-up, median of
``--repeats``, random token ids, a fixed thread count. The dense model is measured first and again last;
their gap shows how much the machine drifted meanwhile (other processes share the cores).

    flock /tmp/heavy.lock nice .venv/bin/python -m benchmarks.speed --ratios 0.2,0.35,0.5 --multiples 1,8
    .venv/bin/python -m benchmarks.speed --device cuda   # bfloat16 on the GPU
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from benchmarks.common import ResultLog, markdown_table
from reprune import PruneConfig, prune
from reprune.checkpoint import load, save_pruned
from reprune.data import calibration_ids
from reprune.evaluation import forward_flops, measure_speed
from reprune.models import smollm2_path
from reprune.record import RunRecord

RESULTS = Path(__file__).parent / "results"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ratios", default="0.2,0.35,0.5")
    p.add_argument("--multiples", default="1,8", help="--multiple-of values to compare (1: exact widths)")
    p.add_argument("--length", type=int, default=512, help="prompt length of the prefill and of the FLOP count")
    p.add_argument("--batches", default="1,8", help="prefill batch sizes; decode runs at the first")
    p.add_argument("--new-tokens", type=int, default=32, help="decoded tokens (KV cache) after the prompt")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median), after a warm-up")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on the CPU")
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--calib-len", type=int, default=128)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", help="float32 (CPU default) or bfloat16 (CUDA default)")
    p.add_argument("--tag", default="speed", help="results/<tag>.jsonl; a new tag measures again")
    return p.parse_args()


def pruned_checkpoint(dense: torch.nn.Module, tokenizer: Any, ratio: float, multiple_of: int,
                      args: argparse.Namespace) -> Path:
    """Prune a copy of the dense model (uniform, flap + LIAR) and save it; an existing checkpoint is reused."""
    folder = RESULTS / "checkpoints" / f"speed-r{ratio}-m{multiple_of}-c{args.calib_samples}x{args.calib_len}"
    if (folder / "config.json").exists():
        return folder
    config = PruneConfig(ratio=ratio, criterion="flap", reconstruction="liar", allocation="uniform",
                         multiple_of=multiple_of, num_samples=args.calib_samples, seq_len=args.calib_len,
                         device=args.device)
    ids = calibration_ids(tokenizer, "wiki-embedded", config.num_samples, config.seq_len, config.seed)
    print(f"pruning {ratio:.0%}, multiple of {multiple_of} …", flush=True)
    model, record = prune(copy.deepcopy(dense), ids, config, progress=False)
    save_pruned(model, tokenizer, folder, record, overwrite=True)
    return folder


def measure(folder: Path, tokenizer: Any, dtype: torch.dtype, args: argparse.Namespace) -> dict[str, Any]:
    """Size, FLOPs and speed of the checkpoint in ``folder``, loaded as a user would load it."""
    model = load(folder, dtype=dtype, device=args.device).eval()
    batches = [int(b) for b in args.batches.split(",")]
    shapes = model.config
    row: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters()),
                           "flops": forward_flops(model, args.length), "attn": model.config._attn_implementation,
                           "ffn_width": getattr(shapes, "intermediate_size", None),
                           "heads": getattr(shapes, "num_attention_heads", None)}
    for index, batch in enumerate(batches):
        speed = measure_speed(model, tokenizer, batch_size=batch, prompt_len=args.length,
                              new_tokens=args.new_tokens if index == 0 else 0, repeats=args.repeats,
                              device=args.device)
        row[f"prefill_b{batch}"] = speed["prefill_tokens_per_s"]
        if index == 0:
            row["decode"] = speed["decode_tokens_per_s"]
    return row


def main() -> None:
    args = parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    source = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(source)
    dense = load(source, dtype=torch.float32).eval()
    ratios = [float(r) for r in args.ratios.split(",")]
    multiples = [int(m) for m in args.multiples.split(",")]
    folders = {(r, m): pruned_checkpoint(dense, tokenizer, r, m, args) for r in ratios for m in multiples}
    del dense

    key = f"L{args.length}-b{args.batches}-{args.device}-{dtype}-t{args.threads}-x{args.repeats}"
    log = ResultLog(RESULTS / f"{args.tag}.jsonl")
    first = log.run(f"dense-{key}", lambda: {"ratio": 0.0, "multiple": None, **measure(source, tokenizer, dtype, args)})
    rows = [first]
    for (ratio, multiple), folder in folders.items():
        print(f"measuring {ratio:.0%}, multiple of {multiple} …", flush=True)
        record = RunRecord.read(folder)
        rows.append(log.run(f"r{ratio}-m{multiple}-{key}", lambda folder=folder, ratio=ratio, multiple=multiple,
                            record=record: {"ratio": ratio, "multiple": multiple,
                                            "achieved": record.parameters.ratio_prunable,
                                            **measure(folder, tokenizer, dtype, args)}))
    last = log.run(f"dense-again-{key}", lambda: {"ratio": 0.0, "multiple": "again",
                                                  **measure(source, tokenizer, dtype, args)})
    rows.append(last)
    print_table(rows, [int(b) for b in args.batches.split(",")], args)


def print_table(rows: list[dict[str, Any]], batches: list[int], args: argparse.Namespace) -> None:
    """Speed-ups against the mean of the two dense measurements, and each one's ratio to the FLOP reduction."""
    dense = [row for row in rows if row["ratio"] == 0.0]
    for row in rows:
        row["gflops"] = row["flops"] / 1e9
        row["flop_x"] = dense[0]["flops"] / row["flops"]
        for name in [f"prefill_b{b}" for b in batches] + ["decode"]:
            reference = sum(d[name] for d in dense) / len(dense)
            row[f"{name}_x"] = row[name] / reference
            if name.startswith("prefill"):
                row[f"{name}_vs_flops"] = row[f"{name}_x"] / row["flop_x"]
    columns = [("ratio", "ratio", "{:.0%}"), ("multiple of", "multiple", "{}"), ("achieved", "achieved", "{:.1%}"),
               ("params", "params", "{:,}"), ("FFN", "ffn_width", "{}"), ("heads", "heads", "{}"),
               ("GFLOPs", "gflops", "{:.1f}"), ("FLOP ×", "flop_x", "{:.2f}")]
    for batch in batches:
        columns += [(f"prefill b{batch} tok/s", f"prefill_b{batch}", "{:.0f}"),
                    ("×", f"prefill_b{batch}_x", "{:.2f}"), ("× / FLOP ×", f"prefill_b{batch}_vs_flops", "{:.2f}")]
    columns += [(f"decode b{batches[0]} tok/s", "decode", "{:.1f}"), ("×", "decode_x", "{:.2f}")]
    print(f"\nSmolLM2-135M, uniform flap + LIAR ({args.calib_samples}×{args.calib_len} calibration tokens), "
          f"prefill at length {args.length}, {args.new_tokens} decoded tokens, median of {args.repeats}, "
          f"{args.device}, {args.threads} threads; FLOPs per sequence of {args.length}\n")
    print(markdown_table(rows, columns))


if __name__ == "__main__":
    main()
