"""Command line: a thin layer over the library (``reprune prune | eval | demo | report``)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import get_args

from reprune.adapters import UnsupportedArchitectureError
from reprune.allocation import AllocationMode
from reprune.config import INTERCEPTS, PruneConfig
from reprune.criteria import CRITERIA
from reprune.data import CorpusError
from reprune.presets import PRESETS, preset_config
from reprune.reconstruction import RECONSTRUCTIONS
from reprune.recovery import RECOVERIES

def _add_prune_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder, .gguf file, or 'smollm2' / 'gemma3' / 'minilm' (bundled)")
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--method", choices=sorted(PRESETS),
                        help="a named configuration: a paper's (goa, liar), reprune's best measured with a stock output "
                             "(reprune, the default) or with per-layer widths (reprune-influence); fields overridable")
    parser.add_argument("--ratio", type=float, default=0.3, help="fraction of prunable parameters to remove")
    parser.add_argument("--criterion", choices=CRITERIA.names(), help="unit scores (default obs-flap: heads by obs, neurons by flap)")
    parser.add_argument("--attention-criterion", choices=CRITERIA.names())
    parser.add_argument("--ffn-criterion", choices=CRITERIA.names())
    parser.add_argument("--reconstruct", choices=RECONSTRUCTIONS.names(), help="level-2 repair (default liar)")
    parser.add_argument("--recovery", choices=RECOVERIES.names(), help="re-fit before pruning (goa: GOA's greedy recovery)")
    parser.add_argument("--allocation", choices=get_args(AllocationMode),
                        help="how the budget is shared among blocks (default ffn-first; influence: lowest perplexity, "
                             "per-layer widths)")
    parser.add_argument("--targets", choices=["both", "attention", "ffn"])
    parser.add_argument("--gqa-mode", choices=["query", "group"])
    parser.add_argument("--score-on", choices=["pruned", "dense"],
                        help="criteria read each block on the already pruned path (default) or the dense model (FLAP's way)")
    parser.add_argument("--multiple-of", type=int,
                        help="kept widths in multiples of this many channels, for fast matmuls (default 8; 1: exact)")
    parser.add_argument("--keep-first", type=int, help="leave the first k blocks dense")
    parser.add_argument("--keep-last", type=int, help="leave the last k blocks dense")
    parser.add_argument("--alpha", type=float, help="relative ridge of LIAR / dense-target (default 1e-2)")
    parser.add_argument("--intercept", choices=list(INTERCEPTS),
                        help="may reconstruction add biases to o/down projections (default auto: only where the "
                        "saved checkpoint still loads without remote code)")
    parser.add_argument("--recovery-alpha", type=float,
                        help="relative ridge of GOA's recovery (default 1e-4, the paper's; raise it for small calibration sets)")
    parser.add_argument("--tau", type=float, help="head-similarity threshold (JS divergence)")
    parser.add_argument("--calib", default="wiki-embedded",
                        help="calibration text: 'wiki-embedded', 'self-generated', 'random-tokens' (GOA's data-free Σ), "
                        "a .txt/.jsonl file or a HF dataset")
    parser.add_argument("--text-field", default="text", help="JSON field holding the text")
    parser.add_argument("--heldout", help="text for the held-out rows (default: drawn from --calib apart from the "
                        "calibration rows)")
    parser.add_argument("--num-samples", type=int)
    parser.add_argument("--recovery-samples", type=int,
                        help="samples a recovery fits on, drawn apart from the scoring samples (default 1024, GOA's; "
                        "0: the scoring samples)")
    parser.add_argument("--heldout-samples", type=int,
                        help="samples no fit sees, on which every layer's error is reported too (default 16; 0: none)")
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto (the checkpoint's)")


def build_config(args: argparse.Namespace) -> PruneConfig:
    """PruneConfig from a preset (if any) and the explicitly given options."""
    overrides = {
        "ratio": args.ratio, "criterion": args.criterion, "attention_criterion": args.attention_criterion,
        "ffn_criterion": args.ffn_criterion, "reconstruction": args.reconstruct, "recovery": args.recovery,
        "allocation": args.allocation, "targets": args.targets, "gqa_mode": args.gqa_mode,
        "score_on": args.score_on,
        "multiple_of": args.multiple_of,
        "keep_first": args.keep_first, "keep_last": args.keep_last, "alpha": args.alpha,
        "intercept": INTERCEPTS.get(args.intercept),
        "recovery_alpha": args.recovery_alpha,
        "num_samples": args.num_samples, "seq_len": args.seq_len, "batch_size": args.batch_size,
        "recovery_samples": args.recovery_samples, "heldout_samples": args.heldout_samples,
        "seed": args.seed, "device": args.device,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.tau is not None:
        overrides["criterion_options"] = {"tau": args.tau}
    if args.method:
        return preset_config(args.method, **overrides)
    return PruneConfig(**overrides)


def cmd_prune(args: argparse.Namespace) -> int:
    from reprune.workflow import prune_folder

    out, record = prune_folder(args.model, args.out, build_config(args), args.calib, text_field=args.text_field,
                               dtype=args.dtype, overwrite=args.overwrite, heldout=args.heldout)
    p = record.parameters
    print(f"pruned {p.ratio_prunable:.1%} of prunable parameters ({p.ratio_total:.1%} of all: "
          f"{p.total_before:,} → {p.total_after:,}) in {record.timings.total_seconds:.1f} s")
    print(f"saved to {out}")
    return 0


def task_file(value: str) -> tuple[str, str]:
    """``TASK=PATH`` of ``--task-file``."""
    task, sep, path = value.partition("=")
    if not sep or not task or not path:
        raise argparse.ArgumentTypeError(f"expected TASK=PATH (e.g. hellaswag=hellaswag_val.jsonl), got {value!r}")
    return task, path


def cmd_eval(args: argparse.Namespace) -> int:
    from reprune.workflow import EvalOptions, evaluate_folder

    options = EvalOptions(ppl=args.ppl, seq_lens=args.seq_len, max_windows=args.max_windows,
                          tasks=[t for t in (args.tasks or "").split(",") if t], task_files=dict(args.task_file),
                          limit=args.limit, sts=args.sts,
                          speed=args.speed, speed_batch=args.speed_batch, speed_len=args.speed_len,
                          batch_size=args.batch_size, device=args.device, json=args.json)
    _, target = evaluate_folder(args.model, options, args.dtype)
    if target is not None:
        print(f"results written to {target}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from reprune.demo import run_demo
    from reprune.outputs import reserve_output
    from reprune.preflight import check_demo

    check_demo(args.ratio, args.device, args.out)
    with reserve_output(args.out, overwrite=True):  # replaces only a previous demo checkpoint
        run_demo(ratio=args.ratio, reconstruction=args.reconstruct, out=args.out, device=args.device)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from reprune.preflight import check_run_reports
    from reprune.report import write_report

    check_run_reports(args.run_dir)
    paths = write_report(args.run_dir)
    for path in paths:
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reprune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    prune_p = sub.add_parser("prune", help="prune a model and save a smaller checkpoint")
    _add_prune_args(prune_p)
    prune_p.set_defaults(func=cmd_prune)

    eval_p = sub.add_parser("eval", help="perplexity, zero-shot tasks, STS-B and speed of a checkpoint")
    eval_p.add_argument("--model", required=True, help="model folder, .gguf file or bundled name")
    eval_p.add_argument("--ppl", help="text file for perplexity (e.g. WikiText-2 test)")
    eval_p.add_argument("--seq-len", type=lambda s: [int(x) for x in s.split(",")], default=[512],
                        help="comma-separated window lengths, e.g. 128,2048")
    eval_p.add_argument("--max-windows", type=int, help="evaluate only the first N windows")
    eval_p.add_argument("--tasks", help="comma-separated zero-shot tasks, e.g. piqa,arc_easy")
    eval_p.add_argument("--task-file", type=task_file, action="append", default=[], metavar="TASK=PATH",
                        help="read TASK from a local .jsonl(.gz) instead of the shared data folder (repeatable)")
    eval_p.add_argument("--limit", type=int, help="first N items per task")
    eval_p.add_argument("--sts", action="store_true", help="STS-B dev Spearman (encoders)")
    eval_p.add_argument("--speed", action="store_true", help="prefill/decode latency and throughput")
    eval_p.add_argument("--speed-batch", type=int, default=1)
    eval_p.add_argument("--speed-len", type=int, default=128)
    eval_p.add_argument("--batch-size", type=int, default=8)
    eval_p.add_argument("--device")
    eval_p.add_argument("--dtype", default="auto")
    eval_p.add_argument("--json", help="write the results here (default: <checkpoint>/reprune_eval.json for "
                        "reprune checkpoints; use <run_dir>/dense_eval.json for the dense baseline)")
    eval_p.set_defaults(func=cmd_eval)

    demo_p = sub.add_parser("demo", help="prune the bundled SmolLM2-135M and print before/after quality")
    demo_p.add_argument("--ratio", type=float, default=0.3)
    demo_p.add_argument("--reconstruct", default="liar", choices=RECONSTRUCTIONS.names(),
                        help="the method shown beside dense and FLAP-style bias (default liar, the default of prune)")
    demo_p.add_argument("--out", default="runs/demo-smollm2")
    demo_p.add_argument("--device")
    demo_p.set_defaults(func=cmd_demo)

    report_p = sub.add_parser("report", help="write a Markdown/HTML report of a run folder")
    report_p.add_argument("run_dir")
    report_p.set_defaults(func=cmd_report)
    return parser


KNOWN_ERRORS = (FileNotFoundError, FileExistsError, ValueError, CorpusError, UnsupportedArchitectureError,
                FloatingPointError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        code = args.func(args)
    except KNOWN_ERRORS as err:
        print(f"reprune {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # staging folders are already gone: say so instead of a traceback
        print(f"reprune {args.command}: interrupted; no partial output was left", file=sys.stderr)
        return 130
    print(f"done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
