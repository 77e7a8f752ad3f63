"""Every supported family through the whole pipeline: save/load round trips, parameter accounting, GQA
validity and the error for unsupported architectures (the identity at ratio 0 is in test_contract.py)."""

from __future__ import annotations

import pytest
import torch
import transformers

from reprune.adapters import UnsupportedArchitectureError, get_adapter, supported_model_types
from reprune.checkpoint import REMOTE_FILE, load, save_pruned
from reprune import PruneConfig, prune
from reprune.allocation import prunable_parameters
from reprune.record import RunRecord
from reprune.reconstruction import RECONSTRUCTIONS
from tiny_models import FAMILIES, calibration_batch, model_output, tiny_model

GQA_FAMILIES = ["llama", "mistral", "qwen2"]


@pytest.fixture(scope="module")
def ids():
    return calibration_batch(num_samples=8, seq_len=16)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def assert_same_outputs(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> None:
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


def test_reconstruction_modes_are_registered():
    assert {"none", "bias", "liar", "dense-target", "liar-dense"} <= set(RECONSTRUCTIONS)


ROUND_TRIPS = [
    ("uniform", "flap", "bias"),
    ("uniform", "magnitude", "liar"),
    ("global", "flap", "liar"),
    ("global", "second-moment", "bias"),
]


@pytest.mark.parametrize("allocation, criterion, reconstruction", ROUND_TRIPS)
@pytest.mark.parametrize("family", FAMILIES)
def test_prune_save_load_round_trip(family, allocation, criterion, reconstruction, ids, tmp_path):
    config = PruneConfig(ratio=0.3, allocation=allocation, criterion=criterion, reconstruction=reconstruction)
    dense_params = count_parameters(tiny_model(family))
    model, report = prune(tiny_model(family), ids, config, progress=False)
    expected = model_output(model, ids)
    assert torch.isfinite(expected).all()
    params = report.parameters
    assert params.total_before == dense_params
    assert params.total_after == count_parameters(model) < dense_params
    assert params.prunable_after == prunable_parameters(get_adapter(model))
    assert 0.2 < params.ratio_prunable < 0.4

    out = save_pruned(model, None, tmp_path / "pruned", report)
    loaded = load(out)
    # per-layer sizes load as a Reprune<Class> subclass; a stock rewrite (Qwen2, Mistral as LLaMA) as its class
    assert isinstance(loaded, getattr(transformers, RunRecord.read(out).saved_architecture))
    assert_same_outputs(model_output(loaded, ids), expected)
    # the saved report's parameter counts are those of the model that comes back from disk (a stock rewrite
    # may add zero partner biases: LLaMA's attention_bias/mlp_bias cover every projection)
    saved = RunRecord.read(out).parameters
    assert count_parameters(loaded) == saved.total_after
    assert prunable_parameters(get_adapter(loaded)) == saved.prunable_after
    assert saved.total_after - params.total_after == saved.prunable_after - params.prunable_after >= 0
    # per-layer shapes survive the round trip
    assert get_adapter(loaded).layer_shapes() == report.shapes
    assert loaded.config.reprune["allocation"] == allocation
    assert loaded.config.reprune["reconstruction"] == reconstruction
    if getattr(loaded.config, "reprune_manifest", None):
        assert (out / REMOTE_FILE).exists() and loaded.config.auto_map
    else:
        assert not (out / REMOTE_FILE).exists()


@pytest.mark.parametrize("gqa_mode", ["query", "group"])
@pytest.mark.parametrize("family", GQA_FAMILIES)
def test_gqa_head_pruning_stays_valid(family, gqa_mode, ids, tmp_path):
    dense = tiny_model(family)
    assert dense.config.num_attention_heads == 4 and dense.config.num_key_value_heads == 2
    config = PruneConfig(ratio=0.3, allocation="uniform", criterion="flap", reconstruction="liar", gqa_mode=gqa_mode)
    model, report = prune(tiny_model(family), ids, config, progress=False)
    out_inmem = model_output(model, ids)
    assert torch.isfinite(out_inmem).all()

    adapter = get_adapter(model)
    attention_layers = [layer for layer in report.layers if layer.kind == "attention"]
    assert attention_layers, "no heads were pruned"
    for layer in attention_layers:
        kept = torch.tensor(layer.kept_units)
        groups, per_group = torch.unique(kept // 2, return_counts=True)  # 2 query heads per KV head before
        assert bool((per_group == per_group[0]).all()), f"uneven GQA mapping: {layer['kept_units']}"
        if gqa_mode == "group":  # whole KV groups go: every surviving group keeps both its heads
            assert per_group.tolist() == [2] * len(groups) and len(groups) < 2
        else:  # the same number of query heads from every group, all KV heads stay
            assert len(groups) == 2 and per_group.tolist() == [1, 1]
    for index, shape in enumerate(report.shapes):
        attention = adapter.depth2_modules(index)[0]
        attn = attention.parent
        assert shape.num_heads % shape.num_kv_heads == 0
        assert attn.q_proj.out_features == shape.num_heads * shape.head_dim
        assert attn.k_proj.out_features == attn.v_proj.out_features == shape.num_kv_heads * shape.head_dim
        assert attn.o_proj.in_features == shape.num_heads * shape.head_dim
        assert attn.num_key_value_groups == shape.num_heads // shape.num_kv_heads
        if gqa_mode == "query":
            assert shape.num_kv_heads == 2
    if gqa_mode == "group":
        assert any(shape.num_kv_heads == 1 for shape in report.shapes)

    out = save_pruned(model, None, tmp_path / "gqa", report)
    loaded = load(out)
    assert loaded.config.reprune["gqa_mode"] == gqa_mode
    manifest = getattr(loaded.config, "reprune_manifest", None)
    if manifest:
        attributes = manifest["attributes"]
        for index, shape in enumerate(report.shapes):
            entry = next(v for k, v in attributes.items() if k.endswith(f"layers.{index}.self_attn"))
            assert entry["num_key_value_groups"] == shape.num_heads // shape.num_kv_heads
    else:
        assert loaded.config.num_key_value_heads == report.shapes[0].num_kv_heads
        assert loaded.config.num_attention_heads == report.shapes[0].num_heads
    assert_same_outputs(model_output(loaded, ids), out_inmem)


def _tiny_mamba():
    config = transformers.MambaConfig(vocab_size=64, hidden_size=32, state_size=4, num_hidden_layers=1, expand=2)
    return transformers.MambaForCausalLM(config)


def _tiny_t5():
    config = transformers.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=1, num_decoder_layers=1,
                                   num_heads=4)
    return transformers.T5ForConditionalGeneration(config)


@pytest.mark.parametrize("build, model_type", [(_tiny_mamba, "mamba"), (_tiny_t5, "t5")])
def test_unknown_architecture_lists_supported_types(build, model_type, ids):
    model = build()
    with pytest.raises(UnsupportedArchitectureError) as info:
        prune(model, ids[:, :8] % 64, PruneConfig(ratio=0.3), progress=False)
    message = str(info.value)
    assert repr(model_type) in message
    for supported in supported_model_types():
        assert supported in message
    assert {"llama", "mistral", "qwen2", "bert", "gpt2", "opt"} <= set(supported_model_types())
    assert isinstance(info.value, ValueError)  # callers catching ValueError also see it
