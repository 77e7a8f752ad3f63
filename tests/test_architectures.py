"""Properties of individual families that the contracts (tests/test_contract.py) cannot see: specific heads
removed from fused or interleaved projections, per-layer views of shared inputs and configs surviving
save/load, family variants other than the contract model, and encoders evaluated through a head model."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import transformers

from reprune import PruneConfig, load, prune, save_pruned
from reprune.adapters import ADAPTER_CLASSES, get_adapter, supported_model_types
from reprune.criteria import level1_row_norms_sq
from reprune.criteria.second_moment import second_moment_scores
from reprune.evaluation.encoder import sts_spearman
from reprune.surgery import shrink_module
from tiny_models import calibration_batch, contract_model, model_output

IDS = calibration_batch(8, 16)


def remove_heads(model: torch.nn.Module, removed: dict[int, list[int]]) -> None:
    """Remove the given heads per block by surgery alone (level 2 keeps its other columns)."""
    adapter = get_adapter(model)
    for block, heads in removed.items():
        module = adapter.depth2_modules(block)[0]
        kept = torch.tensor([h for h in range(module.num_units) if h not in heads])
        weight = module.level2.weight()[:, module.unit_channels(kept)].detach()
        shrink_module(adapter, module, kept, weight.T, module.level2.bias())


def zero_heads(model: torch.nn.Module, removed: dict[int, list[int]]) -> None:
    """Zero the level-2 input columns of the given heads (what removing them must equal)."""
    adapter = get_adapter(model)
    with torch.no_grad():
        for block, heads in removed.items():
            module = adapter.depth2_modules(block)[0]
            module.level2.weight()[:, module.unit_channels(heads)] = 0


# different heads per block, first and last heads included: a wrong row layout or a shared input indexed
# with another block's heads shows up
CASES = [
    ("gpt_neox", {0: [0], 1: [3]}, {}),  # query_key_value interleaved per head
    ("gpt_neox", {0: [1, 2]}, {"use_parallel_residual": False}),
    ("phi3", {0: [0, 2], 1: [1, 3]}, {}),  # [q|k|v] sections of qkv_proj, GQA
    ("phi3", {0: [0, 1]}, {}),  # a whole KV group
    ("mpnet", {0: [0], 1: [2, 3]}, {}),  # one relative position bias for all layers
    ("deberta-v2", {0: [1], 1: [0, 3]}, {"share_att_key": False}),  # pos_key_proj / pos_query_proj rows
    ("stablelm", {0: [0, 2], 1: [0, 1]}, {"use_parallel_residual": True}),  # per-head LayerNorm lists
    ("cohere", {0: [1, 3], 1: [2, 3]}, {}),  # per-head q/k norm weight rows
    ("distilbert", {0: [3], 1: [0]}, {}),
    ("modernbert", {0: [0, 3], 1: [1]}, {}),  # [q|k|v] sections of Wqkv; sliding and global layers
    ("gpt_oss", {0: [0, 2], 1: [1, 3]}, {}),  # one sink logit per head
    ("olmo2", {0: [0, 2], 1: [0, 1]}, {"attention_bias": True}),  # q/k norms over all heads; biased q/k rows
    ("granite_swa", {0: [1, 2], 1: [0, 3]}, {}),  # one sink per head
    ("olmoe", {0: [1, 3], 1: [2, 3]}, {"clip_qkv": 0.5}),  # q/k norms over all heads, then clamped
]


@pytest.mark.parametrize("model_type, removed, overrides", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_removing_heads_equals_zeroing_their_columns_and_survives_save_load(model_type, removed, overrides,
                                                                            tmp_path) -> None:
    model, masked = contract_model(model_type, **overrides), contract_model(model_type, **overrides)
    remove_heads(model, removed)
    zero_heads(masked, removed)
    expected = model_output(masked, IDS)
    torch.testing.assert_close(model_output(model, IDS), expected, rtol=1e-5, atol=1e-5)
    shapes = get_adapter(model).layer_shapes()
    loaded = load(save_pruned(model, None, tmp_path / "pruned"))
    assert get_adapter(loaded).layer_shapes() == shapes
    torch.testing.assert_close(model_output(loaded, IDS), expected, rtol=1e-5, atol=1e-5)


def test_gpt_neox_head_rows_interleave_q_k_v() -> None:
    module = get_adapter(contract_model("gpt_neox")).depth2_modules(0)[0]
    q, k, v = module.level1
    assert module.level1_rows(q, [1]).tolist() == list(range(24, 32))  # head 1 = rows 24..47: q, k, v
    assert module.level1_rows(k, [1]).tolist() == list(range(32, 40))
    assert module.level1_rows(v, [0, 2]).tolist() == list(range(16, 24)) + list(range(64, 72))


def test_criteria_read_each_unit_s_rows_of_fused_projections() -> None:
    ffn = get_adapter(contract_model("phi3")).depth2_modules(0)[1]
    weight = ffn.level1[0].projection.weight().detach().double()
    gate, up = weight[: ffn.num_units].pow(2).sum(1), weight[ffn.num_units :].pow(2).sum(1)
    out_sq = ffn.level2.weight().detach().double().pow(2).sum(0)
    torch.testing.assert_close(second_moment_scores(ffn, None, "product"), out_sq * gate * up)
    torch.testing.assert_close(level1_row_norms_sq(ffn), gate + up)
    attention = get_adapter(contract_model("gpt_neox")).depth2_modules(0)[0]
    weight = attention.level1[0].projection.weight().detach().double()
    per_head = weight.reshape(attention.num_units, -1).pow(2).sum(1)  # head h owns rows h*3*hd .. (h+1)*3*hd
    torch.testing.assert_close(level1_row_norms_sq(attention), per_head)


def test_mpnet_position_bias_selection_is_saved_and_narrows_on_a_second_pruning(tmp_path) -> None:
    model, masked = contract_model("mpnet"), contract_model("mpnet")
    remove_heads(model, {0: [1]})
    remove_heads(model, {0: [0]})  # now heads 0 and 1 of the original are gone: index [2, 3]
    zero_heads(masked, {0: [0, 1]})
    attn = model.base_model.encoder.layer[0].attention.attn
    assert attn.reprune_selection == {"argument": "position_bias", "dim": 1, "index": [2, 3]}
    expected = model_output(masked, IDS)
    torch.testing.assert_close(model_output(model, IDS), expected, rtol=1e-5, atol=1e-5)
    loaded = load(save_pruned(model, None, tmp_path / "pruned"))
    manifest = loaded.config.reprune_manifest
    assert manifest["selections"] == {"encoder.layer.0.attention.attn": attn.reprune_selection}
    torch.testing.assert_close(model_output(loaded, IDS), expected, rtol=1e-5, atol=1e-5)


def test_phi3_layers_read_their_own_head_count_from_a_view_of_the_model_config(tmp_path) -> None:
    model = contract_model("phi3")
    remove_heads(model, {0: [0, 1]})
    loaded = load(save_pruned(model, None, tmp_path / "pruned"))
    first, second = (layer.self_attn for layer in loaded.model.layers)
    assert (first.config.num_attention_heads, second.config.num_attention_heads) == (2, 4)
    assert loaded.config.num_attention_heads == 4  # the model's config is not the layer's
    loaded.config._attn_implementation = "sdpa"  # writes reach the model config, so switching still works
    assert first.config._attn_implementation == "sdpa"
    loaded.config._attn_implementation = "eager"
    assert first.config._attn_implementation == "eager"


@pytest.mark.parametrize("model_type, overrides", [("gpt_neox", {"use_parallel_residual": False}),
                                                   ("granite", {"residual_multiplier": 1.0}),
                                                   ("granite_swa", {"residual_multiplier": 1.0}),
                                                   ("hyperclovax", {"residual_multiplier": 1.0})])
def test_sequential_variants_use_exact_shortcuts(model_type, overrides, monkeypatch) -> None:
    adapter = get_adapter(contract_model(model_type, **overrides))
    block = adapter.blocks()[0]
    assert adapter.attention_residual(block) is not None and adapter.ffn_residual(block) is not None
    config = PruneConfig(ratio=0.3, batch_size=8, criterion="wanda-sp", reconstruction="liar")
    fast, _ = prune(contract_model(model_type, **overrides), IDS, config, progress=False)
    monkeypatch.setattr(type(adapter), "attention_residual", lambda self, block: None)
    monkeypatch.setattr(type(adapter), "ffn_residual", lambda self, block: None)
    slow, _ = prune(contract_model(model_type, **overrides), IDS, config, progress=False)
    torch.testing.assert_close(model_output(fast, IDS), model_output(slow, IDS), rtol=1e-4, atol=1e-5)


def test_olmo2_heads_pruned_twice_keep_the_norm_over_every_original_head(tmp_path) -> None:
    """q/k keep the removed heads' rows (behind the kept ones) for the RMS; a second pruning reorders again."""
    model, masked = contract_model("olmo2"), contract_model("olmo2")
    remove_heads(model, {0: [0, 2]})  # heads 1, 3 left, one per KV head
    remove_heads(model, {0: [1]})  # original head 3, and with it KV head 1
    zero_heads(masked, {0: [0, 2, 3]})
    attn = model.model.layers[0].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features) == (32, 16, 8)
    assert (attn.q_norm.reprune_output_width, attn.k_norm.reprune_output_width) == (8, 8)
    expected = model_output(masked, IDS)
    torch.testing.assert_close(model_output(model, IDS), expected, rtol=1e-5, atol=1e-5)
    out = save_pruned(model, None, tmp_path / "pruned")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    torch.testing.assert_close(model_output(loaded, IDS), expected, rtol=1e-5, atol=1e-5)


