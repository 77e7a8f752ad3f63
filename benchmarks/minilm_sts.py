"""all-MiniLM-L6-v2 (BERT encoder) pruning benchmark: STS-B dev Spearman and the STS-B probe.

Heads and neurons are pruned at each ratio with each reconstruction; calibration is the embedded
Wikipedia sample. Prints a Markdown table.

    python benchmarks/minilm_sts.py --ratios 0.2,0.35,0.5 --reconstructions none,bias,liar
"""

from __future__ import annotations

import argparse
import copy
import itertools
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer

from benchmarks.common import ResultLog, markdown_table
from reprune.data import calibration_ids
from reprune.evaluation import read_glue_tsv, sts_spearman, stsb_probe
from reprune.models import minilm_path, shared_data_dir
from reprune import PruneConfig, prune

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ratios", default="0.2,0.35,0.5")
    p.add_argument("--criteria", default="flap")
    p.add_argument("--reconstructions", default="none,bias,liar")
    p.add_argument("--allocation", default="uniform")
    p.add_argument("--calib", default="wiki-embedded", choices=["wiki-embedded", "stsb-train"],
                   help="calibration text: the embedded Wikipedia, or the STS-B train sentences (in-domain, "
                        "disjoint from the dev pairs evaluated)")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--calib-len", type=int, default=128)
    p.add_argument("--probe-train", type=int, default=2000, help="STS-B train pairs for the probe")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()

    folder = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    dense = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    source: str | list[str] = args.calib
    if args.calib == "stsb-train":
        pairs = read_glue_tsv(shared_data_dir() / "glue" / "STS-B" / "train.tsv")
        source = [pair["sentence1"] for pair in pairs] + [pair["sentence2"] for pair in pairs]
    ids = calibration_ids(tokenizer, source, args.calib_samples, args.calib_len, seed=0)
    log = ResultLog(RESULTS / "minilm.jsonl")

    def evaluate(model: torch.nn.Module) -> dict[str, Any]:
        sts = sts_spearman(model, tokenizer, device=args.device)
        probe = stsb_probe(dense, model, tokenizer, max_train=args.probe_train, device=args.device)
        return {"spearman": sts["spearman"], "probe_acc": probe["accuracy"]}

    rows = [log.run("dense", lambda: {"method": "dense", "ratio": 0.0, "achieved": 0.0, **evaluate(dense)})]
    grid = itertools.product([float(r) for r in args.ratios.split(",")], args.criteria.split(","),
                             args.reconstructions.split(","))
    for ratio, criterion, reconstruction in grid:
        label = f"{args.allocation}/{criterion}/{reconstruction}"

        def job(ratio: float = ratio, criterion: str = criterion, reconstruction: str = reconstruction) -> dict:
            model = copy.deepcopy(dense)
            config = PruneConfig(ratio=ratio, criterion=criterion, reconstruction=reconstruction,
                                 allocation=args.allocation, num_samples=args.calib_samples,
                                 seq_len=args.calib_len, device=args.device)
            start = time.perf_counter()
            model, report = prune(model, ids, config, progress=False)
            return {"method": label, "ratio": ratio, "achieved": report.parameters.ratio_prunable,
                    "prune_seconds": time.perf_counter() - start, **evaluate(model)}

        print(f"running {label} at {ratio:.0%} …", flush=True)
        calib = "" if args.calib == "wiki-embedded" else f"-{args.calib}"
        rows.append(log.run(f"{label}-r{ratio}-{args.calib_samples}x{args.calib_len}{calib}", job))
    dense_rho = rows[0]["spearman"]
    for row in rows:
        row["kept"] = row["spearman"] / dense_rho
    print(f"\nall-MiniLM-L6-v2, calibration {args.calib} {args.calib_samples}x{args.calib_len}, STS-B dev\n")
    print(markdown_table(rows, [("method", "method", "{}"), ("ratio", "ratio", "{:.0%}"),
                                ("achieved", "achieved", "{:.1%}"), ("STS-B Spearman", "spearman", "{:.4f}"),
                                ("% of dense", "kept", "{:.1%}"), ("STS-B probe acc", "probe_acc", "{:.4f}"),
                                ("prune s", "prune_seconds", "{:.1f}")]))


if __name__ == "__main__":
    main()
