"""Mixture-of-experts FFNs (mixtral, qwen3_moe, gpt_oss): per-expert statistics over routed tokens weighted by gate
values, routed expert biases, the router left alone, per-expert records and checkpoints."""

from __future__ import annotations

import pytest
import torch
import transformers

from reprune import PruneConfig, load, prune, save_pruned
from reprune.adapters import get_adapter
from reprune.calibration import collect_expert_stats
from reprune.pipeline import capture_inputs
from reprune.record import RunRecord
from tiny_models import calibration_batch, contract_model, entered_path, model_output

IDS = calibration_batch(16, 16)


def routed_by_hand(model: torch.nn.Module, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixtral's routing of block ``block``'s FFN input, recomputed: softmax over all experts, top-k,
    renormalised. Returns the FFN input rows (T, d), top-k expert indices and gate values (T, k)."""
    mlp = model.model.layers[block].mlp
    seen = []
    handle = mlp.register_forward_pre_hook(lambda _m, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    model_output(model, IDS)
    handle.remove()
    rows = torch.cat(seen)
    probs = torch.softmax(rows @ mlp.gate.weight.T, dim=-1)
    gates, index = probs.topk(model.config.num_experts_per_tok, dim=-1)
    return rows, index, gates / gates.sum(-1, keepdim=True)


def expert_rows(model: torch.nn.Module, block: int, expert: int, rows: torch.Tensor, index: torch.Tensor,
                gates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Expert ``expert``'s routed tokens, their gate values and its level-2 input on them, by hand."""
    experts = model.model.layers[block].mlp.experts
    token, slot = torch.where(index == expert)
    width = experts.down_proj.shape[2]
    weight = experts.gate_up_proj[expert]
    h = rows[token]
    inner = torch.nn.functional.silu(h @ weight[:width].T) * (h @ weight[width:].T)
    return token, gates[token, slot], inner


def test_expert_statistics_are_its_routed_tokens_weighted_by_their_gates() -> None:
    model = contract_model("mixtral")
    adapter = get_adapter(model)
    plan = PruneConfig(batch_size=8).resolve(2)
    acts = capture_inputs(model, adapter, IDS, plan, torch.device("cpu"))
    module = adapter.depth2_modules(0)[1]
    stats = collect_expert_stats(module, frozenset({"level2_in", "level1_in"}), entered_path(adapter, acts, 0))
    rows, index, gates = routed_by_hand(model, 0)
    counts = []
    for expert, expert_stats in enumerate(stats):
        token, gate, inner = expert_rows(model, 0, expert, rows, index, gates)
        scaled = (gate[:, None] * inner).double()
        counts.append(len(token))
        assert expert_stats.level2_in.n == len(token)
        torch.testing.assert_close(expert_stats.level2_in.gram, scaled.T @ scaled, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(expert_stats.level2_in.sum, scaled.sum(0), rtol=1e-5, atol=1e-6)
        inputs = rows[token].double()  # level 1 sees the routed rows unscaled
        torch.testing.assert_close(expert_stats.level1_in.gram, inputs.T @ inputs, rtol=1e-4, atol=1e-5)
    assert sum(counts) == index.numel() and len(set(counts)) > 1  # every slot counted once, experts differ


def test_an_expert_bias_is_added_once_per_routed_token() -> None:
    model = contract_model("mixtral")
    expert = get_adapter(model).depth2_modules(0)[1].moe.experts[2]
    experts = model.model.layers[0].mlp.experts
    rows, index, gates = routed_by_hand(model, 0)
    with torch.no_grad():
        before = experts(rows, index, gates)
        bias = torch.randn(expert.level2.out_features)
        expert.level2.replace(expert.level2.weight().clone(), bias)
        after = experts(rows, index, gates)
    routed = (index == 2).any(-1)
    torch.testing.assert_close(after[routed] - before[routed], bias.expand(int(routed.sum()), -1), rtol=0, atol=1e-5)
    torch.testing.assert_close(after[~routed], before[~routed], rtol=0, atol=0)


def test_the_record_error_is_each_experts_share_of_the_output_error() -> None:
    """FFN-only pruning of block 0 (its input is the dense model's): each expert's recorded error equals its
    measured contribution error, with LIAR's bias added per routed token."""
    dense = contract_model("mixtral")
    model, record = prune(contract_model("mixtral"), IDS, PruneConfig(ratio=0.3, targets="ffn", reconstruction="liar",
                                                                      intercept=True), progress=False)
    rows, index, gates = routed_by_hand(dense, 0)
    pruned_experts = model.model.layers[0].mlp.experts
    for layer in (layer for layer in record.layers if layer.block == 0):
        token, gate, inner = expert_rows(dense, 0, layer.expert, rows, index, gates)
        full = (gate[:, None] * inner) @ dense.model.layers[0].mlp.experts.down_proj[layer.expert].T
        kept = (gate[:, None] * inner[:, layer.kept_units]) @ pruned_experts.down_proj[layer.expert].T
        kept = kept + pruned_experts.reprune_expert_bias[layer.expert]
        measured = ((full - kept).pow(2).sum() / full.pow(2).sum()).detach()
        assert layer.error == pytest.approx(float(measured), rel=1e-3)
        assert layer.error < layer.error_none


def test_the_router_is_untouched_and_each_expert_keeps_its_own_neurons() -> None:
    dense = contract_model("mixtral").state_dict()
    model, record = prune(contract_model("mixtral"), IDS, PruneConfig(ratio=0.3, reconstruction="liar", recovery="goa"),
                          progress=False)
    for name, tensor in model.state_dict().items():
        if name.endswith("mlp.gate.weight"):
            assert torch.equal(tensor, dense[name]), name
    for block in range(2):
        experts = [layer for layer in record.layers if layer.block == block and layer.kind == "ffn"]
        assert [layer.expert for layer in experts] == [0, 1, 2, 3]
        assert {layer.units_after for layer in experts} == {record.shapes[block].intermediate_size}
        assert record.shapes[block].intermediate_size % 4 == 0  # grouped_mm: rows of a multiple of 16 bytes
        assert len({tuple(layer.kept_units) for layer in experts}) > 1
    assert all(layer.expert is None for layer in record.layers if layer.kind == "attention")


def test_the_record_round_trips_with_experts_and_reads_records_without_them() -> None:
    _, record = prune(contract_model("mixtral"), IDS, PruneConfig(ratio=0.3), progress=False)
    assert RunRecord.from_json(record.to_json()) == record
    old = record.to_json()
    for layer in old["layers"]:
        del layer["expert"]
    assert all(layer.expert is None for layer in RunRecord.from_json(old).layers)


@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe"])
def test_uniform_expert_widths_save_as_plain_transformers(model_type: str, tmp_path) -> None:
    model, record = prune(contract_model(model_type), IDS, PruneConfig(ratio=0.3, reconstruction="none",
                                                                       targets="ffn"), progress=False)
    expected = model_output(model, IDS)
    out = save_pruned(model, None, tmp_path / "pruned", record)
    assert RunRecord.read(out).plain_transformers
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(model_output(loaded, IDS), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("allocation", ["global", "influence"])
def test_expert_biases_and_per_layer_widths_go_through_the_manifest(allocation: str, tmp_path) -> None:
    model, record = prune(contract_model("mixtral"), IDS, PruneConfig(ratio=0.3, allocation=allocation,
                                                                      reconstruction="liar", intercept=True),
                          progress=False)
    expected = model_output(model, IDS)
    out = save_pruned(model, None, tmp_path / "pruned", record)
    manifest = transformers.AutoConfig.from_pretrained(out).reprune_manifest
    assert set(manifest["expert_biases"]) == {f"model.layers.{i}.mlp.experts" for i in range(2)}
    assert any(name.endswith("experts.down_proj") for name in manifest["parameters"])
    assert all(shape.intermediate_size % 4 == 0 for shape in record.shapes)  # per-layer steps are grouped_mm's too
    loaded = load(out)
    assert get_adapter(loaded).layer_shapes() == record.shapes
    torch.testing.assert_close(model_output(loaded, IDS), expected, rtol=0, atol=1e-5)


def test_qwen3_moe_dense_and_mixture_layers_each_keep_their_own_width(tmp_path) -> None:
    dense_first = {"mlp_only_layers": [0]}
    model, record = prune(contract_model("qwen3_moe", **dense_first), IDS,
                          PruneConfig(ratio=0.3, reconstruction="none", targets="ffn"), progress=False)
    ffn = [layer for layer in record.layers if layer.kind == "ffn"]
    assert [layer.expert for layer in ffn] == [None, 0, 1, 2, 3]
    assert ffn[0].units_before == 48 and ffn[1].units_before == 24
    expected = model_output(model, IDS)
    out = save_pruned(model, None, tmp_path / "pruned", record)
    config = transformers.AutoConfig.from_pretrained(out)
    assert RunRecord.read(out).plain_transformers
    assert (config.intermediate_size, config.moe_intermediate_size) == (ffn[0].units_after, ffn[1].units_after)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(model_output(loaded, IDS), expected, rtol=0, atol=1e-5)
    slow, _ = prune(contract_model("qwen3_moe", **dense_first), IDS, PruneConfig(
        ratio=0.3, reconstruction="none", targets="ffn", shortcuts=False), progress=False)
    torch.testing.assert_close(model_output(slow, IDS), expected, rtol=1e-4, atol=1e-5)  # the dense layer's shortcut


@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe", "gpt_oss"])
def test_the_expert_descriptions_rebuild_the_experts_output(model_type: str) -> None:
    """Each expert's rows (gate|up halves or interleaved columns, transposed storage) and activation, as the
    adapter describes them, give the experts module's own output."""
    model = contract_model(model_type)
    moe = get_adapter(model).depth2_modules(1)[1].moe
    seen = []
    handle = moe.module.register_forward_pre_hook(lambda _m, args: seen.append(args))
    model_output(model, IDS[:4])
    handle.remove()
    hidden, index, gates = seen[0]
    native_bias = getattr(moe.module, "down_proj_bias", None)  # GPT-OSS's, scaled by the gate value
    rebuilt = torch.zeros_like(hidden)
    with torch.no_grad():
        for e, expert in enumerate(moe.experts):
            token, slot = torch.where(index == e)
            gate = gates[token, slot, None]
            out = (gate * moe.level2_input(expert, hidden[token])) @ expert.level2.weight().T
            rebuilt.index_add_(0, token, out if native_bias is None else out + gate * native_bias[e])
        torch.testing.assert_close(rebuilt, moe.module(hidden, index, gates), rtol=1e-5, atol=1e-6)


def test_the_report_shows_a_mixture_as_one_ffn_row() -> None:
    from reprune.report import block_rows

    _, record = prune(contract_model("mixtral"), IDS, PruneConfig(ratio=0.3, reconstruction="liar"), progress=False)
    for row in block_rows(record):
        experts = [layer for layer in record.layers if layer.block == row["block"] and layer.kind == "ffn"]
        assert row["neurons_after"] == experts[0].units_after == record.shapes[row["block"]].intermediate_size
        assert row["ffn_error"] == pytest.approx(sum(layer.error for layer in experts) / len(experts))


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_an_expert_no_calibration_token_reaches_is_an_error_naming_it(allocation: str) -> None:
    model = contract_model("gpt_oss")
    with torch.no_grad():
        model.model.layers[1].mlp.router.bias[2] = -1e4  # expert 2 of block 1 is never in any token's top k
    with pytest.raises(ValueError, match=r"block 1 ffn: no calibration token is routed to experts \[2\]"):
        prune(model, IDS, PruneConfig(ratio=0.3, allocation=allocation), progress=False)
