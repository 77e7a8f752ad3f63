"""Budget allocation: achieved ratio within the granularity, kept blocks, GQA legality, unit selection.

Tolerances follow from the granularity of each scheme (``n`` = parameters of one FFN neuron):
- uniform (and ffn-first): every pruned block loses the same number of neurons, so the FFN count is rounded once for
  all blocks: |removed − target| ≤ ½ n per pruned block; influence rounds each FFN's own count, within the same;
- global: units are taken in score order, heads only while they fit, then neurons refill the budget:
  −½ n ≤ removed − target < n;
- kept widths in multiples of ``s`` neurons (``multiple_of``, grouped_mm) widen each FFN count's rounding to
  ½ s n: per pruned block for uniform (as above), and for global per layer on top of the refill's.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from reprune.adapters import Depth2Module, get_adapter
from reprune.adapters import LayerShape
from reprune.allocation import allocate, module_budget, projection_params, select_units
from reprune import PruneConfig, prune
from reprune.allocation import prunable_parameters
from tiny_models import FAMILIES, calibration_batch, contract_model, model_output, tiny_model


def budgets_of(model, gqa_mode="query", multiple_of=1):
    adapter = get_adapter(model)
    return [module_budget(m, gqa_mode, multiple_of) for i in range(len(adapter.blocks())) for m in adapter.depth2_modules(i)]


def removed_params(budgets, counts) -> float:
    return sum(counts[b.key] * b.unit_cost for b in budgets)


def neuron_cost(budgets) -> float:
    return max(b.unit_cost for b in budgets if b.kind == "ffn")


def tolerance(mode: str, budgets, eligible) -> tuple[float, float]:
    """(lowest, highest) allowed ``removed − target`` in parameters. Global: FLAP's threshold, nearest the
    target to within half a unit, and the unit at the threshold removed too, so up to 1.5 of the largest unit
    over; below it only by the refill's half neuron."""
    n = neuron_cost(budgets)
    step = max(b.step for b in budgets if b.kind == "ffn")
    blocks = len({b.block for b in budgets if b.key in eligible and b.kind == "ffn"})
    if mode in ("uniform", "ffn-first", "influence"):
        return -0.5 * step * n * blocks - 1e-6, 0.5 * step * n * blocks + 1e-6
    rounding = 0.5 * step * n * blocks if step > 1 else 0.0
    largest = max(b.unit_cost for b in budgets if b.key in eligible)
    return -0.5 * n - rounding - 1e-6, 1.5 * largest + rounding + 1e-6


