"""GOA: second-moment and head-similarity criteria, greedy recovery, self-generated calibration, presets."""

from __future__ import annotations

import copy
import math
import types

import pytest
import torch
from scipy.spatial.distance import jensenshannon
from tiny_models import calibration_batch, contract_model, entered_path, model_output, tiny_model
from torch import nn

from reprune.adapters import Depth2Module, Level1Part, Projection, get_adapter
from reprune.allocation import module_budget
from reprune.calibration import CalibrationPath, capture_block_inputs, collect_block_stats, collect_module_stats, run_block
from reprune.criteria import CRITERIA
from reprune import PruneConfig, prune
from reprune.recovery import RECOVERIES, RecoveryInput
from reprune.presets import preset_config
from reprune.selfgen import self_generated_ids
from reprune.stats import Moments, ModuleStats, head_divergence_sum, js_divergence

CPU = torch.device("cpu")


# --- second-moment criterion --------------------------------------------------------------------


def _relu_module(d_in: int = 6, width: int = 5, d_out: int = 4) -> Depth2Module:
    """f(x) = B relu(A x) over plain nn.Linear layers (no bias: the metric is exact without one)."""
    torch.manual_seed(0)
    holder = nn.Module()
    holder.fc1 = nn.Linear(d_in, width, bias=False)
    holder.fc2 = nn.Linear(width, d_out, bias=False)
    return Depth2Module(kind="ffn", block=0, parent=holder, level1=[Level1Part(Projection(holder, "fc1"))],
                        level2=Projection(holder, "fc2"), num_units=width, unit_width=1)


def _monte_carlo_energy(module: Depth2Module, x: torch.Tensor) -> torch.Tensor:
    """E||Y_j||² with Y_j = B[:, j] relu(a_jᵀ x), estimated on the samples ``x``."""
    a = module.level1[0].projection.weight().detach().double()
    b = module.level2.weight().detach().double()
    hidden_sq = torch.relu(x @ a.T).pow(2).mean(0)
    return b.pow(2).sum(0) * hidden_sq


def test_second_moment_matches_monte_carlo_output_energy() -> None:
    module = _relu_module()
    generator = torch.Generator().manual_seed(1)
    mixing = torch.randn(6, 6, generator=generator, dtype=torch.float64) + 2 * torch.eye(6, dtype=torch.float64)
    x = torch.randn(200_000, 6, generator=generator, dtype=torch.float64) @ mixing.T  # Σ = M Mᵀ ≠ I
    stats = ModuleStats(level1_in=Moments())
    stats.level1_in.update(x)
    expected = _monte_carlo_energy(module, x)
    scores = CRITERIA.get("second-moment").score(module, stats, generator)
    assert torch.allclose(scores, expected, rtol=0.03)
    # the covariance matters here: the data-free metric (Σ = I) is far off for these inputs
    free = CRITERIA.get("second-moment-free").score(module, ModuleStats(), generator)
    assert not torch.allclose(free, expected, rtol=0.3)


def test_second_moment_free_needs_no_data_and_matches_white_inputs() -> None:
    module = _relu_module()
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(200_000, 6, generator=generator, dtype=torch.float64)
    scores = CRITERIA.get("second-moment-free").score(module, ModuleStats(), generator)
    assert torch.allclose(scores, _monte_carlo_energy(module, x), rtol=0.03)


@pytest.mark.parametrize("family", ["llama", "phi3"])  # Phi-3 fuses gate|up in one projection
def test_gated_second_moment_forms_follow_their_formulas(family: str) -> None:
    """paper: ‖W_D[:, j]‖⁴ (gᵀΣg)(uᵀΣu); code: ‖W_D[:, j]‖ silu(gᵀΣg)(uᵀΣu); product: ‖W_D[:, j]‖² (gᵀΣg)(uᵀΣu)."""
    model = tiny_model(family) if family == "llama" else contract_model(family)
    module = get_adapter(model).depth2_modules(0)[1]
    assert module.gated
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(500, module.level1[0].projection.in_features, generator=generator, dtype=torch.float64) * 0.3
    stats = ModuleStats(level1_in=Moments())
    stats.level1_in.update(x)
    sigma = stats.level1_in.second_moment
    units = torch.arange(module.num_units)
    gate_w, up_w = (p.projection.weight().detach().double()[module.level1_rows(p, units)] for p in module.level1)
    gate, up = (((w @ sigma) * w).sum(1) for w in (gate_w, up_w))
    out = module.level2.weight().detach().double().norm(dim=0)
    expected = {"paper": out**4 * gate * up, "code": out * torch.nn.functional.silu(gate) * up,
                "product": out**2 * gate * up}
    for form, want in expected.items():
        got = CRITERIA.get(f"second-moment-{form}").score(module, stats, generator)
        assert torch.allclose(got, want, rtol=1e-10), form
    ranks = {form: torch.argsort(want).tolist() for form, want in expected.items()}
    assert len({tuple(r) for r in ranks.values()}) > 1, "the forms must rank these neurons differently"
    default = CRITERIA.get("second-moment").score(module, stats, generator)
    from reprune.criteria.second_moment import DEFAULT_FORM
    assert torch.allclose(default, expected[DEFAULT_FORM])


