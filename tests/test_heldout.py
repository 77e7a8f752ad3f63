"""Recovery rows and held-out rows: drawn apart from the calibration rows, and the errors measured on them."""

from __future__ import annotations

import pytest
import torch
from tiny_models import calibration_batch, model_output, tiny_llama_for, tiny_model

from reprune import PruneConfig, prune
from reprune.adapters import get_adapter
from reprune.data import CorpusError, calibration_ids, calibration_sets, embedded_corpus_texts, resolve_calibration_sets
from reprune.model_card import render_card
from reprune.report import block_rows, layer_table
from reprune.stats import CrossMoments, dense_output_error


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return embedded_corpus_texts()[:40]


def _window_starts(ids: torch.Tensor, rows: torch.Tensor) -> set[int]:
    """Token positions of the corpus ``ids`` that the windows ``rows`` cover (each window found by search)."""
    covered = set()
    for row in rows:
        hits = [s for s in range(ids.numel() - row.numel() + 1) if torch.equal(ids[s : s + row.numel()], row)]
        assert hits, "every window is a slice of the corpus"
        covered |= set(range(hits[0], hits[0] + row.numel()))
    return covered


def test_sets_after_the_first_overlap_no_earlier_window(tokenizer, texts) -> None:
    calibration, recovery, heldout = calibration_sets(tokenizer, texts, [12, 20, 6], seq_len=32, seed=3)
    assert torch.equal(calibration, calibration_ids(tokenizer, texts, 12, 32, seed=3))  # the same draw as before
    assert (recovery.shape, heldout.shape) == ((20, 32), (6, 32))
    ids = tokenizer(tokenizer.eos_token.join(texts), return_tensors="pt", add_special_tokens=False).input_ids[0]
    first, second, third = (_window_starts(ids, rows) for rows in (calibration, recovery, heldout))
    assert not first & second and not first & third and not second & third


def test_a_corpus_too_short_for_disjoint_sets_is_refused(tokenizer, texts) -> None:
    with pytest.raises(CorpusError, match="too short"):
        calibration_sets(tokenizer, texts[:1], [2, 10_000], seq_len=64, seed=0)


def test_random_token_sets_are_seeded_and_differ() -> None:
    model = tiny_model("llama")
    first, second = resolve_calibration_sets("random-tokens", None, model, [4, 3], 8, seed=0)
    again = resolve_calibration_sets("random-tokens", None, model, [4], 8, seed=0)[0]
    assert first.shape == (4, 8) and second.shape == (3, 8)
    assert torch.equal(first, again) and not torch.equal(first[:3], second)
    assert int(first.max()) < model.get_input_embeddings().num_embeddings


def test_dense_output_error_equals_the_rows_error() -> None:
    generator = torch.Generator().manual_seed(0)
    x_dense = torch.randn(300, 5, generator=generator, dtype=torch.float64) + 0.5
    x_pruned = x_dense + 0.3 * torch.randn(300, 5, generator=generator, dtype=torch.float64)
    w, w_d = (torch.randn(5, 3, generator=generator, dtype=torch.float64) for _ in range(2))
    b, b_d = (torch.randn(3, generator=generator, dtype=torch.float64) for _ in range(2))
    cross = CrossMoments()
    for rows in range(0, 300, 100):  # in batches, as calibration adds them
        cross.update(x_pruned[rows : rows + 100], x_dense[rows : rows + 100])
    target = x_dense @ w_d + b_d
    expected = ((x_pruned @ w + b - target).pow(2).sum() / target.pow(2).sum()).item()
    assert dense_output_error(cross, w, b, w_d, b_d) == pytest.approx(expected, rel=1e-9)
    assert dense_output_error(cross, w_d, b_d, w_d, b_d) > 0  # the pruned-path inputs differ
    assert dense_output_error(cross, w, None, w, None) == pytest.approx(
        ((x_pruned - x_dense) @ w).pow(2).sum().item() / (x_dense @ w).pow(2).sum().item(), rel=1e-9)


def test_heldout_rows_equal_to_the_calibration_rows_give_the_calibration_errors() -> None:
    """The held-out pass measures the same quantity as calibration: on the same rows it is the same number."""
    ids = calibration_batch(8, 16)
    config = PruneConfig(ratio=0.3, recovery="goa", recovery_samples=0, heldout_samples=8, multiple_of=1)
    _, record = prune(tiny_model("llama"), ids, config, progress=False, heldout=ids)
    assert record.calibration.heldout_samples == 8
    for layer in record.layers:
        assert layer.heldout_error_none == pytest.approx(layer.error_none, rel=1e-6)
        assert layer.heldout_error == pytest.approx(layer.error, rel=1e-6)
        assert layer.heldout_recovery_error_after == pytest.approx(layer.recovery_error_after, rel=1e-6, abs=1e-12)
        if layer.block > 0:  # block 0 sees the dense input (before = 0): there the ridge only costs a little
            assert layer.recovery_error_after < layer.recovery_error_before


