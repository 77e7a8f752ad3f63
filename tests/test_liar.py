"""LIAR (least-squares interpolation of the pruned channels) against bias compensation and plain pruning.

(a) Synthetic level-2 layers where the answer is known in closed form.
(b) The pipeline on tiny random LLaMA / BERT / GPT-2 / OPT models: per-layer output errors.
(c) Ill-conditioned statistics: finite results, and an ``IllConditionedWarning`` naming the layer
    whenever the ridge retry rule fires.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest
import torch
from torch import nn

from reprune.adapters import Depth2Module, Level1Part, Projection, get_adapter
from reprune.calibration import capture_block_inputs, collect_module_stats
from reprune.checkpoint import load, save_pruned
from reprune.criteria import CRITERIA, unit_scores
from reprune.linalg import IllConditionedWarning, solve_ridge
from reprune import calibration, pipeline
from reprune.config import Plan
from reprune import PruneConfig, prune
from reprune.reconstruction import (
    RECONSTRUCTIONS,
    ReconstructionInput,

    output_energy,
    output_error,
)
from reprune.reconstruction import closed_form
from reprune.stats import ModuleStats
from tiny_models import calibration_batch, entered_path, model_output, tiny_model


# --------------------------------------------------------------------------------------------------
# helpers


def make_layer(d_in: int, d_out: int, bias: bool = True, seed: int = 0, name_block: int = 7) -> Depth2Module:
    """A stand-alone depth-2 module (FFN-like, one channel per unit) around a float64 nn.Linear level 2."""
    torch.manual_seed(seed)
    parent = nn.Module()
    parent.up = nn.Linear(4, d_in, dtype=torch.float64)  # level 1 (reconstruction never reads it)
    parent.down = nn.Linear(d_in, d_out, bias=bias, dtype=torch.float64)
    return Depth2Module(kind="ffn", block=name_block, parent=parent, level1=[Level1Part(Projection(parent, "up"))],
                        level2=Projection(parent, "down"), num_units=d_in, unit_width=1)


def make_input(module: Depth2Module, x: torch.Tensor, removed: list[int], alpha: float) -> ReconstructionInput:
    stats = ModuleStats()
    stats.level2_in.update(x)
    d = x.shape[1]
    removed_t = torch.tensor(sorted(removed), dtype=torch.long)
    mask = torch.ones(d, dtype=torch.bool)
    mask[removed_t] = False
    kept = torch.nonzero(mask).reshape(-1)
    return ReconstructionInput(module, kept, removed_t, stats, alpha)


def layer_rows_error(inp: ReconstructionInput, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> float:
    """Mean squared output error over the rows of x, computed from the rows (not from the moments)."""
    full = x @ inp.weight + inp.bias
    approx = x[:, inp.kept] @ weight + (0 if bias is None else bias)
    return float((full - approx).pow(2).sum(1).mean())


def moment_error(inp: ReconstructionInput, result) -> float:
    weight, bias = result
    return output_error(inp.stats.level2_in, inp.weight, inp.bias, inp.kept, weight, bias)


def correlated_inputs(n: int, d: int, removed: list[int], noise: float, seed: int) -> torch.Tensor:
    """Rows whose removed channels are a linear function of the kept ones plus a constant (+ noise)."""
    g = torch.Generator().manual_seed(seed)
    kept = [j for j in range(d) if j not in removed]
    x = torch.empty(n, d, dtype=torch.float64)
    x[:, kept] = torch.randn(n, len(kept), generator=g, dtype=torch.float64) * 2 + 0.5
    a = torch.randn(len(kept), len(removed), generator=g, dtype=torch.float64)
    c = torch.randn(len(removed), generator=g, dtype=torch.float64) * 3
    x[:, removed] = x[:, kept] @ a + c + noise * torch.randn(n, len(removed), generator=g, dtype=torch.float64)
    return x


REMOVED = [1, 4, 7, 8]


# --------------------------------------------------------------------------------------------------
# (a) synthetic


def test_output_error_from_moments_matches_rows():
    module = make_layer(10, 6)
    x = correlated_inputs(64, 10, REMOVED, noise=0.3, seed=1)
    inp = make_input(module, x, REMOVED, alpha=1e-2)
    for name in ("none", "bias", "liar"):
        weight, bias = RECONSTRUCTIONS.get(name).fn(inp)
        from_rows = layer_rows_error(inp, x, weight, bias)
        assert moment_error(inp, (weight, bias)) == pytest.approx(from_rows, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_liar_recovers_exact_linear_dependence(bias):
    """Removed channels = kept channels · A + c exactly: LIAR reproduces the unpruned layer output."""
    module = make_layer(10, 6, bias=bias)
    x = correlated_inputs(200, 10, REMOVED, noise=0.0, seed=2)
    inp = make_input(module, x, REMOVED, alpha=1e-10)
    weight, new_bias = RECONSTRUCTIONS.get("liar").fn(inp)
    assert weight.shape == (6, 6) and new_bias.shape == (6,)
    full = x @ inp.weight + inp.bias
    approx = x[:, inp.kept] @ weight + new_bias
    assert torch.allclose(approx, full, atol=1e-7 * full.abs().max().item(), rtol=0)
    energy = output_energy(inp.stats.level2_in, inp.weight, inp.bias)
    assert moment_error(inp, (weight, new_bias)) / energy < 1e-12
    # bias compensation alone cannot do this (the removed channels vary with the kept ones)
    assert moment_error(inp, RECONSTRUCTIONS.get("bias").fn(inp)) / energy > 1e-3


def test_liar_with_q_zero_is_bias_compensation(monkeypatch):
    """Forcing Q = 0 makes c = μ_m, W_u' = W_u and b' = b + W_mᵀ μ_m: exactly FLAP's bias compensation."""
    module = make_layer(10, 6)
    x = correlated_inputs(50, 10, REMOVED, noise=0.5, seed=3)
    inp = make_input(module, x, REMOVED, alpha=1e-2)
    mu = inp.stats.level2_in.mean

    def zero_q(gram, rhs, alpha, where):
        return torch.zeros(gram.shape[0], rhs.shape[1], dtype=torch.float64)

    monkeypatch.setattr(closed_form, "solve_ridge", zero_q)
    q, c = closed_form.liar_interpolation(inp)
    assert torch.count_nonzero(q) == 0
    torch.testing.assert_close(c, mu[inp.removed], rtol=0, atol=1e-15)
    liar_w, liar_b = RECONSTRUCTIONS.get("liar").fn(inp)
    bias_w, bias_b = RECONSTRUCTIONS.get("bias").fn(inp)
    torch.testing.assert_close(liar_w, bias_w, rtol=0, atol=0)
    torch.testing.assert_close(liar_b, bias_b, rtol=1e-14, atol=1e-14)
    # and by hand, from the formula of METHODS.md
    w = inp.weight
    torch.testing.assert_close(bias_b, inp.bias + w[inp.removed].T @ mu[inp.removed], rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(bias_w, w[inp.kept], rtol=0, atol=0)


def test_liar_without_intercept_is_the_uncentred_ridge_fit():
    """intercept=False: Q = (E[x_u x_uᵀ] + λI)⁻¹ E[x_u x_mᵀ] with λ = α · mean diag E[x_u x_uᵀ], computed here
    from the rows; W_u' = W_u + Q W_m and no bias (the layer has none)."""
    module = make_layer(10, 6, bias=False)
    x = correlated_inputs(80, 10, REMOVED, noise=0.3, seed=5)
    inp = dataclasses.replace(make_input(module, x, REMOVED, alpha=1e-2), intercept=False)
    x_u, x_m = x[:, inp.kept], x[:, inp.removed]
    gram = x_u.T @ x_u / len(x)
    lam = 1e-2 * gram.diagonal().mean()
    q = torch.linalg.solve(gram + lam * torch.eye(len(inp.kept), dtype=torch.float64), x_u.T @ x_m / len(x))
    weight, bias = RECONSTRUCTIONS.get("liar").fn(inp)
    assert bias is None
    torch.testing.assert_close(weight, inp.weight[inp.kept] + q @ inp.weight[inp.removed], rtol=1e-10, atol=1e-12)
    # the constant term matters here (removed channels = kept · A + c): the intercept fits better
    with_intercept = RECONSTRUCTIONS.get("liar").fn(dataclasses.replace(inp, intercept=True))
    assert moment_error(inp, with_intercept) < moment_error(inp, (weight, bias)) < moment_error(
        inp, RECONSTRUCTIONS.get("none").fn(inp))


def test_liar_without_intercept_recovers_exact_linear_dependence_without_constant():
    module = make_layer(10, 6, bias=False)
    x = correlated_inputs(200, 10, REMOVED, noise=0.0, seed=6)
    kept = [j for j in range(10) if j not in REMOVED]
    x[:, REMOVED] = x[:, kept] @ torch.randn(len(kept), len(REMOVED), dtype=torch.float64)  # no constant term
    inp = dataclasses.replace(make_input(module, x, REMOVED, alpha=1e-10), intercept=False)
    weight, bias = RECONSTRUCTIONS.get("liar").fn(inp)
    energy = output_energy(inp.stats.level2_in, inp.weight, inp.bias)
    assert bias is None and moment_error(inp, (weight, bias)) / energy < 1e-12


@pytest.mark.parametrize("reconstruction", RECONSTRUCTIONS.names())
def test_reconstruction_without_intercept_adds_no_bias_tensor(reconstruction, ids):
    """intercept=False: every reconstruction leaves the same tensors as plain pruning (a LLaMA has no
    biases), and bias compensation, which has nothing but the bias, is plain pruning."""
    config = PruneConfig(ratio=0.3, reconstruction=reconstruction, intercept=False)
    model, record = prune(tiny_model("llama"), ids, config, progress=False)
    plain, _ = prune(tiny_model("llama"), ids, dataclasses.replace(config, reconstruction="none"), progress=False)
    assert record.intercepts == {"attention": False, "ffn": False}
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    assert not any(name.endswith(".bias") for name in model.state_dict())
    if reconstruction in ("none", "bias"):
        torch.testing.assert_close(model_output(model, ids), model_output(plain, ids), rtol=0, atol=0)
    else:
        assert not torch.allclose(model_output(model, ids), model_output(plain, ids))


def test_liar_equals_bias_when_removed_channels_are_uncorrelated():
    """Σ_um = 0 (orthogonal centred columns): the fitted Q vanishes and LIAR is bias compensation."""
    g = torch.Generator().manual_seed(4)
    z = torch.randn(40, 10, generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    q_basis, _ = torch.linalg.qr(z)  # orthonormal, centred columns
    x = q_basis * torch.linspace(1, 3, 10, dtype=torch.float64) * 6 + torch.randn(10, generator=g, dtype=torch.float64)
    module = make_layer(10, 6)
    inp = make_input(module, x, REMOVED, alpha=1e-2)
    q, c = closed_form.liar_interpolation(inp)
    assert q.abs().max() < 1e-12
    liar_w, liar_b = RECONSTRUCTIONS.get("liar").fn(inp)
    bias_w, bias_b = RECONSTRUCTIONS.get("bias").fn(inp)
    torch.testing.assert_close(liar_w, bias_w, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(liar_b, bias_b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("alpha", [0.0, 1e-10, 1e-2, 1.0])
@pytest.mark.parametrize("has_bias", [True, False])
def test_liar_never_worse_than_bias_with_noise(seed, alpha, has_bias):
    """On the calibration rows: error(liar) ≤ error(bias) ≤ error(none), for any ridge α ≥ 0.

    (With Q_λ = (Σ_uu+λI)⁻¹Σ_um, Q_λᵀΣ_uuQ_λ − 2Q_λᵀΣ_um ≼ −Σ_mu(Σ_uu+λI)⁻¹Σ_um ≼ 0, so the output
    residual covariance of LIAR is dominated by that of bias compensation for every W_m.)
    """
    module = make_layer(12, 5, bias=has_bias, seed=seed)
    x = correlated_inputs(80, 12, [0, 3, 5, 10, 11], noise=1.0, seed=seed)
    x[:, 2] += 4.0  # non-zero means matter for the bias-vs-none comparison
    inp = make_input(module, x, [0, 3, 5, 10, 11], alpha=alpha)
    errors = {name: moment_error(inp, RECONSTRUCTIONS.get(name).fn(inp)) for name in ("none", "bias", "liar")}
    tol = 1e-9 * errors["none"]
    assert errors["liar"] <= errors["bias"] + tol
    assert errors["bias"] <= errors["none"] + tol
    assert errors["liar"] < errors["bias"]  # strictly: the kept channels carry information here
    for name in errors:  # the moment formula agrees with the rows
        weight, bias = RECONSTRUCTIONS.get(name).fn(inp)
        assert errors[name] == pytest.approx(layer_rows_error(inp, x, weight, bias), rel=1e-8, abs=1e-10)


def test_liar_without_removed_channels_is_identity():
    module = make_layer(6, 4)
    x = correlated_inputs(20, 6, [2], noise=0.1, seed=0)
    inp = make_input(module, x, [], alpha=1e-2)
    weight, bias = RECONSTRUCTIONS.get("liar").fn(inp)
    torch.testing.assert_close(weight, inp.weight)
    torch.testing.assert_close(bias, inp.bias)


# --------------------------------------------------------------------------------------------------
# (b) the pipeline on tiny models


def frozen(inp: ReconstructionInput) -> ReconstructionInput:
    """A copy of a reconstruction input whose level-2 layer is a private copy (surgery replaces the real one)."""
    holder = nn.Module()
    holder.level2 = copy.deepcopy(inp.module.level2.module)
    module = dataclasses.replace(inp.module, level2=Projection(holder, "level2"))
    return dataclasses.replace(inp, module=module)


def record_reconstruction_inputs(monkeypatch, name: str) -> list[ReconstructionInput]:
    """Wrap the registered reconstruction ``name`` so every call's input is kept (frozen)."""
    seen: list[ReconstructionInput] = []
    original = RECONSTRUCTIONS.get(name)

    def spy(inp: ReconstructionInput):
        seen.append(frozen(inp))
        return original.fn(inp)

    monkeypatch.setitem(RECONSTRUCTIONS._entries, name, dataclasses.replace(original, fn=spy))
    return seen


def relative_errors(inp: ReconstructionInput) -> dict[str, float]:
    energy = max(output_energy(inp.stats.level2_in, inp.weight, inp.bias), 1e-30)
    return {name: moment_error(inp, RECONSTRUCTIONS.get(name).fn(inp)) / energy for name in ("none", "bias", "liar")}


PIPELINE_FAMILIES = ["llama", "bert", "gpt2", "opt"]
MODES = ["none", "bias", "liar"]


@pytest.fixture(scope="module")
def ids():
    return calibration_batch(num_samples=16, seq_len=16)


@pytest.mark.parametrize("criterion", ["flap", "magnitude"])
@pytest.mark.parametrize("family", PIPELINE_FAMILIES)
def test_pipeline_errors_liar_le_bias_le_none(family, criterion, ids, monkeypatch, tmp_path):
    # magnitude + none reads no statistics and would skip calibration: measure its errors all the same
    monkeypatch.setattr(Plan, "data_free", property(lambda plan: False))
    runs = {}
    for mode in MODES:
        spied = record_reconstruction_inputs(monkeypatch, mode)
        model, report = prune(tiny_model(family), ids, PruneConfig(ratio=0.3, criterion=criterion,
                                                                 reconstruction=mode), progress=False)
        runs[mode] = (model, report, list(spied))
        layers = report.layers
        assert layers, "nothing was pruned"
        assert len(spied) == len(layers)
        for layer, inp in zip(layers, spied):
            # within one run the two errors share the same calibration inputs
            assert layer.error <= layer.error_none * (1 + 1e-9) + 1e-12, (mode, layer.block, layer.kind)
            if mode == "none":
                assert layer.error == pytest.approx(layer.error_none, rel=1e-12, abs=1e-15)
            # independent recomputation of every layer from the same statistics: liar ≤ bias ≤ none
            recomputed = relative_errors(inp)
            assert recomputed["none"] == pytest.approx(layer.error_none, rel=1e-6, abs=1e-12)
            assert recomputed[mode] == pytest.approx(layer.error, rel=1e-6, abs=1e-12)
            assert recomputed["liar"] <= recomputed["bias"] * (1 + 1e-9) + 1e-12
            assert recomputed["bias"] <= recomputed["none"] * (1 + 1e-9) + 1e-12
            assert inp.kept.tolist() == (
                torch.cat([torch.arange(u * inp.module.unit_width, (u + 1) * inp.module.unit_width)
                           for u in layer.kept_units]).tolist())

    # the first pruned layer sees identical inputs in every run, and the criterion does not depend on
    # the reconstruction: same units, same plain-pruning error, and liar ≤ bias ≤ none across runs
    first = {mode: runs[mode][1].layers[0] for mode in MODES}
    assert len({(f.block, f.kind) for f in first.values()}) == 1
    assert first["none"].kept_units == first["bias"].kept_units == first["liar"].kept_units
    assert first["none"].error_none == pytest.approx(first["liar"].error_none, rel=1e-9)
    assert first["liar"].error <= first["bias"].error * (1 + 1e-9) + 1e-12
    assert first["bias"].error <= first["none"].error * (1 + 1e-9) + 1e-12
    # an error measure that is not trivially zero
    assert first["none"].error > 1e-4

    # the LIAR-pruned model reloads with the same outputs
    model, report, _ = runs["liar"]
    expected = model_output(model, ids[:4])
    out = save_pruned(model, None, tmp_path / "liar", report)
    reloaded = load(out)
    torch.testing.assert_close(model_output(reloaded, ids[:4]), expected, atol=1e-5, rtol=0)


def test_first_layer_errors_recomputed_independently(ids):
    """Recompute block 0's attention errors from scratch (own calibration pass) and match the report."""
    reports = {}
    for mode in MODES:
        _, reports[mode] = prune(tiny_model("llama"), ids, PruneConfig(ratio=0.3, criterion="flap",
                                                                       reconstruction=mode, allocation="uniform"),
                                 progress=False)
    model = tiny_model("llama")
    adapter = get_adapter(model)
    acts = capture_block_inputs(model, adapter, ids, 8, torch.device("cpu"))
    module = adapter.depth2_modules(0)[0]
    stats = collect_module_stats(module, frozenset(), entered_path(adapter, acts, 0))
    layer = reports["liar"].layers[0]
    assert (layer.block, layer.kind) == (0, "attention")
    kept = module.unit_channels(layer.kept_units)
    mask = torch.ones(module.num_units * module.unit_width, dtype=torch.bool)
    mask[kept] = False
    inp = ReconstructionInput(module, kept, torch.nonzero(mask).reshape(-1), stats, 1e-2)
    errors = relative_errors(inp)
    for mode in MODES:
        assert errors[mode] == pytest.approx(reports[mode].layers[0].error, rel=1e-6)
    assert errors["liar"] < errors["bias"] <= errors["none"]
    # flap kept the highest-scored heads of every KV group (GQA, gqa_mode="query")
    scores = unit_scores(CRITERIA.get("flap").score(module, stats, torch.Generator()))
    rep = module.heads_per_kv
    assert rep == 2 and len(layer.kept_units) < module.num_units
    for group in range(module.num_kv_heads):
        heads = range(group * rep, (group + 1) * rep)
        kept_here = [h for h in heads if h in layer.kept_units]
        removed_here = [h for h in heads if h not in layer.kept_units]
        assert len(kept_here) == len(layer.kept_units) // module.num_kv_heads
        assert all(scores[r] <= min(scores[k] for k in kept_here) for r in removed_here)


# --------------------------------------------------------------------------------------------------
# (c) ill-conditioned statistics


def test_solve_ridge_alpha_zero_singular_retries_and_warns():
    gram = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)  # exactly singular: Cholesky fails
    rhs = torch.tensor([[1.0], [1.0]], dtype=torch.float64)
    with pytest.warns(IllConditionedWarning, match="block 3 ffn"):
        x = solve_ridge(gram, rhs, 0.0, where="block 3 ffn")
    assert torch.isfinite(x).all()
    torch.testing.assert_close(gram @ x, rhs, atol=1e-6, rtol=0)  # consistent system: still solved


def test_solve_ridge_nearly_singular_accepted_by_cholesky_retries_and_warns():
    """Two channels equal up to 1e-7: Cholesky succeeds at α = 0, but the exact solve is huge and unstable."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(200, 3, generator=g, dtype=torch.float64)
    x[:, 2] = x[:, 1] + 1e-7 * torch.randn(200, generator=g, dtype=torch.float64)
    gram, rhs = x.T @ x, x.T @ torch.randn(200, 1, generator=g, dtype=torch.float64)
    assert int(torch.linalg.cholesky_ex(gram)[1]) == 0  # the factorisation alone would not notice
    with pytest.warns(IllConditionedWarning, match="block 7 attention"):
        solution = solve_ridge(gram, rhs, 0.0, where="block 7 attention")
    assert solution.abs().max() < 100  # exact solve: ±3.9e5 on the twins


def test_solve_ridge_all_zero_gram_retries():
    with pytest.warns(IllConditionedWarning, match="dead layer"):
        x = solve_ridge(torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.float64), 0.0,
                        where="dead layer")
    assert torch.isfinite(x).all() and x.abs().max() == 0


def test_solve_ridge_well_conditioned_does_not_warn():
    a = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    b = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IllConditionedWarning)
        x = solve_ridge(a, b, 0.0, where="fine")
    torch.testing.assert_close(a @ x, b)


def test_solve_ridge_nan_raises_naming_layer():
    a = torch.tensor([[float("nan"), 0.0], [0.0, 1.0]], dtype=torch.float64)
    with pytest.raises(FloatingPointError, match="broken layer"):
        solve_ridge(a, torch.ones(2, 1, dtype=torch.float64), 1e-2, where="broken layer")


def _duplicated(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[:, 3] = x[:, 2]  # kept channels 2 and 3 are identical
    x[:, 6] = x[:, 2]
    return x


def _dead(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[:, [0, 5]] = 0.0  # kept channels that never fire
    return x


@pytest.mark.parametrize("degenerate", [_duplicated, _dead], ids=["duplicated", "dead"])
def test_synthetic_degenerate_kept_channels(degenerate):
    module = make_layer(10, 6, name_block=5)
    x = degenerate(correlated_inputs(60, 10, REMOVED, noise=0.2, seed=5))
    # default relative ridge (α = 1e-2): solvable at once, no warning, finite, still better than bias
    inp = make_input(module, x, REMOVED, alpha=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IllConditionedWarning)
        weight, bias = RECONSTRUCTIONS.get("liar").fn(inp)
    assert torch.isfinite(weight).all() and torch.isfinite(bias).all()
    assert moment_error(inp, (weight, bias)) <= moment_error(inp, RECONSTRUCTIONS.get("bias").fn(inp))
    # no ridge at all: Σ_uu is singular. A dead (zero-variance) channel puts an exact 0 on the diagonal,
    # so Cholesky fails; for duplicated channels the last pivot is 0 up to rounding, which LAPACK may
    # accept but the pivot-spread check rejects. Either way the retry rule must fire.
    inp0 = make_input(module, x, REMOVED, alpha=0.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        weight0, bias0 = RECONSTRUCTIONS.get("liar").fn(inp0)
    messages = [str(w.message) for w in caught if issubclass(w.category, IllConditionedWarning)]
    assert all("block 5 ffn" in m for m in messages), messages
    assert messages, "a zero (dead) or vanishing (duplicated) pivot must trigger the ridge retry"
    assert torch.isfinite(weight0).all() and torch.isfinite(bias0).all()
    if messages:  # solved with the retried ridge: as good as the theory says
        errors = {name: moment_error(inp0, RECONSTRUCTIONS.get(name).fn(inp0)) for name in ("bias", "none")}
        assert moment_error(inp0, (weight0, bias0)) <= errors["bias"] * (1 + 1e-6) <= errors["none"] * (1 + 1e-6)


def test_synthetic_fewer_rows_than_channels():
    """5 rows, 12 channels: Σ_uu has rank ≤ 4; the relative ridge keeps the solve finite without a retry."""
    module = make_layer(12, 4)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(5, 12, generator=g, dtype=torch.float64)
    inp = make_input(module, x, [2, 9, 11], alpha=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IllConditionedWarning)
        weight, bias = RECONSTRUCTIONS.get("liar").fn(inp)
    assert torch.isfinite(weight).all() and torch.isfinite(bias).all()
    err = {name: moment_error(inp, RECONSTRUCTIONS.get(name).fn(inp)) for name in ("none", "bias")}
    assert moment_error(inp, (weight, bias)) <= err["bias"] <= err["none"] * (1 + 1e-9)


def _llama_with_dead_neurons():
    model = tiny_model("llama")
    mlp = model.model.layers[0].mlp
    with torch.no_grad():  # 30 of 48 neurons never fire: more than the ~14 that go, so dead ones are kept
        mlp.gate_proj.weight[:30] = 0
        mlp.up_proj.weight[:30] = 0
    return model


def _llama_with_duplicated_neurons():
    model = tiny_model("llama")
    mlp = model.model.layers[0].mlp
    with torch.no_grad():
        mlp.gate_proj.weight[1::2] = mlp.gate_proj.weight[0::2]
        mlp.up_proj.weight[1::2] = mlp.up_proj.weight[0::2]
    return model


def _assert_finite_model(model, report, ids, ordered: bool = True):
    assert torch.isfinite(model_output(model, ids)).all()
    for layer in report.layers:
        assert layer.error == layer.error and abs(layer.error) < float("inf")
        if ordered:
            assert layer.error <= layer.error_none * (1 + 1e-6) + 1e-9
    for p in model.parameters():
        assert torch.isfinite(p).all()


@pytest.mark.parametrize("build, calib", [
    (_llama_with_dead_neurons, (16, 16)),
    (_llama_with_duplicated_neurons, (16, 16)),
    (lambda: tiny_model("llama"), (2, 8)),  # 16 calibration tokens < 48 FFN channels
], ids=["dead", "duplicated", "few-tokens"])
def test_pipeline_default_ridge_handles_degenerate_statistics_silently(build, calib):
    ids = calibration_batch(*calib)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IllConditionedWarning)
        model, report = prune(build(), ids, PruneConfig(ratio=0.3, criterion="flap", reconstruction="liar"),
                              progress=False)
    _assert_finite_model(model, report, ids)


def test_pipeline_alpha_zero_dead_neurons_warns_with_layer_name():
    """Kept dead neurons make Σ_uu exactly singular: with α = 0 the retry fires, names the layer, stays finite."""
    ids = calibration_batch()
    with pytest.warns(IllConditionedWarning) as caught:
        model, report = prune(_llama_with_dead_neurons(), ids,
                              PruneConfig(ratio=0.3, criterion="flap", reconstruction="liar", alpha=0.0),
                              progress=False)
    messages = [str(w.message) for w in caught if issubclass(w.category, IllConditionedWarning)]
    assert any("block 0 ffn" in m for m in messages), messages
    assert all(m.startswith("block ") for m in messages), messages
    _assert_finite_model(model, report, ids)


@pytest.mark.parametrize("build, calib", [
    (_llama_with_duplicated_neurons, (16, 16)),
    (lambda: tiny_model("llama"), (2, 8)),
], ids=["duplicated", "few-tokens"])
def test_pipeline_alpha_zero_singular_statistics_stay_finite(build, calib):
    """Without a ridge, exactly or numerically singular Σ_uu: finite results; any retry names its layer."""
    ids = calibration_batch(*calib)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, report = prune(build(), ids, PruneConfig(ratio=0.3, criterion="flap", reconstruction="liar",
                                                        alpha=0.0), progress=False)
    messages = [str(w.message) for w in caught if issubclass(w.category, IllConditionedWarning)]
    assert all(m.startswith("block ") and (" ffn" in m or " attention" in m) for m in messages), messages
    # a numerically singular Σ_uu that Cholesky happens to accept gives no accuracy guarantee: finiteness only
    _assert_finite_model(model, report, ids, ordered=False)


# --- LIAR on the dense model's statistics ------------------------------------------------------


def test_liar_on_dense_statistics_is_liar_where_the_paths_agree_and_differs_after_pruning() -> None:
    """Block 0's attention sees the dense input on both paths, so its fit is LIAR's; once a module was
    pruned, the modules after it see drifted inputs on the pruned path and the fits part."""
    ids = calibration_batch(8, 16)
    outputs = {}
    settings = {"first attention": {"targets": "attention", "keep_last": 2, "ratio": 0.04},
                "all": {"targets": "both", "keep_last": 0, "ratio": 0.15}}
    for reconstruction in ("liar", "liar-dense-stats"):
        for name, setting in settings.items():
            config = PruneConfig(reconstruction=reconstruction, **setting)
            model, record = prune(tiny_model("llama"), ids, config, progress=False)
            outputs[reconstruction, name] = model_output(model, ids)
            assert all(layer.error < layer.error_none for layer in record.layers)
    torch.testing.assert_close(outputs["liar", "first attention"], outputs["liar-dense-stats", "first attention"],
                               rtol=1e-5, atol=1e-5)
    assert not torch.allclose(outputs["liar", "all"], outputs["liar-dense-stats", "all"], rtol=1e-3, atol=1e-4)