def test_olmo2_ffn_only_pruning_saves_as_plain_transformers(tmp_path) -> None:
    """Only head pruning needs the manifest (OLMo-2's MLP has no bias option, so no bias reconstruction here)."""
    config = PruneConfig(ratio=0.3, batch_size=8, targets="ffn", reconstruction="none")
    model, record = prune(contract_model("olmo2"), IDS, config, progress=False)
    out = save_pruned(model, None, tmp_path / "pruned", record)
    assert not (out / "modeling_reprune.py").exists()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(model_output(loaded, IDS), model_output(model, IDS), rtol=0, atol=1e-5)


def test_sts_of_a_masked_lm_uses_its_base_encoder(tmp_path) -> None:
    from reprune.models import minilm_path

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())
    except FileNotFoundError as error:
        pytest.skip(f"MiniLM tokenizer unavailable: {error}")
    config = transformers.MPNetConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.MPNetForMaskedLM(config).eval()
    tsv = tmp_path / "sts.tsv"
    tsv.write_text("sentence1\tsentence2\tscore\n" + "".join(
        f"a cat sat {i}\ta dog ran {i % 3}\t{i % 5}\n" for i in range(6)))
    result = sts_spearman(model, tokenizer, tsv, progress=False)
    assert result == sts_spearman(model.base_model, tokenizer, tsv, progress=False) and result["n"] == 6


