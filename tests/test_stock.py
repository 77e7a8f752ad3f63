"""Stock architectures (reprune.stock): exact re-expression of LLaMA-shaped families as LLaMA, and
``intercept="auto"``, which lets a reconstruction add a bias only where the checkpoint stays stock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from reprune import PruneConfig, load, prune, save_pruned
from reprune.cli import build_config, build_parser
from reprune.record import REMOTE_FILE, RunRecord
from reprune.stock import REEXPRESSIONS
from tiny_models import calibration_batch, contract_model, model_output

IDS = calibration_batch(16, 16)


def pruned(model_type: str, **fields) -> tuple[torch.nn.Module, RunRecord]:
    overrides = fields.pop("config", {})
    config = PruneConfig(**{"ratio": 0.3, "reconstruction": "liar", "allocation": "uniform", "batch_size": 8, **fields})
    return prune(contract_model(model_type, **overrides), IDS, config, progress=False)


def saved_config(out: Path) -> dict:
    return json.loads((out / "config.json").read_text())


@pytest.mark.parametrize("model_type", sorted(REEXPRESSIONS))
def test_llama_shaped_families_save_as_llama_with_their_new_biases(model_type: str, tmp_path) -> None:
    model, record = pruned(model_type)
    assert record.intercepts == {"attention": True, "ffn": True}
    o_bias = model.model.layers[0].self_attn.o_proj.bias
    assert o_bias is not None and o_bias.abs().max() > 0  # LIAR's intercept, which the family cannot state
    expected = model_output(model, IDS)
    out = save_pruned(model, None, tmp_path / "out", record)
    config = saved_config(out)
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert config["attention_bias"] and config["mlp_bias"]
    assert "auto_map" not in config and "reprune_manifest" not in config and not (out / REMOTE_FILE).exists()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert type(loaded) is transformers.LlamaForCausalLM
    torch.testing.assert_close(model_output(loaded, IDS), expected, rtol=0, atol=1e-6)
    assert RunRecord.read(out).saved_architecture == "LlamaForCausalLM"
    if model_type != "qwen2":  # q/k/v had no bias: LLaMA's flag gives them zero ones
        assert loaded.model.layers[0].self_attn.q_proj.bias.abs().max() == 0


INEXACT = [("mistral", {"sliding_window": 4}),  # a 4-token window over 64 positions: not LLaMA's attention
           ("phi3", {"partial_rotary_factor": 0.75})]  # Phi-4-mini's RoPE leaves part of each head unrotated


@pytest.mark.parametrize("model_type, overrides", INEXACT, ids=[model_type for model_type, _ in INEXACT])
def test_a_family_that_is_not_exactly_llama_is_not_rewritten(model_type: str, overrides: dict, tmp_path) -> None:
    """No rewrite, so auto fits no intercept and the checkpoint stays a stock one of the model's own family."""
    model, record = pruned(model_type, config=overrides)
    assert record.intercepts == {"attention": False, "ffn": False}
    assert all(layer.mlp.down_proj.bias is None and layer.self_attn.o_proj.bias is None for layer in model.model.layers)
    expected = model_output(model, IDS)
    out = save_pruned(model, None, tmp_path / "out", record)
    assert saved_config(out)["model_type"] == model_type and not (out / REMOTE_FILE).exists()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(model_output(loaded, IDS), expected, rtol=0, atol=1e-6)
    rewrite = REEXPRESSIONS[model_type]
    assert rewrite.inexact(model.config) is not None and rewrite.inexact(contract_model(model_type).config) is None


def test_auto_decides_per_module_kind(tmp_path) -> None:
    """Qwen3's attention_bias covers o_proj (with zero q/k/v biases), no flag covers down_proj: auto fits the
    attention's intercept only, and the checkpoint is a stock Qwen3 one."""
    model, record = pruned("qwen3")
    assert record.intercepts == {"attention": True, "ffn": False}
    layer = model.model.layers[0]
    assert layer.self_attn.o_proj.bias is not None and layer.mlp.down_proj.bias is None
    out = save_pruned(model, None, tmp_path / "out", record)
    config = saved_config(out)
    assert config["model_type"] == "qwen3" and config["attention_bias"] and "auto_map" not in config


@pytest.mark.parametrize("model_type, fields", [
    ("ernie4_5", {"ratio": 0.2}),  # one flag for every bias; at 20 % no head goes, so no o_proj was fitted
    ("internlm3", {"ratio": 0.2}),
])
def test_auto_output_is_stock_when_some_modules_fit_no_intercept(model_type: str, fields: dict, tmp_path) -> None:
    """The modules auto allowed an intercept but that reconstruction left alone get zero biases, so the
    checkpoint is the stock one auto planned for, with the same outputs."""
    model, record = pruned(model_type, **fields)
    assert any(record.intercepts.values())
    expected = model_output(model, IDS)
    out = save_pruned(model, None, tmp_path / "out", record)
    assert RunRecord.read(out).plain_transformers, saved_config(out).get("reprune_manifest")
    assert "auto_map" not in saved_config(out) and not (out / REMOTE_FILE).exists()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(model_output(loaded, IDS), expected, rtol=0, atol=1e-6)


def test_the_intercept_can_still_be_asked_for_with_remote_code(tmp_path) -> None:
    model, record = pruned("qwen3", intercept=True)
    assert record.intercepts == {"attention": True, "ffn": True}
    assert model.model.layers[0].mlp.down_proj.bias is not None
    expected = model_output(model, IDS)
    out = save_pruned(model, None, tmp_path / "out", record)
    assert saved_config(out)["reprune_manifest"] and (out / REMOTE_FILE).exists()
    torch.testing.assert_close(model_output(load(out), IDS), expected, rtol=0, atol=1e-6)


def test_auto_fits_intercepts_where_the_model_needs_remote_code_anyway(tmp_path) -> None:
    """A per-layer-sized checkpoint (global allocation) is not stock before it is pruned again: a bias costs
    nothing there, so auto fits every intercept."""
    model, record = pruned("qwen3", criterion="flap", allocation="global", intercept=False, multiple_of=1)
    assert len({shape for shape in record.shapes}) > 1
    again = load(save_pruned(model, None, tmp_path / "global", record))
    _, record = prune(again, IDS, PruneConfig(ratio=0.2, reconstruction="liar", batch_size=8), progress=False)
    assert record.intercepts == {"attention": True, "ffn": True}


def test_intercept_setting_is_checked_and_reachable_from_the_cli() -> None:
    with pytest.raises(ValueError, match="intercept must be True, False or 'auto'"):
        PruneConfig(intercept="yes").resolve(2)
    with pytest.raises(ValueError, match="intercept must be True, False or 'auto'"):
        PruneConfig(intercept=1).resolve(2)  # type: ignore[arg-type]  # 1 == True, but is not a setting
    PruneConfig(intercept=json.loads('"auto"')).resolve(2)  # an equal string, not the literal's object, is accepted
    base = ["prune", "--model", "m", "--out", "o"]
    parse = build_parser().parse_args
    assert build_config(parse(base)).intercept == "auto"
    assert build_config(parse([*base, "--intercept", "off"])).intercept is False
    assert build_config(parse([*base, "--intercept", "on"])).intercept is True