# --- Jensen–Shannon divergence -----------------------------------------------------------------


def test_js_divergence_of_identical_and_disjoint_distributions() -> None:
    p = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    assert js_divergence(p, p).item() == pytest.approx(0.0, abs=1e-12)
    one_hot_a, one_hot_b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    assert js_divergence(one_hot_a, one_hot_b).item() == pytest.approx(math.log(2.0), abs=1e-12)
    q = torch.tensor([0.6, 0.1, 0.3], dtype=torch.float64)
    assert js_divergence(p, q).item() == pytest.approx(jensenshannon(p.numpy(), q.numpy()) ** 2, rel=1e-9)


def test_head_divergence_sum_pairs_heads_and_chunks() -> None:
    generator = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(2, 4, 5, 6, generator=generator), dim=-1)  # (batch, heads, queries, keys)
    probs[:, 2] = probs[:, 0]  # a duplicate head
    probs[:, 3] = 0.0
    probs[:, 3, :, 0] = 1.0  # one-hot on key 0 ...
    probs[:, 1] = 0.0
    probs[:, 1, :, 5] = 1.0  # ... and on key 5: disjoint
    rows = probs.shape[0] * probs.shape[2]
    mean = head_divergence_sum(probs) / rows
    assert mean[0, 2].item() == pytest.approx(0.0, abs=1e-12)
    assert mean[1, 3].item() == pytest.approx(math.log(2.0), abs=1e-12)
    brute = torch.stack([torch.stack([js_divergence(probs[:, i], probs[:, j]).mean() for j in range(4)])
                         for i in range(4)])
    assert torch.allclose(mean, brute, atol=1e-12)
    assert torch.allclose(head_divergence_sum(probs, max_elements=4 * 6 * 3), head_divergence_sum(probs), atol=1e-12)


@pytest.mark.parametrize("family", ["llama", "bert", "gpt2", "opt"])
def test_collected_head_divergence_equals_attention_maps(family: str) -> None:
    """Statistics gathered block by block equal the JS of the model's own attention maps (eager)."""
    model = tiny_model(family)
    adapter = get_adapter(model)
    ids = calibration_batch(4, 12)
    acts = capture_block_inputs(model, adapter, ids, 2, CPU, attn_implementation="eager")
    acts = run_block(adapter.blocks()[0], acts)
    stats = collect_module_stats(adapter.depth2_modules(1)[0], frozenset({"head_divergence"}),
                                 entered_path(adapter, acts, 1))
    assert model.config._attn_implementation == "sdpa"  # switched only while collecting
    with torch.no_grad():
        model.set_attn_implementation("eager")
        maps = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=True).attentions[1]
    heads = maps.shape[1]
    brute = torch.tensor([[js_divergence(maps[:, i], maps[:, j]).mean().item() for j in range(heads)]
                          for i in range(heads)], dtype=torch.float64)
    assert brute.max() > 0
    assert torch.allclose(stats.head_divergence, brute, rtol=1e-6, atol=1e-12)


def test_head_divergence_refuses_inputs_without_a_causal_mask() -> None:
    model = tiny_model("llama")
    adapter = get_adapter(model)
    acts = capture_block_inputs(model, adapter, calibration_batch(2, 8), 2, CPU)  # SDPA: no explicit mask
    with pytest.raises(RuntimeError, match="explicit causal mask"):
        collect_module_stats(adapter.depth2_modules(0)[0], frozenset({"head_divergence"}), entered_path(adapter, acts, 0))


def test_one_pass_statistics_refuse_inputs_without_a_causal_mask_and_leave_no_hooks() -> None:
    model = tiny_model("llama")
    adapter = get_adapter(model)
    acts = capture_block_inputs(model, adapter, calibration_batch(2, 8), 2, CPU)  # SDPA: no explicit mask
    attention, ffn = adapter.depth2_modules(0)
    with pytest.raises(RuntimeError, match="explicit causal mask"):  # the FFN's hooks come first in the list
        collect_block_stats(adapter.blocks()[0], [ffn, attention], [frozenset({"level1_in"}),
                            frozenset({"head_divergence"})], acts)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


# --- head-similarity criterion -----------------------------------------------------------------


