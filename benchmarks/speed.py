"""Does speed follow size? SmolLM2-135M pruned at several ratios, with exact kept widths (``--multiple-of 1``)
and rounded ones (the default), each saved and loaded back: parameters, prefill throughput at batch 1 and 8,
KV-cached decode throughput, and the forward FLOPs of its shapes (:func:`reprune.evaluation.forward_flops`).

The issue's target: the prefill speed-up comes within 10 % of the FLOP reduction (``speed-up / FLOPs`` ≥ 0.9).
Pruning is uniform, flap + LIAR, on a small calibration set (speed depends on shapes only). Timings are
:func:`reprune.evaluation.measure_speed`'s (what ``reprune eval --speed`` runs: a warm-up, then a timed run;
random token ids, a fixed thread count), taken in ``--rounds`` rounds that each time every model once, so a
speed-up is the median over rounds of pruned / dense within one round: a shared machine's drift (measured
at up to 20 % between two dense runs minutes apart) cancels instead of landing on whichever model ran late.

    flock /tmp/heavy.lock nice .venv/bin/python -m benchmarks.speed --ratios 0.2,0.35,0.5 --multiples 1,8
    .venv/bin/python -m benchmarks.speed --device cuda   # bfloat16 on the GPU
"""

from __future__ import annotations

import argparse
import copy
import statistics
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
    p.add_argument("--rounds", type=int, default=5, help="rounds of timing every model once (each after a warm-up)")
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


def shapes_of(folder: Path | str, dtype: torch.dtype, args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The checkpoint in ``folder``, loaded as a user would load it, with its size and FLOPs."""
    model = load(folder, dtype=dtype, device=args.device).eval()
    config = model.config
    return model, {"params": sum(p.numel() for p in model.parameters()), "flops": forward_flops(model, args.length),
                   "attn": config._attn_implementation, "ffn_width": getattr(config, "intermediate_size", None),
                   "heads": getattr(config, "num_attention_heads", None)}


def one_round(model: torch.nn.Module, tokenizer: Any, batches: list[int], args: argparse.Namespace) -> dict[str, float]:
    """One timed prefill per batch size and one decode (each after its warm-up), in tokens/s."""
    row: dict[str, float] = {}
    for index, batch in enumerate(batches):
        speed = measure_speed(model, tokenizer, batch_size=batch, prompt_len=args.length,
                              new_tokens=args.new_tokens if index == 0 else 0, repeats=1, device=args.device)
        row[f"prefill_b{batch}"] = speed["prefill_tokens_per_s"]
        if index == 0:
            row["decode"] = speed["decode_tokens_per_s"]
    return row


def interleaved(models: dict[str, torch.nn.Module], tokenizer: Any, batches: list[int],
                args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    """``--rounds`` rounds, each timing every model once, in an order rotated by one per round: a slow drift of
    the machine (other processes, clock changes) then hits dense and pruned alike within a round."""
    names = list(models)
    timings: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        print(f"round {round_index + 1}/{args.rounds} …", flush=True)
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            timings[name].append(one_round(models[name], tokenizer, batches, args))
    return timings


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

    batches = [int(b) for b in args.batches.split(",")]
    key = (f"L{args.length}-b{args.batches}-{args.device}-{dtype}-t{args.threads}-rounds{args.rounds}"
           f"-r{args.ratios}-m{args.multiples}")
    log = ResultLog(RESULTS / f"{args.tag}.jsonl")
    result = log.run(key, lambda: measure_all(source, folders, tokenizer, dtype, batches, args))
    print_table(result["rows"], batches, args)


def measure_all(source: Path, folders: dict[tuple[float, int], Path], tokenizer: Any, dtype: torch.dtype,
                batches: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """Every checkpoint's shapes and its speed-up over dense: per round pruned / dense tokens/s, median over rounds."""
    models, rows = {}, {}
    models["dense"], shapes = shapes_of(source, dtype, args)
    rows["dense"] = {"ratio": 0.0, "multiple": None, **shapes}
    for (ratio, multiple), folder in folders.items():
        name = f"r{ratio}-m{multiple}"
        models[name], shapes = shapes_of(folder, dtype, args)
        rows[name] = {"ratio": ratio, "multiple": multiple,
                      "achieved": RunRecord.read(folder).parameters.ratio_prunable, **shapes}
    timings = interleaved(models, tokenizer, batches, args)
    for name, row in rows.items():
        for metric in timings[name][0]:
            row[metric] = statistics.median(t[metric] for t in timings[name])
            row[f"{metric}_x"] = statistics.median(t[metric] / d[metric] for t, d in zip(timings[name], timings["dense"]))
            row[f"{metric}_spread"] = max(t[metric] for t in timings[name]) / min(t[metric] for t in timings[name])
    return {"rows": list(rows.values())}


def print_table(rows: list[dict[str, Any]], batches: list[int], args: argparse.Namespace) -> None:
    """Speed-ups (medians of per-round ratios to dense) and each prefill speed-up's ratio to the FLOP reduction."""
    dense = rows[0]
    for row in rows:
        row["gflops"] = row["flops"] / 1e9
        row["flop_x"] = dense["flops"] / row["flops"]
        for batch in batches:
            row[f"prefill_b{batch}_vs_flops"] = row[f"prefill_b{batch}_x"] / row["flop_x"]
    columns = [("ratio", "ratio", "{:.0%}"), ("multiple of", "multiple", "{}"), ("achieved", "achieved", "{:.1%}"),
               ("params", "params", "{:,}"), ("FFN", "ffn_width", "{}"), ("heads", "heads", "{}"),
               ("GFLOPs", "gflops", "{:.1f}"), ("FLOP ×", "flop_x", "{:.2f}")]
    for batch in batches:
        columns += [(f"prefill b{batch} tok/s", f"prefill_b{batch}", "{:.0f}"),
                    ("×", f"prefill_b{batch}_x", "{:.2f}"), ("× / FLOP ×", f"prefill_b{batch}_vs_flops", "{:.2f}"),
                    ("max/min", f"prefill_b{batch}_spread", "{:.2f}")]
    columns += [(f"decode b{batches[0]} tok/s", "decode", "{:.1f}"), ("×", "decode_x", "{:.2f}")]
    print(f"\nSmolLM2-135M, uniform flap + LIAR ({args.calib_samples}×{args.calib_len} calibration tokens), "
          f"prefill at length {args.length}, {args.new_tokens} decoded tokens, {args.rounds} interleaved rounds "
          f"(× = median over rounds of pruned / dense in the same round; max/min = spread of a model's own rounds), "
          f"{args.device}, {args.threads} threads; FLOPs per sequence of {args.length}\n")
    print(markdown_table(rows, columns))


if __name__ == "__main__":
    main()
