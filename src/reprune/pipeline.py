"""The pruning pipeline: calibrate block by block, score, allocate, recover, reconstruct, shrink.

Block ℓ is calibrated on the outputs of the already pruned and reconstructed blocks 0..ℓ-1 (the pruned
path). Methods that need the dense model's activations propagate the dense path beside it, one block
at a time, from a copy of the block taken before it is changed. This module only orchestrates: each
step lives in the module named after it (see ARCHITECTURE.md).
"""

from __future__ import annotations

import copy
import platform
import time
import warnings
from dataclasses import dataclass, replace

import torch
import transformers
from torch import nn
from tqdm.auto import tqdm

from reprune.adapters import Depth2Module, ModelAdapter, get_adapter
from reprune.allocation import (allocate, count_parameters, legal_count, module_budget, prunable_parameters,
                                select_units)
from reprune.calibration import Activations, CalibrationPath, RowSet, capture_block_inputs, collect_expert_stats
from reprune.config import Plan, PruneConfig
from reprune.criteria import unit_scores
from reprune.data import Calibration, calibration_source, resolve_calibration, resolve_calibration_sets
from reprune.heldout import HeldOutErrors, heldout_errors, heldout_recovery_error
from reprune.preflight import check_calibration_ids, check_config, check_finite_weights
from reprune.reconstruction import ReconstructionInput, relative_errors
from reprune.record import CalibrationInfo, LayerRecord, ParameterCounts, RunRecord, Timings
from reprune.recovery import RecoveryErrors, RecoveryInput
from reprune.scoring import Scores, block_similarities, check_scores, score_dense_model
from reprune.stats import ModuleStats
from reprune.stock import complete_level2_biases, resolve_intercepts
from reprune.surgery import shrink_experts, shrink_module


@dataclass
class Rows:
    """The row sets a run carries through the model: the scoring rows (None: data-free), the recovery's
    own rows (None: it fits on the scoring rows) and the held-out rows no fit sees (None: none)."""

    calibration: RowSet | None
    recovery: RowSet | None = None
    heldout: RowSet | None = None

    @property
    def sets(self) -> list[RowSet]:
        return [rows for rows in (self.calibration, self.recovery, self.heldout) if rows is not None]

    @property
    def for_recovery(self) -> RowSet | None:
        return self.recovery or self.calibration