def gqa6_model():
    """A LLaMA with 6 query heads over 2 KV heads: query mode steps by 2 heads, group mode by 3."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("multiple_of", [1, 8])
@pytest.mark.parametrize("mode", ["uniform", "global", "ffn-first", "influence"])
@pytest.mark.parametrize("gqa_mode", ["query", "group"])
@pytest.mark.parametrize("family", FAMILIES + ["gqa6"])
def test_allocation_hits_ratio_within_granularity(family, gqa_mode, mode, multiple_of):
    model = gqa6_model() if family == "gqa6" else tiny_model(family)
    budgets = budgets_of(model, gqa_mode, multiple_of)
    total = sum(b.total_params for b in budgets)
    eligible = {b.key for b in budgets}
    low, high = tolerance(mode, budgets, eligible)
    for ratio in (0.1, 0.2, 0.3, 0.5):
        for seed in range(4):
            g = torch.Generator().manual_seed(seed)
            scores = {b.key: torch.rand(b.num_units, generator=g, dtype=torch.float64) for b in budgets}
            similarities = {b.block: float(torch.rand((), generator=g)) for b in budgets}
            counts = allocate(budgets, ratio, mode, eligible, scores, similarities=similarities)
            error = removed_params(budgets, counts) - ratio * total
            assert low <= error <= high, (ratio, seed, error / neuron_cost(budgets), counts)
            for b in budgets:  # every count is legal: it leaves a multiple of the step
                assert 0 <= counts[b.key] <= b.max_remove
                assert counts[b.key] == 0 or (b.num_units - counts[b.key]) % b.step == 0
            if mode in ("uniform", "ffn-first"):  # same number of heads and of neurons in every block
                for kind in ("attention", "ffn"):
                    assert len({counts[b.key] for b in budgets if b.kind == kind}) == 1


@pytest.mark.parametrize("mode", ["uniform", "global", "ffn-first", "influence"])
def test_allocation_ffn_only(mode):
    budgets = budgets_of(tiny_model("opt"))
    total = sum(b.total_params for b in budgets)
    eligible = {b.key for b in budgets if b.kind == "ffn"}
    scores = {b.key: torch.rand(b.num_units, generator=torch.Generator().manual_seed(1)) for b in budgets}
    counts = allocate(budgets, 0.2, mode, eligible, scores, similarities={b.block: 0.5 + b.block for b in budgets})
    assert all(counts[b.key] == 0 for b in budgets if b.kind == "attention")
    low, high = tolerance(mode, budgets, eligible)
    assert low <= removed_params(budgets, counts) - 0.2 * total <= high


def test_ffn_first_removes_heads_only_beyond_the_ffns_capacity():
    budgets = budgets_of(gqa6_model())
    total = sum(b.total_params for b in budgets)
    eligible = {b.key for b in budgets}
    ffn_capacity = sum(b.max_remove * b.unit_cost for b in budgets if b.kind == "ffn")
    below = allocate(budgets, 0.9 * ffn_capacity / total, "ffn-first", eligible)
    assert all(below[b.key] == 0 for b in budgets if b.kind == "attention")
    uniform = allocate(budgets, 0.9 * ffn_capacity / total, "uniform", eligible)
    assert any(uniform[b.key] > 0 for b in budgets if b.kind == "attention")  # uniform would take heads
    beyond = allocate(budgets, 1.1 * ffn_capacity / total, "ffn-first", eligible)
    assert all(beyond[b.key] > 0 for b in budgets if b.kind == "attention")
    assert removed_params(budgets, beyond) >= 1.1 * ffn_capacity - 0.5 * neuron_cost(budgets) * 2


def ffn_budgets(blocks: int, units: int = 64, step: int = 1):
    """FFN-only budgets of ``blocks`` identical blocks (one parameter per neuron)."""
    from reprune.allocation import ModuleBudget

    return [ModuleBudget(i, "ffn", units, step, units - step, 1.0, units) for i in range(blocks)]


def test_influence_removes_in_proportion_to_similarity_below_one_half():
    budgets = ffn_budgets(4)
    eligible = {b.key for b in budgets}
    target = 0.3 * 256
    counts = allocate(budgets, 0.3, "influence", eligible, similarities={0: 0.0, 1: 0.125, 2: 0.25, 3: 0.9})
    removed = [counts[(i, "ffn")] for i in range(4)]
    weights = [0.0, 0.25, 0.5, 1.0]  # cosine / ½, at most 1
    assert removed[0] == 0  # a block that rewrites its input keeps its FFN whole
    assert removed == [round(target * w / sum(weights)) for w in weights]
    # blocks that keep their input's direction (cosine ≥ ½) lose alike, as in ffn-first
    counts = allocate(budgets, 0.3, "influence", eligible, similarities={0: 0.5, 1: 0.6, 2: 0.8, 3: 0.99})
    assert counts == allocate(budgets, 0.3, "ffn-first", eligible)
    # negative cosines count as 0; capped FFNs keep one step and the others carry the rest
    counts = allocate(budgets, 0.7, "influence", eligible, similarities={0: -0.3, 1: 0.1, 2: 1.0, 3: 1.0})
    removed = [counts[(i, "ffn")] for i in range(4)]
    assert removed[0] == 0 and removed[2] == removed[3] == 63
    assert sum(removed) == pytest.approx(0.7 * 256, abs=1)
    # all cosines 0: the FFNs share the budget alike
    counts = allocate(budgets, 0.3, "influence", eligible, similarities=dict.fromkeys(range(4), 0.0))
    assert {counts[b.key] for b in budgets} == {19}


def test_influence_needs_every_pruned_blocks_similarity():
    budgets = ffn_budgets(3)
    with pytest.raises(ValueError, match="similarity of every pruned block"):
        allocate(budgets, 0.3, "influence", {b.key for b in budgets}, similarities={0: 0.5, 1: 0.5})
    with pytest.raises(ValueError, match="similarity of every pruned block"):
        allocate(budgets, 0.3, "influence", {b.key for b in budgets})


def test_influence_takes_heads_only_beyond_the_ffns_capacity():
    budgets = budgets_of(gqa6_model())
    total = sum(b.total_params for b in budgets)
    eligible = {b.key for b in budgets}
    ffn_capacity = sum(b.max_remove * b.unit_cost for b in budgets if b.kind == "ffn")
    similarities = {0: 0.2, 1: 0.9}
    below = allocate(budgets, 0.5 * ffn_capacity / total, "influence", eligible, similarities=similarities)
    assert all(below[b.key] == 0 for b in budgets if b.kind == "attention")
    assert below[(0, "ffn")] < below[(1, "ffn")]
    beyond = allocate(budgets, 1.1 * ffn_capacity / total, "influence", eligible, similarities=similarities)
    assert all(beyond[b.key] > 0 for b in budgets if b.kind == "attention")


def test_allocation_ratio_zero_removes_nothing():
    budgets = budgets_of(tiny_model("llama"))
    counts = allocate(budgets, 0.0, "uniform", {b.key for b in budgets})
    assert set(counts.values()) == {0}


def test_global_allocation_needs_scores():
    budgets = budgets_of(tiny_model("opt"))
    with pytest.raises(ValueError, match="scores"):
        allocate(budgets, 0.3, "global", {b.key for b in budgets}, None)


def test_global_ranks_comparable_scores_as_they_are():
    """Block 0's scores are all below block 1's: unstandardised, block 0 loses every neuron it may before block 1
    loses one; standardised, the two layers look alike and share the removals."""
    budgets = budgets_of(tiny_model("opt"))
    eligible = {b.key for b in budgets if b.kind == "ffn"}
    ramp = {b.key: torch.linspace(0.0, 1.0, b.num_units) + (10.0 * b.block) for b in budgets}
    raw = allocate(budgets, 0.1, "global", eligible, ramp, standardise=False)
    shared = allocate(budgets, 0.1, "global", eligible, ramp)
    first, second = (b for b in budgets if b.key in eligible)
    assert raw[second.key] == 0 < raw[first.key]
    assert abs(shared[first.key] - shared[second.key]) <= 1


def test_obs_alone_makes_scores_comparable():
    """Global allocation standardises unless every pruned kind's criterion says its scores compare across layers."""
    assert PruneConfig(criterion="obs").resolve(2).comparable_scores
    assert PruneConfig(criterion="obs", targets="attention").resolve(2).comparable_scores
    assert not PruneConfig(attention_criterion="obs", ffn_criterion="flap").resolve(2).comparable_scores
    assert PruneConfig(attention_criterion="obs", ffn_criterion="flap", targets="attention").resolve(2).comparable_scores


