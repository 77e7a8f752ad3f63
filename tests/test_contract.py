"""Contracts every extension must keep, parametrized over the registries and every adapted model type.

A new adapter (model type), criterion, reconstruction or recovery is picked up here without editing
this file: the parameters are read from the registries.

- ratio 0 is the identity (up to a recovery's own re-fit);
- with reconstruction ``none`` the pruned model equals the dense model with the removed units'
  level-2 input columns zeroed;
- the residual shortcuts propagate exactly what running whole blocks gives;
- save -> load gives the same logits;
- by default a uniform pruning that plain transformers can describe stays so after any reconstruction;
- no reconstruction increases the calibration-row output error over plain pruning.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
import transformers

from reprune import PruneConfig, load, prune, save_pruned
from reprune.adapters import adapter_class, get_adapter, supported_model_types
from reprune.record import REMOTE_FILE, RunRecord
from reprune.criteria import CRITERIA
from reprune.reconstruction import RECONSTRUCTIONS
from reprune.recovery import RECOVERIES
from reprune.stats import TWO_PATH_STATISTICS
from tiny_models import calibration_batch, contract_model, model_output

MODEL_TYPES = supported_model_types()
IDS = calibration_batch(16, 16)


def criterion_options(name: str) -> dict[str, Any]:
    """Config fields that use criterion ``name`` wherever it can score (flap elsewhere)."""
    kinds = CRITERIA.get(name).kinds
    return {"attention_criterion": name if "attention" in kinds else "flap",
            "ffn_criterion": name if "ffn" in kinds else "flap"}


def run(model_type: str, **fields: Any) -> tuple[torch.nn.Module, Any]:
    config = PruneConfig(**{"ratio": 0.3, "batch_size": 8, **fields})
    return prune(contract_model(model_type), IDS, config, progress=False)


def exact_recovery(name: str) -> bool:
    """A recovery that changes nothing at ratio 0 (one that re-fits every module only approximates it)."""
    return not RECOVERIES.get(name).every_module


@pytest.mark.parametrize("recovery", RECOVERIES.names())
@pytest.mark.parametrize("reconstruction", RECONSTRUCTIONS.names())
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_ratio_zero_is_the_identity(model_type: str, reconstruction: str, recovery: str) -> None:
    dense = contract_model(model_type)
    model, record = run(model_type, ratio=0.0, reconstruction=reconstruction, recovery=recovery)
    assert all(layer.units_after == layer.units_before for layer in record.layers)
    if exact_recovery(recovery):
        assert record.layers == [] and record.parameters.total_after == record.parameters.total_before
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, dense.state_dict()[name]), name
    else:  # re-fitted to the dense outputs from the very same inputs: the ridge's shrinkage only (the
        # reconstruction may add biases, so parameter counts can grow)
        out, expected = model_output(model, IDS), model_output(dense, IDS)
        assert (out - expected).norm() <= 1e-2 * expected.norm()


@pytest.mark.parametrize("criterion", CRITERIA.names())
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_none_equals_zeroing_the_removed_columns(model_type: str, criterion: str) -> None:
    model, record = run(model_type, reconstruction="none", **criterion_options(criterion))
    assert record.layers and any(layer.units_after < layer.units_before for layer in record.layers)
    masked = contract_model(model_type)
    adapter = get_adapter(masked)
    with torch.no_grad():
        for layer in record.layers:
            module = adapter.depth2_modules(layer.block)[0 if layer.kind == "attention" else 1]
            if layer.expert is not None:  # a mixture's: one record per expert
                module = module.moe.experts[layer.expert]
            removed = torch.ones(module.num_units * module.unit_width, dtype=torch.bool)
            removed[module.unit_channels(layer.kept_units)] = False
            module.level2.weight()[:, removed] = 0
    torch.testing.assert_close(model_output(model, IDS), model_output(masked, IDS), rtol=1e-5, atol=1e-5)


METHODS = ([{"reconstruction": name} for name in RECONSTRUCTIONS.names()]
           + [{"reconstruction": "bias", "recovery": name} for name in RECOVERIES.names() if name != "none"])


@pytest.mark.parametrize("method", METHODS, ids=lambda m: "+".join(m.values()))
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_shortcut_propagation_equals_running_whole_blocks(model_type: str, method: dict[str, str]) -> None:
    fast, fast_record = run(model_type, criterion="wanda-sp", **method)
    slow, slow_record = run(model_type, criterion="wanda-sp", shortcuts=False, **method)
    assert [layer.kept_units for layer in fast_record.layers] == [layer.kept_units for layer in slow_record.layers]
    # a recovery re-fits whole projections with a 1e-4 ridge, which magnifies the float32 rounding by which
    # the two paths' block inputs differ (OLMo-2 with GOA: 1.6e-5 on logits of size 0.5; ModernBERT with GOA:
    # 1.2e-4 relative on a layer's error, on one machine's BLAS and not on another's)
    recovery = bool(method.get("recovery"))
    for a, b in zip(fast_record.layers, slow_record.layers):
        assert a.error == pytest.approx(b.error, rel=1e-3 if recovery else 1e-4, abs=1e-7)
    out_fast, out_slow = model_output(fast, IDS), model_output(slow, IDS)
    if recovery:  # compared as a whole: single logits differ by up to 2.4e-4 on some BLAS (GPT-NeoX with
        # goa-current: 1 of 32,768), the whole by up to 1.7e-4 of its norm (Phi-3 with goa-current)
        assert (out_fast - out_slow).norm() <= 1e-3 * out_slow.norm()
    else:
        torch.testing.assert_close(out_fast, out_slow, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("allocation", ["uniform", "global"])
@pytest.mark.parametrize("reconstruction", RECONSTRUCTIONS.names())
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_save_and_load_give_the_same_logits(model_type: str, reconstruction: str, allocation: str,
                                            tmp_path) -> None:
    model, record = run(model_type, reconstruction=reconstruction, allocation=allocation)
    expected = model_output(model, IDS)
    loaded = load(save_pruned(model, None, tmp_path / "pruned", record))
    assert get_adapter(loaded).layer_shapes() == record.shapes
    torch.testing.assert_close(model_output(loaded, IDS), expected, rtol=0, atol=1e-5)


# reconstructions that fit the pruned path's own output; two-path ones fit the dense model's instead, which
# on rows that earlier pruning moved can raise the error against the pruned path's output
SINGLE_PATH = [name for name in RECONSTRUCTIONS.names() if not RECONSTRUCTIONS.get(name).needs & TWO_PATH_STATISTICS]


@pytest.mark.parametrize("reconstruction", SINGLE_PATH)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_reconstruction_never_increases_the_calibration_error(model_type: str, reconstruction: str) -> None:
    _, record = run(model_type, reconstruction=reconstruction)
    assert record.layers
    for layer in record.layers:
        assert layer.error <= layer.error_none * (1 + 1e-9) + 1e-12, (layer.block, layer.kind)


def test_every_registry_entry_declares_known_statistics() -> None:
    from reprune.stats import STATISTICS

    for registry in (CRITERIA, RECONSTRUCTIONS, RECOVERIES):
        for name in registry.names():
            assert registry.get(name).needs <= STATISTICS.keys(), name
    assert TWO_PATH_STATISTICS <= STATISTICS.keys()
    with pytest.raises(ValueError, match="unknown statistics"):
        from reprune.criteria import register

        register("typo-criterion", needs={"level2_gram"})(lambda module, stats, generator: None)
    assert "typo-criterion" not in CRITERIA



@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_calibration_path_equals_the_models_own_block_outputs(model_type: str) -> None:
    """Block by block, the calibration path's outputs are the hidden states the model's own forward gets
    from each block: also where layers take their own positional inputs (sliding and full attention)."""
    from reprune.adapters import block_output
    from reprune.calibration import CalibrationPath
    from reprune.pipeline import capture_inputs

    model = contract_model(model_type)
    adapter = get_adapter(model)
    seen: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(adapter.blocks()))}
    handles = [block.register_forward_hook(lambda module, args, output, i=i: seen[i].append(block_output(output)))
               for i, block in enumerate(adapter.blocks())]
    for start in range(0, len(IDS), 8):
        model_output(model, IDS[start : start + 8])
    for handle in handles:
        handle.remove()
    plan = PruneConfig(batch_size=8).resolve(len(adapter.blocks()))
    path = CalibrationPath(adapter, capture_inputs(model, adapter, IDS, plan, torch.device("cpu")))
    for index, block in enumerate(adapter.blocks()):
        path.enter(block, index)
        path.leave()
        for ours, theirs in zip(path.acts.hidden, seen[index], strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


CAUSAL_TYPES = [model_type for model_type in MODEL_TYPES if adapter_class(model_type).causal]


@pytest.mark.parametrize("reconstruction", RECONSTRUCTIONS.names())
@pytest.mark.parametrize("model_type", CAUSAL_TYPES)
def test_default_uniform_prune_saves_a_stock_checkpoint(model_type: str, reconstruction: str, tmp_path) -> None:
    """Stock by default: where a uniform plain pruning saves for plain transformers, a reconstruction with the
    default ``intercept="auto"`` does too (no auto_map, no manifest, no code in the folder), and plain
    ``AutoModelForCausalLM.from_pretrained`` gives the in-memory model's logits."""
    baseline, baseline_record = run(model_type, reconstruction="none")
    if not RunRecord.read(save_pruned(baseline, None, tmp_path / "none", baseline_record)).plain_transformers:
        pytest.skip(f"{model_type}: even plain pruning needs remote code (its config cannot state the head sizes)")
    model, record = run(model_type, reconstruction=reconstruction)
    expected = model_output(model, IDS)
    out = save_pruned(model, None, tmp_path / "pruned", record)
    config = json.loads((out / "config.json").read_text())
    assert "auto_map" not in config and "reprune_manifest" not in config and not (out / REMOTE_FILE).exists()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    torch.testing.assert_close(model_output(loaded, IDS), expected, rtol=0, atol=1e-5)
    assert RunRecord.read(out).saved_architecture == type(loaded).__name__