@torch.no_grad()
def prune(model: nn.Module, calibration: Calibration = "wiki-embedded", config: PruneConfig | None = None, *,
          tokenizer=None, text_field: str = "text", progress: bool = True,
          scores: Scores | None = None, heldout: Calibration | None = None) -> tuple[nn.Module, RunRecord]:
    """Prune ``model`` in place and return it with the run's record.

    ``calibration``: ready (N, L) token ids, or text that ``tokenizer`` turns into ``config.num_samples`` ×
    ``config.seq_len`` samples: ``'wiki-embedded'``, ``'self-generated'``, ``'random-tokens'``, a file
    (``text_field`` for JSON rows) or a list of texts. A recovery's rows (``config.recovery_samples``) and the
    held-out rows (``config.heldout_samples``) are drawn from the same text, disjoint from the scoring rows;
    ``heldout`` gives the held-out rows instead (ids, or text of its own). ``scores``: global allocation's
    scores from :func:`global_scores` on the same dense model, reused instead of a scoring pass.
    """
    adapter = get_adapter(model)
    plan = resolve_intercepts((config or PruneConfig()).resolve(len(adapter.blocks())), model)
    config = plan.config
    check_config(config)
    if scores is not None:
        check_scores(adapter, scores, plan)
    if config.score_on == "dense":
        check_dense_scoring(adapter, plan)
    check_finite_weights(model)
    ids = calibration_rows(calibration, heldout, tokenizer, model, plan, text_field)
    for set_ids in ids.values():
        check_calibration_ids(set_ids, model.get_input_embeddings().num_embeddings)
    device = default_device(config.device)
    model.eval()
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(config.seed)
    started = time.perf_counter()
    total_before, prunable_before = count_parameters(model), prunable_parameters(adapter)

    rows = Rows(None) if plan.data_free else carried_rows(model, adapter, ids, plan, device)
    acts = None if rows.calibration is None else rows.calibration.pruned.acts
    seconds_capture = time.perf_counter() - started
    if scores is None and (config.allocation == "global" or config.score_on == "dense") and config.ratio > 0:
        scores = score_dense_model(adapter, acts, plan, generator, device, progress)
    similarities = None
    if config.allocation == "influence" and config.ratio > 0:  # influence makes a run read data: acts exist
        similarities = block_similarities(adapter, acts, {block for block, _ in plan.eligible}, device, progress)
    budgets = [module_budget(m, config.gqa_mode, config.multiple_of) for i in range(plan.num_blocks) for m in adapter.depth2_modules(i)]
    counts = allocate(budgets, config.ratio, config.allocation, plan.eligible, scores,
                      standardise=not plan.comparable_scores, similarities=similarities)

    layers: list[LayerRecord] = []
    selection_scores = scores if config.score_on == "dense" else None
    for index in tqdm(range(plan.num_blocks), desc="pruning blocks", disable=not progress):
        layers += prune_block(adapter, plan, index, counts, rows, generator, device, selection_scores)
    complete_level2_biases(model, plan)

    record = RunRecord(
        config=config, model_type=model.config.model_type, architecture=type(model).__name__,
        parameters=ParameterCounts(total_before, count_parameters(model), prunable_before,
                                   prunable_parameters(adapter)),
        layers=layers, shapes=adapter.layer_shapes(),
        calibration=CalibrationInfo(int(ids["calibration"].shape[0]), int(ids["calibration"].shape[1]), config.seed,
                                    not plan.data_free, calibration_source(calibration),
                                    *(int(ids[name].shape[0]) if name in ids else 0 for name in ("recovery", "heldout"))),
        timings=Timings(time.perf_counter() - started, seconds_capture, sum(r.seconds_stats for r in layers),
                        sum(r.seconds_solve for r in layers)),
        versions={"torch": torch.__version__, "transformers": transformers.__version__,
                  "python": platform.python_version()},
        intercepts=dict(plan.intercepts),
        block_similarities=similarities or {},
    )
    return model, record


def calibration_rows(calibration: Calibration, heldout: Calibration | None, tokenizer, model: nn.Module,
                     plan: Plan, text_field: str) -> dict[str, torch.Tensor]:
    """Token ids of each row set the run uses: ``calibration`` always, ``recovery`` and ``heldout`` where
    asked for and obtainable (ready calibration ids hold no spare rows: a recovery then fits on them, with a
    warning, and without ``heldout`` no rows are held out)."""
    config = plan.config
    wanted = {"calibration": config.num_samples}
    if not plan.data_free:
        if plan.recovery.needs and config.recovery_samples:
            wanted["recovery"] = config.recovery_samples
        if config.heldout_samples and heldout is None:
            wanted["heldout"] = config.heldout_samples
    drawn = resolve_calibration_sets(calibration, tokenizer, model, list(wanted.values()), config.seq_len,
                                     config.seed, text_field, config.device)
    ids = {name: rows for name, rows in zip(wanted, drawn) if rows is not None}
    if "recovery" in wanted and "recovery" not in ids:
        warnings.warn(f"recovery {config.recovery!r} fits on the {ids['calibration'].shape[0]} calibration rows: ready "
                      "token ids hold no separate recovery rows (pass text, or set recovery_samples=0 to "
                      "silence this)", stacklevel=3)
    if heldout is not None and not plan.data_free and config.heldout_samples:
        ids["heldout"] = resolve_calibration(heldout, tokenizer, model, config.heldout_samples, config.seq_len,
                                             config.seed + 1, text_field, config.device)
    return ids


