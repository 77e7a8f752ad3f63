"""SmolLM2-135M: WikiText-2 perplexity vs the number of calibration samples (METHODS.md's overfitting check).

LIAR fits a full interpolation matrix per layer, which can overfit a small calibration set; this sweeps
the calibration size (samples of ``--calib-len`` tokens of the embedded Wikipedia, disjoint from the
evaluation text) at one ratio and criterion, for each reconstruction, and plots perplexity against it.

    python -m benchmarks.calibration_curve --samples 16,32,64,128,256 --reconstructions bias,liar --ratio 0.5
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any, get_args

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks.common import ResultLog, line_plot, markdown_table
from reprune.data import calibration_ids
from reprune.evaluation import perplexity, read_text_file
from reprune.models import shared_data_dir, smollm2_path
from reprune import PruneConfig, prune
from reprune.allocation import AllocationMode

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", default="16,32,64,128,256")
    p.add_argument("--reconstructions", default="bias,liar")
    p.add_argument("--criterion", default="flap")
    p.add_argument("--allocation", default="uniform", choices=get_args(AllocationMode))
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--calib-len", type=int, default=128)
    p.add_argument("--eval-tokens", type=int, default=8192, help="first N tokens of WikiText-2 test")
    p.add_argument("--eval-len", type=int, default=512)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()

    folder = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    dense = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    text = read_text_file(shared_data_dir() / "wikitext-2-raw" / "canonical" / "wiki.test.raw")
    log = ResultLog(RESULTS / "smollm2-calibration-curve.jsonl")
    setting = f"{args.allocation}-{args.criterion}-r{args.ratio}-len{args.calib_len}-{args.eval_tokens}@{args.eval_len}"
    for reconstruction in args.reconstructions.split(","):
        for samples in [int(s) for s in args.samples.split(",")]:
            def job(samples: int = samples, reconstruction: str = reconstruction) -> dict[str, Any]:
                ids = calibration_ids(tokenizer, "wiki-embedded", samples, args.calib_len, seed=0)
                config = PruneConfig(ratio=args.ratio, criterion=args.criterion, reconstruction=reconstruction,
                                     allocation=args.allocation,
                                     num_samples=samples, seq_len=args.calib_len, device=args.device)
                start = time.perf_counter()
                model, _ = prune(copy.deepcopy(dense), ids, config, progress=False)
                seconds = time.perf_counter() - start
                ppl = perplexity(model, tokenizer, text, seq_len=args.eval_len, batch_size=8,
                                 max_windows=args.eval_tokens // args.eval_len, device=args.device)["ppl"]
                return {"reconstruction": reconstruction, "samples": samples, "ppl": ppl, "prune_seconds": seconds,
                        "setting": setting}

            print(f"running {reconstruction} with {samples} samples …", flush=True)
            log.run(f"{reconstruction}-{samples}-{setting}", job)
    # every run of this setting so far, from earlier invocations too, so one plot shows all curves
    rows = sorted((r for r in log.rows.values() if r["setting"] == setting),
                  key=lambda r: (r["reconstruction"], r["samples"]))
    print(f"\nSmolLM2-135M, {args.allocation} {args.criterion} at {args.ratio:.0%}, calibration N x {args.calib_len} tokens, "
          f"WikiText-2 test ppl@{args.eval_len} on the first {args.eval_tokens} tokens\n")
    print(markdown_table(rows, [("reconstruction", "reconstruction", "{}"), ("samples", "samples", "{}"),
                                (f"ppl@{args.eval_len}", "ppl", "{:.2f}"), ("prune s", "prune_seconds", "{:.1f}")]))
    plot(rows, RESULTS / "smollm2-calibration-curve.png", args)


def plot(rows: list[dict[str, Any]], path: Path, args: argparse.Namespace) -> None:
    series = {name: [(r["samples"], r["ppl"]) for r in rows if r["reconstruction"] == name]
              for name in dict.fromkeys(r["reconstruction"] for r in rows)}
    line_plot({f"{args.criterion} at {args.ratio:.0%}": series}, path, f"calibration samples (× {args.calib_len} tokens)",
              f"WikiText-2 perplexity (length {args.eval_len})",
              "SmolLM2-135M: perplexity vs calibration size", log_x=True)


if __name__ == "__main__":
    main()
