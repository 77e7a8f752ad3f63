"""Which of reprune's outputs a real serving engine (vLLM) serves, and whether it decodes them as transformers does.

For the bundled SmolLM2-135M (real weights: dense, uniform flap + bias and flap + LIAR at 20 %, global
allocation) and for a small random model of every causal model type the adapters serve (dense and
uniformly pruned), this saves the checkpoint exactly as reprune writes it, serves the folder with
``vllm.LLM(model=folder, dtype="float32", enforce_eager=True)`` and compares vLLM's greedy tokens on
three prompts with greedy decoding by transformers (``reprune.load``, which also reads per-layer
checkpoints). Two virtual environments take part: this one (reprune, transformers 5) prunes and decodes;
vLLM, which pins an older transformers, lives in its own and serves each folder in a fresh process
(``--vllm-python``), running this same file as a worker that imports nothing but vLLM.

    python -m benchmarks.vllm_check --vllm-python /work/vllm-venv/bin/python
    python -m benchmarks.vllm_check --vllm-python ... --types llama,qwen2 --no-smollm2   # a quick subset

Prints a Markdown table and writes the rows as JSON (``--json``, default ``benchmarks/results/vllm_check.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# vLLM's CPU backend: KV cache size in GiB (its default of 4 GiB per process is more than a tiny model
# needs), no pinning of OpenMP threads to cores the container may not own, engine in this process
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_TARGET_DEVICE": "cpu",
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}
SMOLLM2_PROMPTS = ("The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, in a small village,")
# sizes of the random models: head size 64, which vLLM's CPU attention supports (the contract tests' 8 is not)
SERVE_SIZES = {"vocab_size": 512, "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
               "intermediate_size": 512, "max_position_embeddings": 128}
TINY_PROMPT_LEN = 8


@dataclass
class Case:
    """One folder to serve: which model, how it was pruned, what the checkpoint needs to load."""

    model: str
    variant: str
    folder: str
    checkpoint: str = "dense"  # dense | plain config | manifest (remote code)
    sizes: str = ""
    prompts: list[list[int]] = field(default_factory=list)
    error: str = ""  # building or pruning failed


@dataclass
class Row:
    """A case with both engines' greedy tokens compared."""

    case: Case
    loads_in_vllm: bool = False
    prompts_equal: int = 0  # prompts whose greedy tokens are all equal
    tokens_equal: list[int] = field(default_factory=list)  # per prompt: tokens equal before the first difference
    margin_at_difference: list[float | None] = field(default_factory=list)  # transformers' top-1 minus top-2 logit
    error: str = ""


# ---- the vLLM side: runs in the vLLM venv, imports nothing from reprune ---------------------------------