def test_unit_cost_matches_real_parameter_count():
    """Parameters per unit, as allocation counts them, are those that surgery really removes (OLMo-2's q/k
    rows of a removed head stay, for the norm)."""
    ids = calibration_batch(8, 16)
    builders = {family: lambda family=family: tiny_model(family) for family in FAMILIES}
    builders["olmo2"] = lambda: contract_model("olmo2")
    for family, build in builders.items():
        for gqa_mode in ("query", "group"):
            model = build()
            budgets = {b.key: b for b in budgets_of(model, gqa_mode)}
            model, report = prune(model, ids, PruneConfig(ratio=0.3, reconstruction="none", gqa_mode=gqa_mode),
                                  progress=False)
            expected = sum(
                (layer.units_before - layer.units_after) * budgets[(layer.block, layer.kind)].unit_cost
                for layer in report.layers)
            params = report.parameters
            assert params.prunable_before - params.prunable_after == pytest.approx(expected, abs=1e-6), family
            assert params.total_before - params.total_after == pytest.approx(expected, abs=1e-6), family


@pytest.mark.parametrize("allocation", ["uniform", "global", "influence"])
@pytest.mark.parametrize("family", ["llama", "bert", "gpt2", "opt"])
def test_pipeline_achieves_ratio(family, allocation):
    """End to end, from parameter counts of the pruned model (biases that compensation adds excluded)."""
    ids = calibration_batch(8, 16)
    model = tiny_model(family)
    config = PruneConfig(ratio=0.3, allocation=allocation, reconstruction="bias")
    budgets = budgets_of(model, multiple_of=config.multiple_of)
    before = {name: p.numel() for name, p in model.named_parameters()}
    model, report = prune(model, ids, config, progress=False)
    added_biases = sum(p.numel() for name, p in model.named_parameters()
                       if name.endswith(".bias") and name not in before)
    params = report.parameters
    removed = params.prunable_before - (params.prunable_after - added_biases)
    low, high = tolerance(allocation, budgets, {b.key for b in budgets})
    assert low <= removed - 0.3 * params.prunable_before <= high
    if family == "llama":  # LLaMA layers gain their compensation biases (reported as such)
        assert added_biases > 0
    else:
        assert added_biases == 0
        assert params.ratio_prunable == pytest.approx(removed / params.prunable_before)