def test_a_fit_on_few_rows_shows_a_larger_heldout_error() -> None:
    """LIAR on 2 × 12 rows for a 64-neuron FFN interpolates its rows; on fresh rows its error is far larger."""
    config = PruneConfig(ratio=0.5, criterion="flap", heldout_samples=8, multiple_of=1)
    _, record = prune(tiny_model("llama"), calibration_batch(2, 12), config, progress=False,
                      heldout=calibration_batch(8, 12, seed=9))
    ffn = [layer for layer in record.layers if layer.kind == "ffn"]
    assert all(layer.heldout_error > 2 * layer.error for layer in ffn)
    assert all(layer.heldout_error_none > 0 for layer in ffn)


def test_text_calibration_draws_recovery_and_heldout_rows_of_their_own(tokenizer, texts) -> None:
    model = tiny_llama_for(tokenizer, 64)
    config = PruneConfig(ratio=0.3, recovery="goa-current", num_samples=4, seq_len=16, recovery_samples=12,
                         heldout_samples=3, multiple_of=1)
    _, record = prune(model, texts, config, tokenizer=tokenizer, progress=False)
    assert (record.calibration.num_samples, record.calibration.recovery_samples,
            record.calibration.heldout_samples) == (4, 12, 3)
    for layer in record.layers:
        assert None not in (layer.heldout_error, layer.recovery_error_before, layer.recovery_error_after,
                            layer.heldout_recovery_error_before, layer.heldout_recovery_error_after)
    without = PruneConfig(ratio=0.3, num_samples=4, seq_len=16, heldout_samples=0, multiple_of=1)
    _, plain = prune(tiny_llama_for(tokenizer, 64), texts, without, tokenizer=tokenizer, progress=False)
    assert plain.calibration.heldout_samples == plain.calibration.recovery_samples == 0
    assert all(layer.heldout_error is None and layer.recovery_error_after is None for layer in plain.layers)


def test_ready_ids_leave_a_recovery_on_the_calibration_rows_with_a_warning() -> None:
    config = PruneConfig(ratio=0.3, recovery="goa", recovery_samples=64)
    with pytest.warns(UserWarning, match="recovery_samples=0"):
        _, record = prune(tiny_model("llama"), calibration_batch(4, 8), config, progress=False)
    assert record.calibration.recovery_samples == 0


def test_separate_recovery_rows_change_the_result(tokenizer, texts) -> None:
    """The recovery fits on its own rows: the same run recovering on the scoring rows gives other weights."""
    config = PruneConfig(ratio=0.3, recovery="goa", num_samples=4, seq_len=16, recovery_samples=12,
                         heldout_samples=0)
    models = {samples: tiny_llama_for(tokenizer, 64) for samples in (12, 0)}
    for samples, model in models.items():
        prune(model, texts, PruneConfig(**{**config.__dict__, "recovery_samples": samples}), tokenizer=tokenizer,
              progress=False)
    probe = calibration_batch(2, 8, seed=11)
    assert not torch.allclose(model_output(models[12], probe), model_output(models[0], probe))


def test_goa_current_stays_near_the_weights_where_the_ridge_dominates() -> None:
    """With a huge ridge, goa-current keeps the current weights and goa shrinks them toward zero."""
    ids = calibration_batch(8, 16)
    norms = {}
    for recovery in ("goa", "goa-current"):
        model = tiny_model("llama")
        before = get_adapter(model).depth2_modules(0)[1].level2.weight().detach().clone()
        config = PruneConfig(ratio=0.0, recovery=recovery, recovery_alpha=1e6, recovery_samples=0, heldout_samples=0)
        prune(model, ids, config, progress=False)
        after = get_adapter(model).depth2_modules(0)[1].level2.weight().detach()
        norms[recovery] = ((after - before).norm() / before.norm()).item()
    assert norms["goa-current"] < 1e-3 < 0.9 < norms["goa"]


def test_report_shows_heldout_and_recovery_columns() -> None:
    ids = calibration_batch(8, 16)
    config = PruneConfig(ratio=0.3, recovery="goa", recovery_samples=0, heldout_samples=4)
    _, record = prune(tiny_model("llama"), ids, config, progress=False, heldout=calibration_batch(4, 16, seed=2))
    table = layer_table(block_rows(record))
    assert "attention held-out error" in table.header and "FFN recovery vs dense (before → after)" in table.header
    assert "FFN held-out recovery vs dense" in table.header
    _, plain = prune(tiny_model("llama"), ids, PruneConfig(ratio=0.3, heldout_samples=0), progress=False)
    assert not any("held-out" in name or "recovery" in name for name in layer_table(block_rows(plain)).header)


def test_model_card_states_the_recovery_and_heldout_rows(tokenizer, texts) -> None:
    config = PruneConfig(ratio=0.3, recovery="goa", num_samples=4, seq_len=16, recovery_samples=6, heldout_samples=2)
    _, record = prune(tiny_llama_for(tokenizer, 64), texts, config, tokenizer=tokenizer, progress=False)
    card = render_card(record, "tiny")
    assert "4 samples × 16 tokens of `list of texts` (seed 0); 6 more samples for the recovery; 2 more samples held out" in card
