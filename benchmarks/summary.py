"""Pivot the SmolLM2 pruning results into criterion × reconstruction tables, one per ratio and allocation.

Reads ``results/<tag>.jsonl`` as written by ``smollm2_pruning.py`` (any number of invocations) and
prints Markdown: perplexity per cell, how much each reconstruction lowers it relative to ``none``, the
spread between criteria per reconstruction (worst / best) and LIAR's gain over bias compensation.

    python -m benchmarks.summary --tag smollm2 --metric ppl512
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def load_rows(tag: str) -> list[dict]:
    path = RESULTS / f"{tag}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"No results at {path}; run benchmarks/smollm2_pruning.py --tag {tag} first.")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pivot(rows: list[dict], metric: str, calib: str, targets: str) -> str:
    """One table per (allocation, recovery, ratio): rows = criteria, columns = reconstructions."""
    cells: dict[tuple[str, str, float], dict[tuple[str, str], float]] = defaultdict(dict)
    for row in rows:
        name, method = row["name"], row.get("method", "")
        if metric not in row or method.startswith(("dense", "preset")) or f"-{calib}-{targets}-" not in name:
            continue
        allocation, criterion, reconstruction, *rest = method.split("/")
        recovery = "goa recovery" if rest else "no recovery"
        cells[(allocation, recovery, row["ratio"])][(criterion, reconstruction)] = row[metric]
    out = []
    for (allocation, recovery, ratio), values in sorted(cells.items()):
        criteria = list(dict.fromkeys(c for c, _ in values))
        modes = [m for m in ("none", "bias", "liar", "dense-target", "liar-dense") if any(r == m for _, r in values)]
        out.append(f"\n**{allocation}, {recovery}, {ratio:.0%}** ({metric}; in brackets: × lower than `none`)\n")
        out.append("| criterion | " + " | ".join(modes) + " |")
        out.append("|---|" + "---|" * len(modes))
        for criterion in criteria:
            base = values.get((criterion, "none"))
            row_cells = []
            for mode in modes:
                value = values.get((criterion, mode))
                if value is None:
                    row_cells.append("–")
                elif base is None or mode == "none" or not math.isfinite(value):
                    row_cells.append(f"{value:,.1f}")
                else:
                    row_cells.append(f"{value:,.1f} ({base / value:.1f}×)")
            out.append(f"| {criterion} | " + " | ".join(row_cells) + " |")
        # the gap between criteria: worst / best over the criteria measured with that reconstruction
        spread = []
        for mode in modes:
            measured = [v for (_, m), v in values.items() if m == mode and math.isfinite(v)]
            spread.append(f"{max(measured) / min(measured):,.1f}× ({len(measured)})" if len(measured) > 1 else "–")
        out.append("| worst / best (criteria) | " + " | ".join(spread) + " |")
        if "bias" in modes and "liar" in modes:
            gains = [f"{criterion} {values[(criterion, 'bias')] / values[(criterion, 'liar')]:.1f}×"
                     for criterion in criteria if (criterion, "bias") in values and (criterion, "liar") in values]
            out.append(f"\nliar below bias: {', '.join(gains)}")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tag", default="smollm2")
    p.add_argument("--metric", default="ppl512", help="ppl512 or ppl128")
    p.add_argument("--calib", default="wiki-embedded-128x512", help="calibration tag of the runs, SOURCE-NxL")
    p.add_argument("--targets", default="both")
    args = p.parse_args()
    rows = load_rows(args.tag)
    dense = next((r for r in rows if r.get("method") == "dense"), None)
    if dense is not None and args.metric in dense:
        print(f"dense {args.metric}: {dense[args.metric]:.2f}")
    print(pivot(rows, args.metric, args.calib, args.targets))


if __name__ == "__main__":
    main()
