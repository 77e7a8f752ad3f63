"""SmolLM2-135M: GOA as its authors ran it. Does the greedy recovery help, from how many tokens, and with
which ridge? And which gated second-moment form ranks FFN neurons best?

Recovery grid: the ``goa`` preset (head-similarity heads by count, second-moment neurons, 16 × 128 scoring
tokens, blocks 0–3 and the last two dense) with LIAR after, recovery {none, goa (ridge toward 0),
goa-current (ridge toward the current weights)} × recovery rows {16, 128, 1024} × 128 tokens, drawn from the
embedded Wikipedia apart from the scoring and held-out rows. Each run reports WikiText-2 test perplexity and
the mean relative errors of its modules on the rows they were fitted on and on 16 × 128 held-out rows.

``--base reprune --calib-samples 128 --calib-len 512`` runs the recovery grid from the default method at the
benchmark grid's setting instead (recovery rows then of 512 tokens).

Second-moment grid: the same preset without recovery, FFN criterion {second-moment-paper, -code, -product,
-free (Σ = I), second-moment on random token ids (GOA App. D, everything data-free)} × {bias, liar}.

    python -m benchmarks.goa_recovery --ratios 0.2,0.5 --recovery-samples 16,128,1024
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks.common import ResultLog, markdown_table
from reprune import prune
from reprune.data import RANDOM_TOKENS, embedded_corpus_texts
from reprune.evaluation import perplexity, read_text_file
from reprune.models import shared_data_dir, smollm2_path
from reprune.presets import preset_config
from reprune.record import RunRecord

RESULTS = Path(__file__).parent / "results"
ERRORS = {  # column -> LayerRecord field, averaged over the pruned modules
    "recovery before (held-out)": "heldout_recovery_error_before",
    "recovery after (fit rows)": "recovery_error_after",
    "recovery after (held-out)": "heldout_recovery_error_after",
    "reconstructed (fit rows)": "error",
    "reconstructed (held-out)": "heldout_error",
}


def mean_errors(record: RunRecord) -> dict[str, float | None]:
    """Each error field's mean over the run's modules (None where the run measured none)."""
    out: dict[str, float | None] = {}
    for field in ERRORS.values():
        values = [getattr(layer, field) for layer in record.layers if getattr(layer, field) is not None]
        out[field] = statistics.fmean(values) if values else None
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ratios", default="0.2,0.5")
    p.add_argument("--recoveries", default="goa,goa-current")
    p.add_argument("--recovery-samples", default="16,128,1024", help="recovery rows, samples of 128 tokens")
    p.add_argument("--forms", default="second-moment-paper,second-moment-code,second-moment-product,"
                   "second-moment-free,random-tokens", help="FFN criteria; 'random-tokens': second-moment on random ids")
    p.add_argument("--reconstructions", default="bias,liar", help="for the second-moment grid")
    p.add_argument("--skip", default="", help="'recovery' and/or 'forms': grids not to run")
    p.add_argument("--base", default="goa", help="the preset the recovery grid starts from (e.g. reprune)")
    p.add_argument("--calib-samples", type=int, help="scoring samples (default: the preset's)")
    p.add_argument("--calib-len", type=int, help="tokens per sample, also of the recovery and held-out rows "
                   "(default: the preset's)")
    p.add_argument("--eval-tokens", type=int, default=8192, help="first N tokens of WikiText-2 test")
    p.add_argument("--eval-len", type=int, default=512)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--logged-only", action="store_true", help="print the cells measured so far, run none")
    args = p.parse_args()
    ratios = [float(r) for r in args.ratios.split(",")]

    folder = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    dense = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    text = read_text_file(shared_data_dir() / "wikitext-2-raw" / "canonical" / "wiki.test.raw")
    corpus = embedded_corpus_texts()
    log = ResultLog(RESULTS / "smollm2-goa-recovery.jsonl", args.logged_only)

    def evaluate(model: torch.nn.Module) -> float:
        return perplexity(model, tokenizer, text, seq_len=args.eval_len, batch_size=8,
                          max_windows=args.eval_tokens // args.eval_len, device=args.device)["ppl"]

    sizes = {key: value for key, value in (("num_samples", args.calib_samples), ("seq_len", args.calib_len))
             if value is not None}
    setting = "".join(f"-{key}{value}" for key, value in sizes.items())

    def run(label: str, calibration: Any, preset: str = "goa", **overrides: Any) -> dict[str, Any] | None:
        config = preset_config(preset, device=args.device, **sizes, **overrides)
        if preset != "goa" or sizes:  # the recovery grid from another preset or setting
            label = label.replace("goa:liar/", f"{preset}{setting}/")

        def job() -> dict[str, Any]:
            start = time.perf_counter()
            model, record = prune(copy.deepcopy(dense), calibration, config, tokenizer=tokenizer, progress=False)
            return {"method": label, "ratio": config.ratio, "prune_seconds": time.perf_counter() - start,
                    "achieved": record.parameters.ratio_prunable, "ppl": evaluate(model), **mean_errors(record)}

        if not args.logged_only:
            print(f"running {label} at {config.ratio:.0%} …", flush=True)
        return log.run(f"{label}-r{config.ratio}-{args.eval_tokens}@{args.eval_len}", job)

    dense_row = log.run(f"dense-{args.eval_tokens}@{args.eval_len}", lambda: {"method": "dense", "ratio": 0.0,
                                                                               "ppl": evaluate(dense)})
    recovery_rows, form_rows = [], []
    for ratio in ratios:
        if "recovery" not in args.skip:
            recovery_rows.append(run("goa:liar/recovery none", corpus, args.base, ratio=ratio,
                                     reconstruction="liar", recovery="none"))
            length = args.calib_len or preset_config(args.base).seq_len
            for recovery in args.recoveries.split(","):
                for samples in [int(s) for s in args.recovery_samples.split(",")]:
                    recovery_rows.append(run(f"goa:liar/recovery {recovery} on {samples * length // 1024}k tokens",
                                             corpus, args.base, ratio=ratio, reconstruction="liar",
                                             recovery=recovery, recovery_samples=samples))
        if "forms" not in args.skip:
            for form in args.forms.split(","):
                for reconstruction in args.reconstructions.split(","):
                    data_free = form == RANDOM_TOKENS
                    criterion = "second-moment" if data_free else form
                    label = f"goa/{criterion}{' on random tokens' if data_free else ''} + {reconstruction}"
                    form_rows.append(run(label, RANDOM_TOKENS if data_free else corpus, ratio=ratio,
                                         ffn_criterion=criterion, reconstruction=reconstruction, recovery="none"))

    columns = [("method", "method", "{}"), ("ratio", "ratio", "{:.0%}"), ("achieved", "achieved", "{:.1%}"),
               (f"ppl@{args.eval_len}", "ppl", "{:.2f}")]
    columns += [(name, field, "{:.4f}") for name, field in ERRORS.items()]
    columns += [("prune s", "prune_seconds", "{:.0f}")]
    header = (f"SmolLM2-135M, goa preset (16 × 128 scoring tokens, 16 × 128 held-out), WikiText-2 test first "
              f"{args.eval_tokens} tokens at {args.eval_len}, device={args.device}; dense "
              f"{dense_row['ppl']:.2f}" if dense_row else "")
    print(f"\n{header}\n")
    for rows in (recovery_rows, form_rows):
        rows = [row for row in rows if row is not None]
        if rows:
            print(markdown_table(rows, columns) + "\n")


if __name__ == "__main__":
    main()
