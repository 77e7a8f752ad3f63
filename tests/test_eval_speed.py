"""Speed measurement on tiny random models of every supported family: sizes exact, timings positive."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import FAMILIES, VOCAB, calibration_batch, tiny_model

from reprune import PruneConfig, prune
from reprune.evaluation.speed import compare_speed, directory_size, forward_flops, measure_speed

ENCODERS = {"bert"}


@pytest.mark.parametrize("family", FAMILIES)
def test_measure_speed_reports_exact_size_and_positive_timings(family: str) -> None:
    model = tiny_model(family)
    stats = measure_speed(model, VOCAB, batch_size=2, prompt_len=16, new_tokens=4, repeats=2)
    assert stats["params"] == sum(p.numel() for p in model.parameters())
    assert stats["param_bytes"] == sum(p.numel() * p.element_size() for p in model.parameters())
    assert stats["prefill_latency_s"] > 0 and stats["prefill_tokens_per_s"] > 0
    assert stats["prefill_tokens_per_s"] == pytest.approx(2 * 16 / stats["prefill_latency_s"])
    if family in ENCODERS:  # no generate(): prefill only
        assert stats["decode_latency_per_token_s"] is None and stats["decode_tokens_per_s"] is None
        assert stats["new_tokens"] == 0
    else:
        assert stats["decode_latency_per_token_s"] > 0
        assert stats["decode_tokens_per_s"] == pytest.approx(2 / stats["decode_latency_per_token_s"])
    assert stats["peak_memory_bytes"] >= 0  # CPU: rise of peak RSS, 0 when the process had peaked before
    on_cuda = stats["device"].startswith("cuda")
    assert stats["memory_source"] == ("cuda_max_memory_allocated" if on_cuda else "cpu_peak_rss_increase")


def test_measure_speed_accepts_a_tokenizer_and_checks_lengths() -> None:
    class FakeTokenizer:
        def __len__(self) -> int:
            return VOCAB

    model = tiny_model("llama")
    assert measure_speed(model, FakeTokenizer(), prompt_len=8, new_tokens=2, repeats=1)["params"] > 0
    with pytest.raises(ValueError, match="maximum length 64"):
        measure_speed(model, VOCAB, prompt_len=60, new_tokens=8)


def test_compare_speed_ratios() -> None:
    dense, smaller = tiny_model("llama"), tiny_model("llama-mha")
    result = compare_speed(dense, smaller, VOCAB, prompt_len=8, new_tokens=2, repeats=1)
    dense_params = sum(p.numel() for p in dense.parameters())
    smaller_params = sum(p.numel() for p in smaller.parameters())
    assert result["param_ratio"] == pytest.approx(smaller_params / dense_params)
    assert result["prefill_speedup"] == pytest.approx(
        result["dense"]["prefill_latency_s"] / result["pruned"]["prefill_latency_s"]
    )
    assert result["decode_speedup"] > 0


def test_directory_size_counts_nested_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "sub" / "config.json").write_bytes(b"{}" * 10)
    assert directory_size(tmp_path) == 1020
    assert directory_size(tmp_path / "model.safetensors") == 1000
    with pytest.raises(FileNotFoundError, match="nope"):
        directory_size(tmp_path / "nope")


def test_decode_uses_the_kv_cache() -> None:
    """Decoding must be incremental: each step feeds one token, so the prefill is not repeated."""
    model = tiny_model("llama")
    seen: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda _, args, kwargs: seen.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        measure_speed(model, VOCAB, prompt_len=12, new_tokens=3, repeats=1)
    finally:
        hook.remove()
    # warm-up prefill, warm-up decode (prefill + 3 steps), timed prefill, timed decode (prefill + 3 steps)
    assert seen == [12, 12, 1, 1, 1, 12, 12, 1, 1, 1]


def test_forward_flops_count_projections_lm_head_and_attention_scores() -> None:
    model = tiny_model("llama")  # 3 blocks: d 32, 4 heads of 8 over 2 KV heads, FFN 48, vocab 128
    per_block = 32 * 32 + 32 * 16 + 32 * 16 + 32 * 32 + 3 * 32 * 48  # q, k, v, o, gate/up/down
    macs_per_token = 3 * per_block + 32 * VOCAB  # and the LM head
    assert forward_flops(model, 16) == 2 * macs_per_token * 16 + 3 * 4 * 16 * 16 * 4 * 8
    pruned, record = prune(model, calibration_batch(8, 16), PruneConfig(ratio=0.3, reconstruction="none"),
                           progress=False)
    removed = record.parameters.prunable_before - record.parameters.prunable_after  # weights only: no biases
    heads = sum(shape.num_heads for shape in record.shapes)
    assert forward_flops(pruned, 16) == 2 * (macs_per_token * 16 - removed * 16) + 4 * 16 * 16 * 8 * heads