def carried_rows(model: nn.Module, adapter: ModelAdapter, ids: dict[str, torch.Tensor], plan: Plan,
                 device: torch.device) -> Rows:
    """Block 0's inputs of every row set in ``ids``, each set with a dense path where a method reads the dense
    model on it: the scoring rows for two-path criteria and reconstructions (and a recovery without rows of
    its own), the recovery and held-out rows for a two-path recovery."""
    def row_set(name: str, two_path: bool) -> RowSet:
        acts = capture_inputs(model, adapter, ids[name], plan, device)
        shortcuts = plan.config.shortcuts
        return RowSet(CalibrationPath(adapter, acts, shortcuts),
                      CalibrationPath(adapter, acts.clone(), shortcuts) if two_path else None)

    recovery_two_path = plan.recovery.two_path
    return Rows(row_set("calibration", plan.scoring_two_path or (recovery_two_path and "recovery" not in ids)),
                *(row_set(name, recovery_two_path) if name in ids else None for name in ("recovery", "heldout")))


def check_dense_scoring(adapter: ModelAdapter, plan: Plan) -> None:
    """Dense-model scores choose units module by module; a mixture's experts each choose their own."""
    for index, kind in sorted(plan.eligible):
        module = next(m for m in adapter.depth2_modules(index) if m.kind == kind)
        if module.moe:
            raise NotImplementedError(f"{module.name}: score_on='dense' scores a mixture as one module, but its "
                                      "experts each choose their own neurons; use score_on='pruned'")


def prune_block(adapter: ModelAdapter, plan: Plan, index: int, counts: dict[tuple[int, str], int], rows: Rows,
                generator: torch.Generator, device: torch.device, scores: Scores | None = None) -> list[LayerRecord]:
    """Prune block ``index``'s modules in forward order and move every row set past the block.
    ``scores``: the dense model's, which choose the units (``score_on='dense'``); None: score on the path.

    Only this block is on the compute device meanwhile; the dense paths run a copy taken before any change.
    """
    block = adapter.blocks()[index]
    home = next(block.parameters()).device
    block.to(device)
    dense_block = copy.deepcopy(block) if any(rows_.dense is not None for rows_ in rows.sets) else None
    for rows_ in rows.sets:
        rows_.pruned.enter(block, index)
        if rows_.dense is not None:
            rows_.dense.enter(dense_block, index)
    paths = [path for rows_ in rows.sets for path in rows_.paths]
    layers = []
    for position, kind in enumerate(("attention", "ffn")):
        n_remove = counts[(index, kind)]
        if n_remove == 0 and not ((index, kind) in plan.eligible and plan.always_processed(kind)):
            continue
        module = adapter.modules_of(block, index)[position]  # read afresh: surgery replaced projections
        if module.moe:  # no residual tail: the block runs again past its mixture
            layers += prune_experts(plan, module, n_remove, rows, generator)
            continue
        for path in paths:
            path.open_tail(kind)
        layer = prune_module(adapter, plan, module, n_remove, rows, generator,
                             None if scores is None else scores.get((index, kind)))
        layers.append(layer)
        for rows_ in rows.sets:
            rows_.pruned.close_tail(kind, module.unit_channels(layer.kept_units))
            if rows_.dense is not None:
                rows_.dense.close_tail(kind, None)
    for path in paths:
        path.leave()
    block.to(home)
    return layers