def test_multimodal_gemma3_prunes_its_text_decoder_only_and_saves_sizes_in_the_text_config(tmp_path) -> None:
    dense = contract_model("gemma3")
    model, record = prune(contract_model("gemma3"), IDS, PruneConfig(ratio=0.3, reconstruction="none",
                                                                      targets="ffn"), progress=False)
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    assert all(shape.intermediate_size < 48 for shape in record.shapes)
    untouched = ("model.vision_tower.", "model.multi_modal_projector.")
    for name, tensor in dense.state_dict().items():
        if name.startswith(untouched):
            assert torch.equal(model.state_dict()[name], tensor), name
    expected = model_output(model, IDS)
    out = save_pruned(model, None, tmp_path / "pruned", record)
    loaded = transformers.Gemma3ForConditionalGeneration.from_pretrained(out)  # plain transformers
    assert loaded.config.text_config.intermediate_size == record.shapes[0].intermediate_size
    torch.testing.assert_close(model_output(loaded, IDS), expected, rtol=0, atol=1e-5)
    ids = torch.cat([torch.tensor([[297] + [299] * 4 + [298]]), IDS[:1, :8]], dim=1)  # an image, then text
    pixels = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        logits = loaded(input_ids=ids, pixel_values=pixels).logits
    assert logits.shape == (1, ids.shape[1], 300) and torch.isfinite(logits).all()


ENCODERS = [t for t in supported_model_types() if not ADAPTER_CLASSES[t].causal]


@pytest.mark.parametrize("model_type", ENCODERS)
def test_sts_and_probe_run_on_a_pruned_masked_lm_folder(model_type: str, tmp_path) -> None:
    """Sentence-transformers folders often name a masked-LM head: ``reprune eval --sts`` uses its encoder."""
    from reprune.evaluation import stsb_probe
    from reprune.models import minilm_path
    from reprune.workflow import EvalOptions, evaluate_folder

    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())
    model = contract_model(model_type, auto=transformers.AutoModelForMaskedLM, vocab_size=len(tokenizer))
    ids = torch.randint(1000, len(tokenizer), (8, 16), generator=torch.Generator().manual_seed(0))
    dense = copy.deepcopy(model)
    model, record = prune(model, ids, PruneConfig(ratio=0.3, reconstruction="liar", batch_size=8), progress=False)
    assert any(layer.units_after < layer.units_before for layer in record.layers)
    folder = save_pruned(model, tokenizer, tmp_path / "pruned", record)
    results, _ = evaluate_folder(folder, EvalOptions(sts=True, limit=20, json=str(tmp_path / "eval.json")),
                                 announce=lambda line: None)
    assert results["sts"]["n"] == 20 and math.isfinite(results["sts"]["spearman"])
    probe = stsb_probe(dense, model, tokenizer, max_train=40, limit=20, progress=False)
    assert all(math.isfinite(v) for v in probe.values() if isinstance(v, float))