@pytest.mark.parametrize("allocation", ["uniform", "global", "influence"])
def test_keep_first_and_last_blocks_unchanged(allocation):
    ids = calibration_batch(8, 16)
    reference = tiny_model("llama")  # 3 blocks: only block 1 may be pruned
    model, report = prune(tiny_model("llama"), ids,
                          PruneConfig(ratio=0.15, allocation=allocation, reconstruction="bias",
                                      keep_first=1, keep_last=1), progress=False)
    assert {layer.block for layer in report.layers} == {1}
    for index in (0, 2):
        kept = dict(model.model.layers[index].named_parameters())
        original = dict(reference.model.layers[index].named_parameters())
        assert kept.keys() == original.keys()
        for name, tensor in kept.items():
            assert torch.equal(tensor, original[name]), (index, name)
    assert report.shapes[0] == report.shapes[2] == LayerShape(num_heads=4, num_kv_heads=2, head_dim=8,
                                                              intermediate_size=48)
    assert report.shapes[1].intermediate_size < 48
    budgets = budgets_of(reference, multiple_of=PruneConfig().multiple_of)
    eligible = {b.key for b in budgets if b.block == 1}
    low, high = tolerance(allocation, budgets, eligible)
    removed = sum((layer.units_before - layer.units_after) * next(
        b.unit_cost for b in budgets if b.key == (layer.block, layer.kind)) for layer in report.layers)
    assert low <= removed - 0.15 * prunable_parameters(get_adapter(reference)) <= high


def test_keep_last_only():
    ids = calibration_batch(8, 16)
    reference = tiny_model("opt")
    model, report = prune(tiny_model("opt"), ids, PruneConfig(ratio=0.1, keep_last=1), progress=False)
    assert {layer.block for layer in report.layers} == {0}
    for name, tensor in model.model.decoder.layers[1].named_parameters():
        assert torch.equal(tensor, dict(reference.model.decoder.layers[1].named_parameters())[name])