def serve_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Greedy tokens of one folder served by vLLM, or why it was refused."""
    import gc

    from vllm import LLM, SamplingParams

    result: dict[str, Any] = {"folder": spec["folder"], "loads": False}
    folder = Path(spec["folder"])
    has_tokenizer = any((folder / name).exists() for name in ("tokenizer.json", "tokenizer.model"))
    try:
        llm = LLM(model=str(folder), dtype="float32", enforce_eager=True, max_model_len=spec["max_model_len"],
                  skip_tokenizer_init=not has_tokenizer, seed=0)
    except Exception as err:  # noqa: BLE001  (the table reports why vLLM refused the folder)
        return {**result, "error": f"{type(err).__name__}: {err}"}
    result["loads"] = True
    try:
        params = SamplingParams(temperature=0.0, max_tokens=spec["new_tokens"], ignore_eos=True,
                                detokenize=has_tokenizer)
        outputs = llm.generate([{"prompt_token_ids": ids} for ids in spec["prompts"]], params, use_tqdm=False)
        result["tokens"] = [list(out.outputs[0].token_ids) for out in outputs]
    except Exception as err:  # noqa: BLE001
        result["error"] = f"generate: {type(err).__name__}: {err}"
    del llm
    gc.collect()
    return result


def vllm_worker(specs_path: str, out_path: str) -> None:
    """Serve each folder of ``specs_path`` in turn (vLLM's start-up costs a minute, a folder seconds),
    appending one JSON line per folder to ``out_path`` so that a crash loses only the folder it hit."""
    with open(out_path, "a") as out:
        for spec in json.loads(Path(specs_path).read_text()):
            out.write(json.dumps(serve_one(spec)) + "\n")
            out.flush()


def serve_with_vllm(vllm_python: str, specs: list[dict[str, Any]], timeout: int) -> dict[str, dict[str, Any]]:
    """Run :func:`vllm_worker` in vLLM's venv; after a crash or a hang the folder it hit is reported and a
    fresh process goes on with the rest. Returns the results by folder."""
    results: dict[str, dict[str, Any]] = {}
    env = {**os.environ, **VLLM_ENV}
    env.pop("PYTHONPATH", None)  # the vLLM venv must not see this venv's packages
    with tempfile.TemporaryDirectory() as scratch:
        spec_file, out_file = Path(scratch) / "specs.json", Path(scratch) / "out.jsonl"
        while len(results) < len(specs):
            pending = [spec for spec in specs if spec["folder"] not in results]
            spec_file.write_text(json.dumps(pending))
            out_file.write_text("")
            try:
                done = subprocess.run([vllm_python, __file__, "--worker", str(spec_file), str(out_file)], env=env,
                                      cwd=scratch, capture_output=True, text=True, timeout=timeout * len(pending))
                failure = f"vLLM process exited {done.returncode}: " + " / ".join(
                    (done.stderr or done.stdout).strip().splitlines()[-3:])
            except subprocess.TimeoutExpired:
                failure = f"vLLM did not finish within {timeout} s per folder"
            for line in out_file.read_text().splitlines():
                result = json.loads(line)
                results[result["folder"]] = result
            if len(results) < len(specs):  # the process died on the first folder it did not report
                crashed = next(spec["folder"] for spec in specs if spec["folder"] not in results)
                results[crashed] = {"folder": crashed, "loads": False, "error": failure}
    return results


# ---- the reprune side: builds, prunes, decodes with transformers ----------------------------------------

def describe(folder: Path) -> tuple[str, str]:
    """(checkpoint kind, per-layer attention heads / FFN width) of a saved folder."""
    config = json.loads((folder / "config.json").read_text())
    record_file = folder / "reprune_report.json"
    if not record_file.exists():
        return "dense", ""
    kind = "manifest (remote code)" if config.get("reprune_manifest") else "plain config"
    layers = json.loads(record_file.read_text()).get("layers", [])
    sizes = {kind_: sorted({layer["units_after"] for layer in layers if layer["kind"] == kind_})
             for kind_ in ("attention", "ffn")}
    return kind, ", ".join(f"{k} {'/'.join(map(str, v))}" for k, v in sizes.items() if v)


def greedy_transformers(folder: str, prompts: list[list[int]], new_tokens: int) -> tuple[list[list[int]], list[list[float]]]:
    """Greedy tokens without a cache or an end-of-text stop (as vLLM with ``ignore_eos``), and at each
    step the top-1 minus top-2 logit, which says whether a difference is a near tie."""
    import torch

    from reprune.checkpoint import load

    model = load(folder, dtype=torch.float32).eval()
    tokens, margins = [], []
    for prompt in prompts:
        ids, generated, gaps = torch.tensor([prompt]), [], []
        with torch.no_grad():
            for _ in range(new_tokens):
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].double()
                top = torch.topk(logits, 2)
                generated.append(int(top.indices[0]))
                gaps.append(float(top.values[0] - top.values[1]))
                ids = torch.cat([ids, top.indices[:1].view(1, 1)], dim=1)
        tokens.append(generated)
        margins.append(gaps)
    return tokens, margins


def compare(case: Case, served: dict[str, Any], reference: list[list[int]], margins: list[list[float]]) -> Row:
    row = Row(case, loads_in_vllm=bool(served.get("loads")), error=served.get("error", ""))
    for ours, theirs, gaps in zip(reference, served.get("tokens", []), margins):
        same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), len(ours))
        row.tokens_equal.append(same)
        row.margin_at_difference.append(None if same == len(ours) else gaps[same])
        row.prompts_equal += same == len(ours) == len(theirs)
    return row


def prune_smollm2(work: Path, reuse: bool) -> list[Case]:
    """The bundled SmolLM2-135M dense and pruned at 20 %, with the default calibration (wiki-embedded)."""
    from transformers import AutoTokenizer

    from reprune import PruneConfig
    from reprune.models import smollm2_path
    from reprune.workflow import prune_folder

    source = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(source)
    prompts = [tokenizer(text)["input_ids"] for text in SMOLLM2_PROMPTS]
    cases = [Case("smollm2", "dense", str(source), prompts=prompts)]
    variants = {"uniform flap + bias 20%": PruneConfig(ratio=0.2, criterion="flap", reconstruction="bias",
                                                       allocation="uniform"),
                "uniform flap + LIAR 20%": PruneConfig(ratio=0.2, criterion="flap", reconstruction="liar",
                                                       allocation="uniform"),
                "global flap + bias 20%": PruneConfig(ratio=0.2, criterion="flap", reconstruction="bias",
                                                      allocation="global")}
    for variant, config in variants.items():
        folder = work / "smollm2" / variant.replace(" ", "-").replace("+", "").replace("%", "")
        case = Case("smollm2", variant, str(folder), prompts=prompts)
        try:
            if not (reuse and (folder / "config.json").exists()):
                prune_folder("smollm2", folder, config, overwrite=True, progress=False)
            case.checkpoint, case.sizes = describe(folder)
        except Exception as err:  # noqa: BLE001  (the table reports a failed prune)
            case.error = f"prune: {type(err).__name__}: {err}"
        cases.append(case)
    return cases


def serving_overrides(model_type: str) -> dict[str, Any]:
    """The adapter's tiny config scaled to :data:`SERVE_SIZES`: head size hidden / heads, a nested text config too."""
    from reprune.adapters import ADAPTER_CLASSES

    head_dim = SERVE_SIZES["hidden_size"] // SERVE_SIZES["num_attention_heads"]

    def scaled(keys: dict[str, Any]) -> dict[str, Any]:
        out = dict(keys)
        for key in ("head_dim", "query_pre_attn_scalar"):
            if key in out:
                out[key] = head_dim
        if "moe_intermediate_size" in out:
            out["moe_intermediate_size"] = SERVE_SIZES["intermediate_size"] // 2
        return out

    overrides = scaled(ADAPTER_CLASSES[model_type].tiny_config.get(model_type, {}))
    if "text_config" in overrides:  # multimodal: the language model takes the serving sizes
        overrides["text_config"] = {**scaled(overrides["text_config"]), **SERVE_SIZES}
    return overrides


def prune_tiny(work: Path, model_type: str, ratio: float, seed: int = 0) -> list[Case]:
    """A random model of ``model_type`` (the contract tests' builder at :data:`SERVE_SIZES`), saved dense and
    after uniform flap + bias and flap + LIAR on random token ids."""
    import torch

    from reprune import PruneConfig, prune, save_pruned

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import contract_model

    generator = torch.Generator().manual_seed(seed)
    vocab = SERVE_SIZES["vocab_size"]
    prompts = torch.randint(4, vocab, (3, TINY_PROMPT_LEN), generator=generator).tolist()
    calibration = torch.randint(4, vocab, (32, 32), generator=generator)
    cases = []
    dense_folder = work / model_type / "dense"
    try:
        model = contract_model(model_type, seed=seed, sizes=SERVE_SIZES, **serving_overrides(model_type))
        model.save_pretrained(dense_folder)
        cases.append(Case(model_type, "dense", str(dense_folder), prompts=prompts))
    except Exception as err:  # noqa: BLE001
        return [Case(model_type, "dense", str(dense_folder), prompts=prompts, error=f"build: {type(err).__name__}: {err}")]
    for reconstruction in ("bias", "liar"):
        variant = f"uniform flap + {reconstruction if reconstruction == 'bias' else 'LIAR'} {ratio:.0%}"
        folder = work / model_type / f"flap-{reconstruction}"
        case = Case(model_type, variant, str(folder), prompts=prompts)
        try:
            pruned, record = prune(contract_model(model_type, seed=seed, sizes=SERVE_SIZES,
                                                  **serving_overrides(model_type)), calibration,
                                   PruneConfig(ratio=ratio, criterion="flap", reconstruction=reconstruction,
                                               allocation="uniform", batch_size=8), progress=False)
            save_pruned(pruned, None, folder, record, overwrite=True)
            case.checkpoint, case.sizes = describe(folder)
        except Exception as err:  # noqa: BLE001
            case.error = f"prune: {type(err).__name__}: {err}"
        cases.append(case)
    return cases


def causal_model_types() -> list[str]:
    from reprune.adapters import ADAPTER_CLASSES, supported_model_types

    return [t for t in supported_model_types() if ADAPTER_CLASSES[t].causal]


def headline(error: str) -> str:
    """The line of an error that names the problem (pydantic's first line only counts the errors)."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    reason = next((line for line in lines if line.startswith("Value error,")), lines[0] if lines else "")
    return reason.removeprefix("Value error, ")


def print_row(row: Row) -> None:
    case = row.case
    equal = f"{row.prompts_equal}/{len(case.prompts)} prompts" if row.loads_in_vllm and not row.error else "–"
    if row.loads_in_vllm and row.prompts_equal < len(case.prompts):
        equal += " (equal tokens " + ", ".join(map(str, row.tokens_equal)) + "; margin " + ", ".join(
            "–" if m is None else f"{m:.2g}" for m in row.margin_at_difference) + ")"
    error = headline(row.error).replace("|", "/")[:160]
    print(f"| {case.model} | {case.variant} | {case.checkpoint} {case.sizes} | {'yes' if row.loads_in_vllm else 'no'} "
          f"| {equal} | {error} |", flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-python", required=True, help="python of the virtual environment vLLM is installed in")
    parser.add_argument("--types", default="", help="comma-separated model types (default: every causal one)")
    parser.add_argument("--no-smollm2", action="store_true", help="skip the bundled SmolLM2-135M")
    parser.add_argument("--reuse", action="store_true", help="serve SmolLM2 folders already pruned in --work-dir")
    parser.add_argument("--ratio", type=float, default=0.2, help="pruning ratio of the random models")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--timeout", type=int, default=300, help="seconds vLLM may take per folder")
    parser.add_argument("--work-dir", default=str(ROOT / "benchmarks" / "results" / "vllm-models"))
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "vllm_check.json"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    work = Path(args.work_dir)
    cases = prune_smollm2(work, args.reuse) if not args.no_smollm2 else []
    for model_type in [t for t in args.types.split(",") if t] or causal_model_types():
        cases += prune_tiny(work, model_type, args.ratio)
    references = {}
    for case in [case for case in cases if not case.error]:
        try:
            references[case.folder] = greedy_transformers(case.folder, case.prompts, args.new_tokens)
        except Exception as err:  # noqa: BLE001  (the table reports a folder transformers cannot decode)
            case.error = case.error or f"transformers: {type(err).__name__}: {err}"
    servable = [case for case in cases if not case.error]
    served = serve_with_vllm(args.vllm_python, [
        {"folder": case.folder, "prompts": case.prompts, "new_tokens": args.new_tokens,
         "max_model_len": 128 if case.model == "smollm2" else SERVE_SIZES["max_position_embeddings"]}
        for case in servable], args.timeout)
    rows = [compare(case, served[case.folder], *references[case.folder]) if not case.error
            else Row(case, error=case.error) for case in cases]
    print("| model | pruned | checkpoint, kept heads / FFN width per layer | loads in vLLM | greedy tokens equal "
          "transformers | error |\n|---|---|---|---|---|---|")
    for row in rows:
        print_row(row)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps([asdict(row) for row in rows], indent=1))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        vllm_worker(sys.argv[2], sys.argv[3])
    else:
        main()
