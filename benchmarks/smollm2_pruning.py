"""SmolLM2-135M (or ``--model gemma3``: Gemma-3-270M) pruning benchmark: criterion × reconstruction ×
ratio × allocation.

Prints a Markdown table of WikiText-2 test perplexity (lengths 128 and 512, on the first
``--eval-tokens`` tokens), achieved ratio, pruning wall time, peak memory and the time of one plain
forward pass over the same calibration data (the lower bound of our cost); writes a PNG of perplexity
vs ratio. Calibration text is the embedded Wikipedia sample (disjoint from WikiText-2 test).
Results accumulate in a JSON-lines file so an interrupted run resumes where it stopped. Global
allocation's dense scoring pass runs once per criterion and is reused by every ratio and reconstruction;
its time is added to each run it serves, so prune times are those of a single run. ``--whole-blocks``
prunes each cell a second time with every block run whole (no residual shortcuts) and reports that
perplexity and the largest logit difference between the two pruned models.

    python benchmarks/smollm2_pruning.py --ratios 0.2,0.5 --criteria magnitude,wanda-sp,flap \
        --reconstructions none,bias,liar
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks.common import ResultLog, line_plot, markdown_table, peak_memory
from reprune.data import calibration_ids
from reprune.evaluation import perplexity, read_text_file
from reprune.models import resolve_model_dir, shared_data_dir
from reprune import PruneConfig, global_scores, prune
from reprune.config import INTERCEPTS
from reprune.adapters import get_adapter

RESULTS = Path(__file__).parent / "results"


def _split(text: str, cast=str) -> list:
    return [cast(x) for x in text.split(",") if x]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ratios", default="0.2,0.5", type=lambda s: _split(s, float))
    p.add_argument("--criteria", default="random,magnitude,wanda-sp,flap", type=_split,
                   help="criterion names; ATTENTION+FFN (e.g. head-similarity+second-moment) scores the two apart")
    p.add_argument("--reconstructions", default="none,bias", type=_split)
    p.add_argument("--allocations", default="uniform", type=_split)
    p.add_argument("--recoveries", default="none", type=_split, help="none and/or goa")
    p.add_argument("--intercepts", default="auto", type=_split,
                   help="auto, on and/or off: may reconstruction add level-2 biases (PruneConfig.intercept)")
    p.add_argument("--presets", default="", type=_split,
                   help="also run these presets at each ratio: PRESET or PRESET:RECONSTRUCTION (e.g. goa:liar)")
    p.add_argument("--score-on", default="pruned", type=_split,
                   help="pruned and/or dense: where criteria read statistics (PruneConfig.score_on)")
    p.add_argument("--keep-first", default="0", type=lambda s: _split(s, int),
                   help="blocks kept dense at the start (a list: one cell per value)")
    p.add_argument("--targets", default="both", choices=["both", "attention", "ffn"])
    p.add_argument("--calib", default="wiki-embedded", help="'wiki-embedded' or 'self-generated'")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--calib-len", type=int, default=128)
    p.add_argument("--eval-tokens", type=int, default=16384, help="first N tokens of WikiText-2 test")
    p.add_argument("--eval-lens", default="128,512", type=lambda s: _split(s, int))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="smollm2", choices=["smollm2", "gemma3"], help="bundled model")
    p.add_argument("--whole-blocks", action="store_true",
                   help="also prune each cell with whole-block propagation (no shortcuts) and compare")
    p.add_argument("--tag", help="results file name (default: the model's name)")
    p.add_argument("--logged-only", action="store_true",
                   help="run nothing: table and plot of the grid's cells already in the results file")
    args = p.parse_args()
    unknown = [name for name in args.intercepts if name not in INTERCEPTS]
    if unknown:
        p.error(f"--intercepts: unknown {', '.join(unknown)}; choose from {', '.join(INTERCEPTS)}")
    return args


def evaluate(model: torch.nn.Module, tokenizer: Any, text: str, args: argparse.Namespace) -> dict[str, float]:
    out = {}
    for length in args.eval_lens:
        r = perplexity(model, tokenizer, text, seq_len=length, batch_size=8,
                       max_windows=args.eval_tokens // length, device=args.device)
        out[f"ppl{length}"] = r["ppl"]
    return out


def main() -> None:
    args = parse_args()
    args.tag = args.tag or args.model
    torch.manual_seed(0)
    folder = resolve_model_dir(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    dense = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    text = read_text_file(shared_data_dir() / "wikitext-2-raw" / "canonical" / "wiki.test.raw")
    cal_tag = f"{args.calib}-{args.calib_samples}x{args.calib_len}"
    if args.calib == "self-generated":
        from reprune.selfgen import self_generated_ids

        ids = self_generated_ids(dense, tokenizer, args.calib_samples, args.calib_len, seed=0, device=args.device)
    else:
        ids = calibration_ids(tokenizer, args.calib, args.calib_samples, args.calib_len, seed=0)
    log = ResultLog(RESULTS / f"{args.tag}.jsonl", args.logged_only)

    def forward_time() -> dict[str, Any]:
        base = copy.deepcopy(dense).to(args.device).base_model
        start = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, ids.shape[0], 8):
                base(input_ids=ids[i : i + 8].to(args.device))
        return {"forward_seconds": time.perf_counter() - start}

    forward = log.run(f"forward-{cal_tag}-{args.device}", forward_time)
    lower_bound = forward["forward_seconds"] if forward else math.nan
    rows = [log.run(f"dense-{args.eval_tokens}", lambda: {"method": "dense", "ratio": 0.0, "achieved": 0.0,
                                                          **evaluate(dense, tokenizer, text, args)})]

    scored: dict[tuple[str, str, str], tuple[dict, float]] = {}

    def dense_scores(config: PruneConfig) -> tuple[dict | None, float]:
        """The scoring pass over the dense model (global allocation, score_on='dense'), run once per criterion
        and reused at every ratio and reconstruction; its time is added to each run's (a single run pays it)."""
        plan = config.resolve(len(get_adapter(dense).blocks()))
        if (config.allocation != "global" and config.score_on != "dense") or not plan.criteria_read_data:
            return None, 0.0
        key = (config.criterion_for("attention"), config.criterion_for("ffn"), config.targets)
        if key not in scored:
            start = time.perf_counter()
            scores = global_scores(dense, ids, config)
            scored[key] = scores, time.perf_counter() - start
        return scored[key]

    def run_config(label: str, config: PruneConfig) -> dict[str, Any]:
        def job() -> dict[str, Any]:
            scores, scoring_seconds = dense_scores(config)
            model = copy.deepcopy(dense)
            with peak_memory(args.device) as mem:
                start = time.perf_counter()
                model, report = prune(model, ids, config, progress=False, scores=scores)
                seconds = time.perf_counter() - start + scoring_seconds
            row = {"method": label, "ratio": config.ratio, "achieved": report.parameters.ratio_prunable,
                   "achieved_total": report.parameters.ratio_total, "prune_seconds": seconds,
                   "scoring_seconds": scoring_seconds, "solve_seconds": report.timings.solve_seconds,
                   "peak_mib": mem["peak_mib"], **evaluate(model, tokenizer, text, args)}
            if args.whole_blocks:
                whole, _ = prune(copy.deepcopy(dense), ids, replace(config, shortcuts=False), progress=False,
                                 scores=scores)
                probe = ids[:4].to(args.device)
                with torch.inference_mode():
                    difference = (model(probe).logits - whole(probe).logits).abs().max().item()
                row |= {"whole_max_logit_diff": difference,
                        **{f"whole_{k}": v for k, v in evaluate(whole, tokenizer, text, args).items()}}
            return row

        suffix = "-whole" if args.whole_blocks else ""
        return log.run(f"{label}-r{config.ratio}-{cal_tag}-{args.targets}-{args.eval_tokens}{suffix}", job)

    grid = itertools.product(args.ratios, args.allocations, args.criteria, args.reconstructions, args.recoveries,
                             args.intercepts, args.score_on, args.keep_first)
    for ratio, allocation, criterion, reconstruction, recovery, intercept, score_on, keep_first in grid:
        label = (f"{allocation}/{criterion}/{reconstruction}" + ("/goa-recovery" if recovery == "goa" else "")
                 + ("" if intercept == "auto" else f"/intercept-{intercept}")
                 + ("" if score_on == "pruned" else f"/scores-{score_on}")
                 + ("" if keep_first == 0 else f"/keep-first-{keep_first}"))
        attention_criterion, _, ffn_criterion = criterion.partition("+")
        config = PruneConfig(ratio=ratio, criterion=attention_criterion, attention_criterion=attention_criterion,
                             ffn_criterion=ffn_criterion or attention_criterion, reconstruction=reconstruction,
                             recovery=recovery, allocation=allocation, targets=args.targets, score_on=score_on,
                             intercept=INTERCEPTS[intercept], keep_first=keep_first, num_samples=args.calib_samples,
                             seq_len=args.calib_len, device=args.device)
        if not args.logged_only:
            print(f"running {label} at {ratio:.0%} …", flush=True)
        rows.append(run_config(label, config))
    for ratio, preset in itertools.product(args.ratios, args.presets):
        from reprune.presets import preset_config

        name, _, reconstruction = preset.partition(":")
        overrides = {"reconstruction": reconstruction} if reconstruction else {}
        config = preset_config(name, ratio=ratio, num_samples=args.calib_samples, seq_len=args.calib_len,
                               targets=args.targets, device=args.device, **overrides)
        if not args.logged_only:
            print(f"running preset {preset} at {ratio:.0%} …", flush=True)
        rows.append(run_config(f"preset:{preset}", config))

    rows = [row for row in rows if row is not None]  # --logged-only: cells not measured yet
    for row in rows:
        row["cost_vs_forward"] = row["prune_seconds"] / lower_bound if "prune_seconds" in row else None
    columns = [("method", "method", "{}"), ("ratio", "ratio", "{:.0%}"), ("achieved", "achieved", "{:.1%}"),
               ("of all params", "achieved_total", "{:.1%}")]
    columns += [(f"ppl@{n}", f"ppl{n}", "{:.2f}") for n in args.eval_lens]
    if args.whole_blocks:
        columns += [(f"whole-block ppl@{n}", f"whole_ppl{n}", "{:.2f}") for n in args.eval_lens]
        columns += [("max logit diff", "whole_max_logit_diff", "{:.1e}")]
    columns += [("prune s", "prune_seconds", "{:.1f}"), ("solve s", "solve_seconds", "{:.2f}"),
                ("× forward", "cost_vs_forward", "{:.1f}"), ("peak MiB", "peak_mib", "{:.0f}")]
    print(f"\n{args.model} ({folder.name}), calibration {cal_tag}, WikiText-2 test first {args.eval_tokens} tokens, "
          f"targets={args.targets}, device={args.device}; one forward pass over the calibration data: "
          f"{lower_bound:.1f} s\n")
    print(markdown_table(rows, columns))
    plot(rows, RESULTS / f"{args.tag}-{cal_tag}-ppl-vs-ratio.png", max(args.eval_lens), folder.name)


def plot(rows: list[dict[str, Any]], path: Path, length: int, title: str) -> None:
    """Perplexity vs achieved ratio: a panel per allocation/criterion (presets together), a line per
    reconstruction (and recovery), each starting at the dense model."""
    dense = [(0.0, r[f"ppl{length}"]) for r in rows if r["method"] == "dense" and f"ppl{length}" in r]
    panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for row in rows:
        if row["method"] == "dense" or f"ppl{length}" not in row:
            continue
        parts = row["method"].split("/")
        panel, label = ("presets", row["method"]) if len(parts) < 3 else ("/".join(parts[:2]), "/".join(parts[2:]))
        panels.setdefault(panel, {}).setdefault(label, list(dense)).append((row["achieved"], row[f"ppl{length}"]))
    line_plot(dict(sorted(panels.items())), path, "fraction of prunable parameters removed",
              f"WikiText-2 ppl@{length}", f"{title}: structured pruning without retraining")


if __name__ == "__main__":
    main()