def prune_module(adapter: ModelAdapter, plan: Plan, module: Depth2Module, n_remove: int, rows: Rows,
                 generator: torch.Generator, scores: torch.Tensor | None = None) -> LayerRecord:
    """Calibrate, recover, score, select, reconstruct and shrink one module (no scoring rows: data-free),
    measuring its errors on the held-out rows on the way."""
    scoring, recovery_rows, heldout = rows.calibration, rows.for_recovery, rows.heldout
    dense_module = scoring.dense_module(module.kind) if scoring is not None else None
    recovery_errors: RecoveryErrors | None = None
    heldout_before: float | None = None
    tick = time.perf_counter()
    if scoring is None:
        stats = ModuleStats()
    else:
        if heldout is not None and heldout.dense is not None:
            heldout_before = heldout_recovery_error(module, heldout)
        recovery_errors = plan.recovery.fn(RecoveryInput(
            module, recovery_rows.dense_module(module.kind), plan.config.recovery_alpha,
            lambda needs: recovery_rows.stats(module, needs)))
        stats = scoring.stats(module, plan.needs(module.kind))
    seconds_stats = time.perf_counter() - tick
    criterion = plan.criteria[module.kind]
    if criterion.count is not None:  # e.g. head-similarity's threshold τ replaces the allocated count
        wanted = criterion.count(module, stats, plan.config.criterion_options)
        if wanted is not None:
            n_remove = legal_count(module, wanted, plan.config.gqa_mode, plan.config.multiple_of)
    fit = select_and_reconstruct(plan, module, stats, n_remove, dense_module, generator, scores)
    measured = None if heldout is None else heldout_errors(module, heldout, fit.inputs, fit.weight, fit.bias)
    shrink_module(adapter, module, fit.kept_units, fit.weight, fit.bias)
    return fit.record(module, seconds_stats, recovery=recovery_errors, heldout=measured,
                      heldout_before_recovery=heldout_before)


@dataclass
class Fit:
    """One module's kept units, its new level-2 weight (kept channels, out) and bias, and their errors."""

    kept_units: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    error_none: float | None
    error: float | None
    seconds_solve: float
    inputs: ReconstructionInput  # what the reconstruction saw (its statistics are the scoring rows')

    def record(self, module: Depth2Module, seconds_stats: float, expert: int | None = None,
               recovery: RecoveryErrors | None = None, heldout: HeldOutErrors | None = None,
               heldout_before_recovery: float | None = None) -> LayerRecord:
        return LayerRecord(
            module.block, module.kind, module.num_units, len(self.kept_units), self.kept_units.tolist(),
            self.error_none, self.error, seconds_stats, self.seconds_solve, expert,
            heldout_error_none=heldout.error_none if heldout else None,
            heldout_error=heldout.error if heldout else None,
            recovery_error_before=recovery.before if recovery else None,
            recovery_error_after=recovery.after if recovery else None,
            heldout_recovery_error_before=heldout_before_recovery,
            heldout_recovery_error_after=heldout.recovery_error if heldout else None)


def select_and_reconstruct(plan: Plan, module: Depth2Module, stats: ModuleStats, n_remove: int,
                           dense_module: Depth2Module | None, generator: torch.Generator,
                           scores: torch.Tensor | None = None) -> Fit:
    """Score the module's units (unless ``scores`` are given), keep all but the ``n_remove`` lowest and
    reconstruct its level 2 (no surgery)."""
    if scores is None:
        scores = plan.criteria[module.kind].score(module, stats, generator)
    scores = unit_scores(scores)
    kept_units = select_units(module, scores, n_remove, plan.config.gqa_mode)
    kept = module.unit_channels(kept_units)
    removed = torch.ones(module.num_units * module.unit_width, dtype=torch.bool)
    removed[kept] = False

    tick = time.perf_counter()
    inp = ReconstructionInput(module, kept, torch.nonzero(removed).reshape(-1), stats, plan.config.alpha, dense_module,
                              plan.fits_intercept(module))
    new_weight, new_bias = plan.reconstruction.fn(inp)
    if not torch.isfinite(new_weight).all() or (new_bias is not None and not torch.isfinite(new_bias).all()):
        raise FloatingPointError(f"{module.name}: reconstruction produced NaN/Inf weights")
    error_none, error = relative_errors(inp, new_weight, new_bias)
    return Fit(kept_units, new_weight, new_bias, error_none, error, time.perf_counter() - tick, inp)