def _duplicate_head(model: nn.Module, source: int = 0, copy_to: int = 2) -> None:
    """Give head ``copy_to`` the q/k/v rows of head ``source`` in every block, and a smaller output
    (so it has the lower second-moment score and is the one of the pair to go)."""
    adapter = get_adapter(model)
    with torch.no_grad():
        for index in range(len(adapter.blocks())):
            attention = adapter.depth2_modules(index)[0]
            for part in attention.level1:
                src, dst = attention.level1_rows(part, [source]), attention.level1_rows(part, [copy_to])
                part.projection.weight()[dst] = part.projection.weight()[src]
                if part.projection.bias() is not None:
                    part.projection.bias()[dst] = part.projection.bias()[src]
            attention.level2.weight()[:, attention.unit_channels([copy_to])] *= 0.5


def _removed_heads(report: dict) -> list[list[int]]:
    return [sorted(set(range(r.units_before)) - set(r.kept_units)) for r in report.layers
            if r.kind == "attention"]


def _one_head_per_block_ratio(model: nn.Module) -> float:
    adapter = get_adapter(model)
    budgets = [module_budget(m, "query") for i in range(len(adapter.blocks())) for m in adapter.depth2_modules(i)]
    return sum(b.unit_cost for b in budgets if b.kind == "attention") / sum(b.total_params for b in budgets)


@pytest.mark.parametrize("family", ["llama-mha", "bert", "gpt2", "opt"])
def test_head_similarity_removes_one_of_two_identical_heads(family: str) -> None:
    model = tiny_model(family)
    _duplicate_head(model)
    config = PruneConfig(ratio=_one_head_per_block_ratio(model), criterion="head-similarity", targets="attention",
                         reconstruction="none")
    _, report = prune(model, calibration_batch(8, 16), config, progress=False)
    assert _removed_heads(report) == [[2]] * len(get_adapter(model).blocks())
    assert model.config._attn_implementation == "sdpa"


def test_head_similarity_threshold_sets_the_count() -> None:
    model = tiny_model("opt")
    _duplicate_head(model)
    config = PruneConfig(ratio=0.0, criterion="head-similarity", targets="attention", reconstruction="none",
                         criterion_options={"tau": 1e-7})  # only the identical pair lies below τ
    _, report = prune(model, calibration_batch(8, 16), config, progress=False)
    assert _removed_heads(report) == [[2], [2]]


def test_head_similarity_threshold_count_is_made_legal_for_gqa() -> None:
    model = tiny_model("llama")  # 4 query heads over 2 KV heads: query heads go two at a time
    config = PruneConfig(ratio=0.0, criterion="head-similarity", targets="attention", reconstruction="none",
                         criterion_options={"tau": 1.0})  # above ln 2: all but one head marked (3)
    _, report = prune(model, calibration_batch(4, 16), config, progress=False)
    assert [s.num_heads for s in report.shapes] == [2, 2, 2]
    assert [s.num_kv_heads for s in report.shapes] == [2, 2, 2]
    assert torch.isfinite(model_output(model, calibration_batch(2, 8, seed=5))).all()


def test_head_similarity_cannot_score_ffn_neurons() -> None:
    with pytest.raises(ValueError, match="ffn_criterion"):
        PruneConfig(criterion="head-similarity").resolve(2)
    ffn = get_adapter(tiny_model("opt")).depth2_modules(0)[1]
    with pytest.raises(ValueError, match="FFN"):
        CRITERIA.get("head-similarity").score(ffn, ModuleStats(), torch.Generator())


# --- greedy recovery ---------------------------------------------------------------------------


def _module_outputs(model: nn.Module, ids: torch.Tensor, block: int) -> dict[str, torch.Tensor]:
    """Outputs of block ``block``'s attention and FFN modules (their level-2 layers), via forward hooks."""
    got: dict[str, torch.Tensor] = {}
    handles = [m.level2.module.register_forward_hook(lambda _m, _a, out, kind=m.kind: got.__setitem__(kind, out))
               for m in get_adapter(model).depth2_modules(block)]
    model_output(model, ids)
    for handle in handles:
        handle.remove()
    return got


