"""Block similarities that ``influence`` allocation reads, and the FFN widths they give.

For each block of the dense model: the mean cosine between its input and output hidden states (1 − ShortGPT's
block influence) on the first ``SIMILARITY_SAMPLES`` calibration samples, as the pipeline measures it, and on
all ``--calib-samples`` (is the subset enough?); then each block's kept FFN width under ``influence`` and
``ffn-first`` at every ratio.

    python -m benchmarks.block_similarity --model smollm2 --calib-samples 128 --calib-len 512 --ratios 0.2,0.35,0.5
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import markdown_table
from reprune.adapters import get_adapter
from reprune.allocation import allocate, module_budget
from reprune.calibration import capture_block_inputs
from reprune.data import calibration_ids
from reprune.models import load_model
from reprune.scoring import SIMILARITY_SAMPLES, block_similarities


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="bundled name or model folder")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--calib-len", type=int, default=512)
    p.add_argument("--ratios", default="0.2,0.35,0.5", type=lambda s: [float(x) for x in s.split(",") if x])
    p.add_argument("--multiple-of", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args()


@torch.no_grad()
def main() -> None:
    args = parse_args()
    model, tokenizer, folder = load_model(args.model, dtype="float32", device="cpu")
    model.eval()
    adapter = get_adapter(model)
    device = torch.device(args.device)
    ids = calibration_ids(tokenizer, "wiki-embedded", args.calib_samples, args.calib_len, seed=0)
    acts = capture_block_inputs(model, adapter, ids, 8, device)
    blocks = set(range(len(adapter.blocks())))
    subset = block_similarities(adapter, acts, blocks, device)
    full = block_similarities(adapter, acts, blocks, device, samples=args.calib_samples)
    budgets = [module_budget(m, "query", args.multiple_of) for i in sorted(blocks) for m in adapter.depth2_modules(i)]
    eligible = {b.key for b in budgets}
    ffns = [b for b in budgets if b.kind == "ffn"]
    rows = [{"block": i, "subset": subset[i], "full": full[i]} for i in sorted(blocks)]
    allocations = {"ffn-first": ("ffn-first", subset), "influence": ("influence", subset), "full": ("influence", full)}
    for ratio in args.ratios:
        for column, (mode, similarities) in allocations.items():
            counts = allocate(budgets, ratio, mode, eligible, similarities=similarities)
            for row, budget in zip(rows, ffns):
                row[f"{column}@{ratio}"] = budget.num_units - counts[budget.key]
    columns = [("block", "block", "{}"), (f"cosine ({SIMILARITY_SAMPLES} samples)", "subset", "{:.4f}"),
               (f"cosine ({args.calib_samples} samples)", "full", "{:.4f}")]
    for ratio in args.ratios:
        columns += [(f"FFN width {ratio:.0%} ffn-first", f"ffn-first@{ratio}", "{}"),
                    (f"{ratio:.0%} influence", f"influence@{ratio}", "{}"),
                    (f"{ratio:.0%} influence ({args.calib_samples} samples)", f"full@{ratio}", "{}")]
    print(f"\n{folder.name}, {args.calib_samples} × {args.calib_len} tokens of wiki-embedded, multiple of "
          f"{args.multiple_of}\n")
    print(markdown_table(rows, columns))
    moved = max(abs(row[f"influence@{r}"] - row[f"full@{r}"]) for row in rows for r in args.ratios)
    print(f"\nlargest width difference between {SIMILARITY_SAMPLES} and {args.calib_samples} samples: {moved}")


if __name__ == "__main__":
    main()