def prune_experts(plan: Plan, module: Depth2Module, n_remove: int, rows: Rows,
                  generator: torch.Generator) -> list[LayerRecord]:
    """A mixture-of-experts FFN: each expert is recovered, scored and reconstructed on the tokens routed to
    it, weighted by their gate values; every expert loses ``n_remove`` neurons of its own (one tensor holds
    them all). One record per expert; the statistics' time is shared out evenly. (Held-out errors are not
    measured per expert: too few held-out tokens reach each.)"""
    if plan.criteria[module.kind].count is not None:
        raise NotImplementedError(f"{module.name}: criterion {plan.criteria[module.kind].name!r} chooses its own "
                                  "count, which a mixture's experts cannot (they share one width); choose another")
    scoring, recovery_rows = rows.calibration, rows.for_recovery
    experts = module.moe.experts
    dense_experts = (scoring.dense_module(module.kind).moe.experts if scoring is not None and scoring.dense is not None
                     else [None] * len(experts))
    tick = time.perf_counter()
    recovered: list[RecoveryErrors | None] = [None] * len(experts)
    if scoring is None:
        stats = [ModuleStats() for _ in experts]
    else:
        recovery_dense = recovery_rows.dense_module(module.kind)
        for index, expert in enumerate(experts):
            def restat(needs: frozenset[str], index: int = index) -> ModuleStats:
                return collect_expert_stats(module, needs, recovery_rows.pruned, recovery_rows.dense, [index])[0]

            dense_expert = None if recovery_dense is None else recovery_dense.moe.experts[index]
            recovered[index] = plan.recovery.fn(RecoveryInput(expert, dense_expert, plan.config.recovery_alpha, restat))
        stats = collect_expert_stats(module, plan.needs(module.kind), scoring.pruned, scoring.dense)
    seconds_stats = (time.perf_counter() - tick) / len(experts)
    fits = [select_and_reconstruct(plan, expert, expert_stats, n_remove, dense_expert, generator)
            for expert, expert_stats, dense_expert in zip(experts, stats, dense_experts)]
    shrink_experts(module, [fit.kept_units for fit in fits], [fit.weight for fit in fits], [fit.bias for fit in fits])
    return [fit.record(expert, seconds_stats, index, recovery=recovered[index])
            for index, (expert, fit) in enumerate(zip(experts, fits))]


@torch.no_grad()
def global_scores(model: nn.Module, calibration_ids: torch.Tensor, config: PruneConfig) -> Scores:
    """The dense model's scores that global allocation ranks, keyed (block, kind), to be reused.

    ``prune(copy, ids, config_at_any_ratio, scores=...)`` on copies of the same dense model then skips its
    own scoring pass (one forward over the calibration data), e.g. for a sweep over ratios or
    reconstructions. The weights are not changed (as in prune, the non-block modules stay on the compute
    device). A criterion drawing random numbers continues from a generator this pass did not advance, so
    its runs differ from ones that score themselves.
    """
    adapter = get_adapter(model)
    plan = replace(config, allocation="global").resolve(len(adapter.blocks()))
    check_config(plan.config)
    check_calibration_ids(calibration_ids, model.get_input_embeddings().num_embeddings)
    check_finite_weights(model)
    device = default_device(plan.config.device)
    model.eval()
    acts = capture_inputs(model, adapter, calibration_ids, plan, device) if plan.criteria_read_data else None
    generator = torch.Generator().manual_seed(plan.config.seed)
    return score_dense_model(adapter, acts, plan, generator, device)


def capture_inputs(model: nn.Module, adapter: ModelAdapter, calibration_ids: torch.Tensor, plan: Plan,
                   device: torch.device) -> Activations:
    """Block 0's inputs; eager attention (explicit masks) when attention probabilities will be read."""
    return capture_block_inputs(model, adapter, calibration_ids, plan.config.batch_size, device,
                                attn_implementation="eager" if plan.eager_attention else None)


def default_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

