"""Windowed perplexity equals a direct per-window computation; file reading and error messages."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from reprune.evaluation.perplexity import perplexity, read_text_file
from tiny_models import tiny_llama_for


@pytest.fixture(scope="module")
def tiny_llama(tokenizer) -> transformers.LlamaForCausalLM:
    return tiny_llama_for(tokenizer, max_positions=128)


def sample_text(words: int = 400, seed: int = 0) -> str:
    vocabulary = "the of and a to in is was for on that with as by it he at from his an were are which".split()
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(vocabulary, size=words))


def test_matches_mean_of_per_window_losses(tiny_llama, tokenizer) -> None:
    text, seq_len = sample_text(), 32
    ids = tokenizer(text)["input_ids"]
    n_windows = len(ids) // seq_len
    assert n_windows >= 5
    losses = []
    with torch.no_grad():
        for w in range(n_windows):  # HF's own loss: mean CE over the seq_len - 1 predicted tokens of a window
            window = torch.tensor([ids[w * seq_len : (w + 1) * seq_len]])
            losses.append(tiny_llama(window, labels=window).loss.item())
    result = perplexity(tiny_llama, tokenizer, text, seq_len=seq_len, batch_size=3, progress=False)  # partial batch
    assert result["windows"] == n_windows
    assert result["tokens"] == n_windows * (seq_len - 1)
    assert result["nll"] == pytest.approx(np.mean(losses), rel=1e-5)
    assert result["ppl"] == pytest.approx(math.exp(np.mean(losses)), rel=1e-5)
    first_two = perplexity(tiny_llama, tokenizer, text, seq_len=seq_len, max_windows=2, progress=False)
    assert first_two["windows"] == 2
    assert first_two["nll"] == pytest.approx(np.mean(losses[:2]), rel=1e-5)


def test_errors_are_explicit(tiny_llama, tokenizer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fewer than one window"):
        perplexity(tiny_llama, tokenizer, "too short", seq_len=64, progress=False)
    with pytest.raises(ValueError, match="maximum length 128"):
        perplexity(tiny_llama, tokenizer, sample_text(), seq_len=256, progress=False)
    with pytest.raises(FileNotFoundError, match="missing.raw"):
        read_text_file(tmp_path / "missing.raw")


def test_read_text_file_joins_lines_with_newlines(tmp_path: Path) -> None:
    path = tmp_path / "wiki.test.raw"
    path.write_bytes(b" = Title = \r\n \r\n Some text .\r\n")
    assert read_text_file(path) == " = Title = \n \n Some text .\n"


@pytest.mark.integration
def test_smollm2_wikitext2_perplexity_is_plausible(tokenizer) -> None:
    from reprune.models import shared_data_dir, smollm2_path

    path = shared_data_dir() / "wikitext-2-raw" / "canonical" / "wiki.test.raw"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    model = transformers.AutoModelForCausalLM.from_pretrained(smollm2_path(), dtype=torch.float32)
    result = perplexity(model, tokenizer, read_text_file(path), seq_len=256, max_windows=2, progress=False)
    assert result["windows"] == 2
    assert 5.0 < result["ppl"] < 80.0  # a trained 135M model; a random one is near the vocabulary size (49k)