@pytest.mark.parametrize("recovery", ["goa", "goa-current"])
@pytest.mark.parametrize("family", ["llama", "opt"])
def test_goa_recovery_reduces_module_error_after_earlier_pruning(family: str, recovery: str) -> None:
    """The recovery lowers each module's error against the dense model, and the errors it reports are
    those of the modules' outputs on its rows."""
    dense = tiny_model(family)
    ids = calibration_batch(32, 16)
    blocks = len(get_adapter(dense).blocks())
    pruned = copy.deepcopy(dense)  # block 0 pruned hard, the rest left dense
    prune(pruned, ids, PruneConfig(ratio=0.6 / blocks, criterion="magnitude", reconstruction="none",
                                   keep_last=blocks - 1), progress=False)
    recovered = copy.deepcopy(pruned)
    adapter, dense_adapter = get_adapter(recovered), get_adapter(dense)
    acts = run_block(adapter.blocks()[0], capture_block_inputs(recovered, adapter, ids, 8, CPU))
    dense_acts = run_block(dense_adapter.blocks()[0], capture_block_inputs(dense, dense_adapter, ids, 8, CPU))
    path, dense_path = CalibrationPath(adapter, acts), CalibrationPath(dense_adapter, dense_acts)
    path.enter(adapter.blocks()[1], 1)
    dense_path.enter(dense_adapter.blocks()[1], 1)
    reported = {}
    for kind in ("attention", "ffn"):
        module = path.module(kind)

        def restat(needs: frozenset[str], module: Depth2Module = module) -> ModuleStats:
            return collect_module_stats(module, needs, path, dense_path)

        reported[kind] = RECOVERIES.get(recovery).fn(RecoveryInput(module, dense_path.module(kind), 1e-4, restat))

    target = _module_outputs(dense, ids, 1)
    plain, fixed = _module_outputs(pruned, ids, 1), _module_outputs(recovered, ids, 1)
    for kind in ("attention", "ffn"):
        energy = target[kind].pow(2).sum()
        error_plain = (plain[kind] - target[kind]).pow(2).sum() / energy
        error_fixed = (fixed[kind] - target[kind]).pow(2).sum() / energy
        assert error_plain > 1e-4, "block 0's pruning must disturb block 1 for the test to mean anything"
        assert error_fixed < 0.7 * error_plain, kind
        if kind == "attention":  # the FFN's "before" is measured after the attention was recovered
            assert reported[kind].before == pytest.approx(error_plain.item(), rel=1e-4)
        assert reported[kind].after == pytest.approx(error_fixed.item(), rel=1e-4)


# --- self-generated calibration ----------------------------------------------------------------


def test_self_generated_ids_are_seeded() -> None:
    model = tiny_model("llama")
    tokenizer = types.SimpleNamespace(bos_token_id=1, eos_token_id=2)
    first = self_generated_ids(model, tokenizer, num_samples=3, seq_len=10, seed=0, batch_size=2)
    again = self_generated_ids(model, tokenizer, num_samples=3, seq_len=10, seed=0, batch_size=2)
    other = self_generated_ids(model, tokenizer, num_samples=3, seq_len=10, seed=1, batch_size=2)
    assert first.shape == (3, 10) and first.dtype == torch.long
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert (first[:, 0] == 1).all() and not (first[:, 1:] == 2).any()  # starts at BOS, never ends early


def test_self_generated_ids_refuse_encoders() -> None:
    tokenizer = types.SimpleNamespace(bos_token_id=None, eos_token_id=None)
    with pytest.raises(ValueError, match="causal language model"):
        self_generated_ids(tiny_model("bert"), tokenizer, num_samples=2, seq_len=8, seed=0)


# --- presets -----------------------------------------------------------------------------------


def test_the_default_config_is_the_reprune_method() -> None:
    """``--method reprune`` names the default: a change to one without the other fails here."""
    assert preset_config("reprune") == PruneConfig()


@pytest.mark.parametrize(("preset", "options"), [("goa", {}), ("goa", {"tau": 0.3}), ("liar", {}), ("reprune", {}),
                                                  ("reprune-influence", {})])
def test_preset_prunes_a_tiny_gqa_llama(preset: str, options: dict) -> None:
    model = tiny_model("llama")
    before = sum(p.numel() for p in model.parameters())
    config = preset_config(preset, ratio=0.2, num_samples=8, seq_len=16, criterion_options=options)
    model, report = prune(model, calibration_batch(config.num_samples, config.seq_len), config, progress=False)
    assert sum(p.numel() for p in model.parameters()) < before
    assert torch.isfinite(model_output(model, calibration_batch(2, 8, seed=7))).all()
    if preset == "goa":  # 4 + 2 kept blocks clipped (keep_first first) to leave one of three to prune
        assert (report.config.keep_first, report.config.keep_last) == (0, 2)
        assert [r.block for r in report.layers] == [0, 0]


def test_preset_config_rejects_unknown_names_and_fields() -> None:
    assert preset_config("goa", ratio=0.5).ratio == 0.5
    with pytest.raises(ValueError, match="goa"):
        preset_config("sparsegpt")
    with pytest.raises(TypeError, match="ratoi"):
        preset_config("liar", ratoi=0.5)
