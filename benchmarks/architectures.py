"""Every adapted model type on a tiny random model: loads, prunes (heads and neurons), saves, reloads with
plain transformers or with the checkpoint's own loader (remote code), and how many contract tests pass.

    python -m benchmarks.architectures            # prints a Markdown table (about 10 minutes on 2 cores)
    python -m benchmarks.architectures --types olmo2,llama    # only these rows
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import transformers

from reprune import PruneConfig, prune, save_pruned
from reprune.adapters import ADAPTER_CLASSES, supported_model_types

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from tiny_models import calibration_batch, contract_model, model_output  # noqa: E402


def round_trip(model_type: str) -> dict[str, str]:
    """Prune 30 % (flap + LIAR, uniform), save, reload the way a user without reprune would."""
    ids = calibration_batch(16, 16)
    model = contract_model(model_type)
    row = {"loads": "yes"}
    model, record = prune(model, ids, PruneConfig(ratio=0.3, reconstruction="liar", batch_size=8), progress=False)
    removed = {layer.kind for layer in record.layers if layer.units_after < layer.units_before}
    row["prunes"] = " + ".join(kind for kind in ("attention", "ffn") if kind in removed) or "nothing"
    with tempfile.TemporaryDirectory() as folder:
        out = save_pruned(model, None, Path(folder) / "pruned", record)
        row["saves"] = "yes"
        auto = transformers.AutoModelForCausalLM if ADAPTER_CLASSES[model_type].causal else transformers.AutoModel
        plain = not (out / "modeling_reprune.py").exists()
        loaded = auto.from_pretrained(out, trust_remote_code=not plain)
        same = torch.allclose(model_output(loaded, ids), model_output(model, ids), atol=1e-5)
        row["reloads"] = f"{'plain' if plain else 'remote code'}, {'same logits' if same else 'DIFFERENT logits'}"
    return row


def contract_counts(model_types: list[str]) -> dict[str, tuple[int, int]]:
    """(passed, failed) contract tests per model type, from one pytest run over those types' tests."""
    selection = ["-k", " or ".join(model_types)] if model_types != supported_model_types() else []
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                             "tests/test_contract.py", *selection], cwd=ROOT, capture_output=True, text=True)
    types = sorted(supported_model_types(), key=len, reverse=True)
    counts = {t: [0, 0] for t in types}
    for outcome, params in re.findall(r"^(PASSED|FAILED) tests/test_contract.py::\w+\[([^\]]+)\]", result.stdout, re.M):
        model_type = next((t for t in types if params == t or params.startswith(f"{t}-")), None)
        if model_type is not None:
            counts[model_type][outcome == "FAILED"] += 1
    return {t: (p, f) for t, (p, f) in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", help="comma-separated model types (default: every adapted one)")
    args = parser.parse_args()
    model_types = args.types.split(",") if args.types else supported_model_types()
    unknown = sorted(set(model_types) - set(supported_model_types()))
    if unknown:
        parser.error(f"--types: {', '.join(unknown)} not adapted; choose from {', '.join(supported_model_types())}")
    counts = contract_counts(model_types)
    print("| model type | adapter | loads | prunes | saves | reloads | contract tests |")
    print("|---|---|---|---|---|---|---|")
    for model_type in model_types:
        try:
            row = round_trip(model_type)
        except Exception as err:  # noqa: BLE001  (the table reports any failure)
            row = {"loads": f"error: {type(err).__name__}: {err}"[:80]}
        passed, failed = counts[model_type]
        print(f"| {model_type} | {ADAPTER_CLASSES[model_type].__name__} | {row.get('loads', '')} | "
              f"{row.get('prunes', '')} | {row.get('saves', '')} | {row.get('reloads', '')} | "
              f"{passed} passed, {failed} failed |")


if __name__ == "__main__":
    main()
