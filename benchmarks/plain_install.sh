#!/usr/bin/env bash
# A plain install works (issue 17, item 7): a fresh virtual environment, the pinned CPU torch, then
# `pip install <this checkout>` without extras (no gensim, no bundled models), and `reprune prune` with the
# default calibration (wiki-embedded) from outside the checkout. Not part of `make test`: it installs
# packages (2-5 minutes).
#
#   bash benchmarks/plain_install.sh [MODEL]     # MODEL: a model folder or .gguf file;
#                                                # default: a tiny random LLaMA written as GGUF
# Environment: VENV (default /tmp/plainvenv), OUT (default /tmp/plain-install-out), PYTHON (default python3).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-/tmp/plainvenv}
out=${OUT:-/tmp/plain-install-out}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rm -rf "$venv" "$out"
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/pip" install -q torch==2.13.0  # the CPU wheel on disk; never an unpinned torch
"$venv/bin/pip" install -q "$repo"        # not editable, no extras
if "$venv/bin/python" -c "import gensim" 2>/dev/null; then
    echo "FAIL: gensim is installed, so this is not a plain install" >&2; exit 1
fi
model=${1:-}
if [ -z "$model" ]; then
    model="$work/tiny.gguf"
    (cd "$repo/tests" && "$venv/bin/python" -c "import sys; from pathlib import Path; from tiny_models import write_tiny_gguf; write_tiny_gguf(Path(sys.argv[1]))" "$model")
fi
cd "$work"  # outside the checkout: only the installed package is importable
export REPRUNE_CACHE="$work/cache"
"$venv/bin/python" -c "import reprune, sys; assert '$repo' not in reprune.__file__, reprune.__file__; print('reprune from', reprune.__file__)"
"$venv/bin/reprune" prune --model "$model" --ratio 0.2 --out "$out" --device cpu
test -f "$out/README.md" && test -f "$out/reprune_report.json"
"$venv/bin/python" - "$out" <<'PY'
import json, sys
record = json.load(open(f"{sys.argv[1]}/reprune_report.json"))
calibration = record["calibration"]
assert calibration["source"] == "wiki-embedded", calibration
print(f"plain install OK: {calibration['num_samples']} x {calibration['seq_len']} tokens of {calibration['source']}, "
      f"{record['parameters']['ratio_total']:.1%} of all parameters removed")
PY
