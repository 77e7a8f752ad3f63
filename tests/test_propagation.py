"""Propagation shortcuts equal the plain path: a pre-norm block (pruned and dense path) fed and propagated from
its attention's and FFN's statistics passes, and data-free methods, which run no calibration at all."""

from __future__ import annotations

import pytest
import torch

from reprune import calibration, pipeline
from reprune.config import Plan
from reprune.adapters import get_adapter
from reprune import PruneConfig, prune
from tiny_models import FAMILIES, calibration_batch, model_output, tiny_model


def _count_attention_runs(model: torch.nn.Module, calls: list[int]) -> None:
    for index in range(len(get_adapter(model).blocks())):
        attention = get_adapter(model).depth2_modules(index)[0].parent
        attention.register_forward_pre_hook(lambda *_: calls.append(1))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("reconstruction, recovery, targets", [
    ("liar", "none", "both"), ("bias", "goa", "both"), ("dense-target", "none", "both"), ("liar", "none", "attention"),
])
def test_residual_tail_propagation_matches_running_the_block(
    family: str, reconstruction: str, recovery: str, targets: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = calibration_batch(16, 16)
    batches = 2
    config = PruneConfig(ratio=0.3 if targets == "both" else 0.1, criterion="wanda-sp",
                         reconstruction=reconstruction, recovery=recovery, targets=targets, allocation="uniform",
                         batch_size=8)
    calls: list[int] = []
    attention_runs: list[int] = []
    run_block = calibration.run_block

    def counted(block: torch.nn.Module, acts: calibration.Activations) -> calibration.Activations:
        calls.append(1)
        return run_block(block, acts)

    monkeypatch.setattr(calibration, "run_block", counted)
    model = tiny_model(family)
    _count_attention_runs(model, attention_runs)
    fast, fast_report = prune(model, ids, config, progress=False)
    fast_calls, fast_attention, calls[:], attention_runs[:] = len(calls), len(attention_runs), [], []
    adapter = get_adapter(tiny_model(family))
    supported = adapter.ffn_residual(adapter.blocks()[0]) is not None
    # reference: run every block again, and its attention again for the FFN's statistics
    monkeypatch.setattr(type(adapter), "ffn_residual", lambda self, block: None)
    monkeypatch.setattr(type(adapter), "attention_residual", lambda self, block: None)
    model = tiny_model(family)
    _count_attention_runs(model, attention_runs)
    slow, slow_report = prune(model, ids, config, progress=False)

    blocks = len(adapter.blocks())
    runs = blocks * (1 if reconstruction == "liar" else 2)  # two-path methods: dense blocks too
    assert len(calls) == runs
    assert supported == (family != "bert")
    if targets == "attention":  # the unpruned FFN still runs, from the post-attention stream
        assert fast_calls == runs
        assert fast_attention == (1 if supported else 2) * blocks * batches
    else:
        assert fast_calls == (0 if supported else runs), "the residual tails must replace the block re-runs"
    if reconstruction == "liar" and targets == "both":  # attention runs once per batch, not three times
        assert len(attention_runs) == 3 * blocks * batches
        assert fast_attention == (1 if supported else 3) * blocks * batches
    for a, b in zip(fast_report.layers, slow_report.layers):
        assert a.kept_units == b.kept_units
        assert a.error == pytest.approx(b.error, rel=1e-4, abs=1e-7)
    torch.testing.assert_close(model_output(fast, ids), model_output(slow, ids), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("criterion, allocation", [("magnitude", "uniform"), ("random", "global")])
def test_data_free_methods_run_no_block_and_equal_the_calibrated_run(
    family: str, criterion: str, allocation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = calibration_batch(16, 16)
    config = PruneConfig(ratio=0.3, criterion=criterion, reconstruction="none", allocation=allocation, batch_size=8)
    calls: list[str] = []
    capture, run_block = pipeline.capture_block_inputs, calibration.run_block
    monkeypatch.setattr(pipeline, "capture_block_inputs", lambda *a, **k: calls.append("capture") or capture(*a, **k))
    monkeypatch.setattr(calibration, "run_block", lambda *a: calls.append("block") or run_block(*a))
    free, free_report = prune(tiny_model(family), ids, config, progress=False)
    assert calls == [], "a method that reads no statistics must not run the calibration data"
    assert not free_report.calibration.used
    assert all(layer.error is None and layer.error_none is None for layer in free_report.layers)

    monkeypatch.setattr(Plan, "data_free", property(lambda plan: False))  # reference: calibrate anyway
    calibrated, calibrated_report = prune(tiny_model(family), ids, config, progress=False)
    assert "capture" in calls and calibrated_report.calibration.used
    assert all(layer.error is not None for layer in calibrated_report.layers)
    assert [r.kept_units for r in free_report.layers] == [r.kept_units for r in calibrated_report.layers]
    torch.testing.assert_close(model_output(free, ids), model_output(calibrated, ids))


@pytest.mark.parametrize("criterion, reconstruction", [("flap", "none"), ("magnitude", "bias")])
def test_methods_reading_statistics_are_calibrated(criterion: str, reconstruction: str) -> None:
    config = PruneConfig(ratio=0.3, criterion=criterion, reconstruction=reconstruction, batch_size=8)
    _, report = prune(tiny_model("llama"), calibration_batch(16, 16), config, progress=False)
    assert report.calibration.used
    assert all(layer.error is not None for layer in report.layers)