@pytest.mark.parametrize("gqa_mode, step, kv_after", [("query", 2, 2), ("group", 3, 1)])
def test_gqa_legal_counts_and_forward(gqa_mode, step, kv_after):
    model = gqa6_model()
    budgets = [b for b in budgets_of(model, gqa_mode) if b.kind == "attention"]
    assert {b.step for b in budgets} == {step}
    assert {b.max_remove for b in budgets} == {6 - step}
    ids = calibration_batch(8, 16)
    model, report = prune(model, ids, PruneConfig(ratio=0.2, targets="attention", gqa_mode=gqa_mode),
                          progress=False)
    assert report.layers
    for layer in report.layers:
        removed = layer.units_before - layer.units_after
        assert removed % step == 0 and removed > 0
        kept = torch.tensor(layer.kept_units)
        groups, per_group = torch.unique(kept // 3, return_counts=True)
        assert bool((per_group == per_group[0]).all())
        assert len(groups) == kv_after
    for shape in report.shapes:
        assert shape.num_kv_heads == kv_after and shape.num_heads % shape.num_kv_heads == 0
    assert torch.isfinite(model_output(model, ids)).all()


def _fake_module(kind: str, num_units: int, num_kv_heads: int = 0) -> Depth2Module:
    return Depth2Module(kind=kind, block=0, parent=None, level1=[], level2=None, num_units=num_units,
                        unit_width=1 if kind == "ffn" else 8, num_kv_heads=num_kv_heads)


def test_select_units_keeps_highest_scores():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(20, generator=g)
    module = _fake_module("ffn", 20)
    kept = select_units(module, scores, 7, "query")
    assert kept.tolist() == sorted(torch.topk(scores, 13).indices.tolist())
    assert select_units(module, scores, 0, "query").tolist() == list(range(20))
    heads = _fake_module("attention", 4, num_kv_heads=4)  # no GQA
    kept = select_units(heads, torch.tensor([0.3, 0.1, 0.9, 0.2]), 2, "query")
    assert kept.tolist() == [0, 2]


def test_select_units_gqa_query_mode_keeps_best_per_group():
    module = _fake_module("attention", 6, num_kv_heads=2)  # groups {0,1,2} and {3,4,5}
    scores = torch.tensor([0.9, 0.1, 0.5, 0.2, 0.8, 0.7])
    kept = select_units(module, scores, 2, "query")  # one query head from every group
    assert kept.tolist() == [0, 2, 4, 5]
    kept = select_units(module, scores, 4, "query")
    assert kept.tolist() == [0, 4]


def test_select_units_gqa_group_mode_drops_weakest_group():
    module = _fake_module("attention", 6, num_kv_heads=2)
    scores = torch.tensor([0.9, 0.1, 0.5, 0.2, 0.8, 0.7])  # group sums 1.5 and 1.7
    assert select_units(module, scores, 3, "group").tolist() == [3, 4, 5]
    scores = torch.tensor([0.9, 0.9, 0.5, 0.2, 0.8, 0.7])  # group sums 2.3 and 1.7
    assert select_units(module, scores, 3, "group").tolist() == [0, 1, 2]


def test_projection_params_counts_fused_projection_once():
    model = tiny_model("gpt2")
    attention = get_adapter(model).depth2_modules(0)[0]
    c_attn, c_proj = model.transformer.h[0].attn.c_attn, model.transformer.h[0].attn.c_proj
    expected = sum(p.numel() for p in c_attn.parameters()) + sum(p.numel() for p in c_proj.parameters())
    assert projection_params(attention) == expected


def test_block_similarities_are_the_cosines_of_the_models_hidden_states():
    """The similarity pass equals the cosines between consecutive hidden states of one plain forward pass
    (LLaMA's last hidden state is after the final norm, so the last block is left out)."""
    from reprune.calibration import capture_block_inputs
    from reprune.scoring import SIMILARITY_SAMPLES, block_similarities

    model = tiny_model("llama")
    ids = calibration_batch(SIMILARITY_SAMPLES + 8, 16)
    adapter = get_adapter(model)
    acts = capture_block_inputs(model, adapter, ids, 8, torch.device("cpu"))
    measured = block_similarities(adapter, acts, {0, 1}, torch.device("cpu"), progress=False)
    with torch.no_grad():
        hidden = model(ids[:SIMILARITY_SAMPLES], output_hidden_states=True).hidden_states
    for block in (0, 1):
        expected = torch.nn.functional.cosine_similarity(hidden[block].double(), hidden[block + 1].double(), dim=-1)
        assert measured[block] == pytest.approx(float(expected.mean()), abs=1e-6)
    assert set(measured) == {0, 1}


def test_influence_allocation_reads_calibration_even_for_a_data_free_criterion(tmp_path):
    """magnitude + none reads no statistics, but influence measures the blocks on the calibration rows: a
    block whose FFN output swamps its input (cosine near 0) keeps more neurons than the others; the per-layer
    widths save and load back (the manifest)."""
    from reprune import RunRecord, load, save_pruned

    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(50.0)
    model, report = prune(model, calibration_batch(16, 16),
                          PruneConfig(ratio=0.3, criterion="magnitude", reconstruction="none",
                                      allocation="influence", multiple_of=1), progress=False)
    assert report.calibration.used
    widths = [shape.intermediate_size for shape in report.shapes]
    assert widths[1] > max(widths[0], widths[2]), widths
    assert set(report.block_similarities) == {0, 1, 2}
    assert report.block_similarities[1] < min(report.block_similarities[0], report.block_similarities[2])
    probe = calibration_batch(2, 8, seed=5)
    out = save_pruned(model, None, tmp_path / "influence", report)
    assert torch.allclose(model_output(load(out), probe), model_output(model, probe), atol=1e-5)
    assert RunRecord.read(out).block_similarities == report.block_similarities
    card = (out / "README.md").read_text()
    assert f"| block input-output cosines (dense) | 0: {report.block_similarities[0]:.3f}, 1: " in card
