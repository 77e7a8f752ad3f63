"""Propagating a pre-norm block (pruned and dense path) from its FFN's statistics pass equals running it again."""

from __future__ import annotations

import pytest
import torch

from reprune import pipeline
from reprune.adapters import get_adapter
from reprune.pipeline import PruneConfig, prune
from tiny_models import FAMILIES, calibration_batch, model_output, tiny_model


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("reconstruction, recovery", [("liar", "none"), ("bias", "goa"), ("dense-target", "none")])
def test_ffn_tail_propagation_matches_running_the_block(
    family: str, reconstruction: str, recovery: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = calibration_batch(16, 16)
    config = PruneConfig(ratio=0.3, criterion="wanda-sp", reconstruction=reconstruction, recovery=recovery,
                         batch_size=8)
    calls: list[int] = []
    run_block = pipeline.run_block

    def counted(block: torch.nn.Module, acts: pipeline.Activations) -> pipeline.Activations:
        calls.append(1)
        return run_block(block, acts)

    monkeypatch.setattr(pipeline, "run_block", counted)
    fast, fast_report = prune(tiny_model(family), ids, config, progress=False)
    fast_calls, calls[:] = len(calls), []
    adapter = get_adapter(tiny_model(family))
    supported = adapter.ffn_residual(adapter.blocks()[0]) is not None
    monkeypatch.setattr(type(adapter), "ffn_residual", lambda self, block: None)  # reference: run every block
    slow, slow_report = prune(tiny_model(family), ids, config, progress=False)

    runs = len(adapter.blocks()) * (1 if reconstruction == "liar" else 2)  # two-path methods: dense blocks too
    assert len(calls) == runs
    assert fast_calls == (0 if supported else runs), "the FFN tails must replace the block re-runs"
    assert supported == (family != "bert")
    for a, b in zip(fast_report["layers"], slow_report["layers"]):
        assert a["kept_units"] == b["kept_units"]
        assert a["error"] == pytest.approx(b["error"], rel=1e-4, abs=1e-7)
    torch.testing.assert_close(model_output(fast, ids), model_output(slow, ids), rtol=1e-4, atol=1e-5)
