"""The pruning pipeline: calibrate block by block, score, allocate, recover, reconstruct, shrink.

Block ℓ is calibrated on the outputs of the already pruned and reconstructed blocks 0..ℓ-1 (the pruned
path). Methods that need the dense model's activations propagate the dense path beside it, one block
at a time, from a copy of the block taken before it is changed.
"""

from __future__ import annotations

import copy
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import torch
import transformers
from torch import nn
from tqdm.auto import tqdm

from reprune.adapters import Depth2Module, ModelAdapter, Projection, get_adapter
from reprune.allocation import (
    GqaMode,
    allocate,
    check_ratio,
    legal_count,
    module_budget,
    projection_params,
    select_units,
)
from reprune.calibration import (
    Activations,
    AfterAttention,
    ResidualTail,
    capture_block_inputs,
    collect_block_stats,
    collect_module_stats,
    run_block,
)
from reprune.criteria import get_criterion
from reprune.reconstruction import ReconstructionInput, get_reconstruction, output_energy, output_error
from reprune.reconstruction.closed_form import ridge_to_dense
from reprune.stats import ModuleStats
from reprune.surgery import shrink_module

Targets = Literal["both", "attention", "ffn"]


@dataclass
class PruneConfig:
    """Every setting of a pruning run; stored verbatim in the report and the checkpoint."""

    ratio: float = 0.3
    criterion: str = "flap"
    attention_criterion: str | None = None  # overrides ``criterion`` for heads
    ffn_criterion: str | None = None  # overrides ``criterion`` for neurons
    reconstruction: str = "bias"
    recovery: Literal["none", "goa"] = "none"
    allocation: Literal["uniform", "global"] = "uniform"
    targets: Targets = "both"
    gqa_mode: GqaMode = "query"
    keep_first: int = 0
    keep_last: int = 0
    alpha: float = 1e-2  # relative ridge of LIAR / dense-target
    recovery_alpha: float = 1e-4  # relative ridge of GOA's greedy recovery
    num_samples: int = 128
    seq_len: int = 128
    batch_size: int = 8
    seed: int = 0
    device: str | None = None
    criterion_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"tau": 0.1} for head-similarity
    clip_keep: bool = False  # presets: shrink keep_first/keep_last so that a small model keeps a block to prune

    def criterion_for(self, kind: str) -> str:
        override = self.attention_criterion if kind == "attention" else self.ffn_criterion
        return override or self.criterion

    @property
    def kinds(self) -> tuple[str, ...]:
        """The module kinds this run prunes."""
        return ("attention", "ffn") if self.targets == "both" else (self.targets,)

    def fitted(self, num_blocks: int) -> PruneConfig:
        """This config for a model of ``num_blocks`` blocks: with ``clip_keep``, keep_first/keep_last are
        reduced (keep_first first) until at least one block is pruned."""
        if not self.clip_keep:
            return self
        keep_last = min(self.keep_last, num_blocks - 1)
        keep_first = min(self.keep_first, num_blocks - 1 - keep_last)
        return replace(self, keep_first=keep_first, keep_last=keep_last)

    def validate(self, num_blocks: int) -> None:
        check_ratio(self.ratio)
        if self.keep_first < 0 or self.keep_last < 0 or self.keep_first + self.keep_last >= num_blocks:
            raise ValueError(
                f"keep_first={self.keep_first} and keep_last={self.keep_last} leave no block to prune "
                f"out of {num_blocks}"
            )
        if self.targets not in ("both", "attention", "ffn"):
            raise ValueError(f"targets must be 'both', 'attention' or 'ffn', not {self.targets!r}")
        if self.recovery not in ("none", "goa"):
            raise ValueError(f"recovery must be 'none' or 'goa', not {self.recovery!r}")
        for kind in ("attention", "ffn"):
            criterion = get_criterion(self.criterion_for(kind))
            if kind in self.kinds and kind not in criterion.kinds:
                option = "attention_criterion" if kind == "attention" else "ffn_criterion"
                raise ValueError(
                    f"criterion {criterion.name!r} cannot score {kind} units (only "
                    f"{'/'.join(sorted(criterion.kinds))}); set {option} to another criterion "
                    "(e.g. 'second-moment') or change targets"
                )
        get_reconstruction(self.reconstruction)


@dataclass
class LayerRecord:
    """What happened to one module: sizes, kept units, output errors and time."""

    block: int
    kind: str
    units_before: int
    units_after: int
    kept_units: list[int]
    error_none: float | None  # relative output error of plain pruning on the calibration rows (None: data-free)
    error: float | None  # relative output error after the chosen reconstruction
    seconds_stats: float
    seconds_solve: float


def _default_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def prunable_parameters(adapter: ModelAdapter) -> int:
    """Parameters of all attention and FFN projections of all blocks."""
    return sum(projection_params(m) for i in range(len(adapter.blocks())) for m in adapter.depth2_modules(i))


def _needs(config: PruneConfig, kind: str) -> frozenset[str]:
    """Statistics the criterion and the reconstruction of a ``kind`` module read (GOA recovery gathers its own)."""
    return frozenset(get_criterion(config.criterion_for(kind)).needs) | get_reconstruction(config.reconstruction).needs


def _uses_dense_path(config: PruneConfig) -> bool:
    return config.recovery == "goa" or any(
        n in {"level2_cross", "level1_cross"} for kind in ("attention", "ffn") for n in _needs(config, kind)
    )


def _data_free(config: PruneConfig) -> bool:
    """True when neither the criteria nor the reconstruction read calibration statistics (e.g. magnitude or
    random with ``none``): the result cannot depend on the calibration text, so none is run."""
    return config.recovery == "none" and not any(_needs(config, kind) for kind in config.kinds)


def _always_processed(config: PruneConfig, kind: str) -> bool:
    """Modules processed even with no units allotted: GOA recovery, or a criterion that may choose its own
    count from the options it was given (head-similarity's τ)."""
    return config.recovery == "goa" or (
        get_criterion(config.criterion_for(kind)).count is not None and bool(config.criterion_options)
    )


def _dense_target(projection: Projection) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A dense-path layer as a regression target: weight (in, out) and bias (or None), float64."""
    bias = projection.bias()
    return projection.weight().detach().T.to(torch.float64), None if bias is None else bias.detach().to(torch.float64)


def goa_recover(
    module: Depth2Module,
    dense_module: Depth2Module,
    alpha: float,
    restat: Callable[[frozenset[str]], ModuleStats],
    final_needs: frozenset[str],
) -> ModuleStats:
    """GOA's greedy two-step recovery (Alg. 1, 3, 4): re-fit level 1, then level 2, to the dense outputs.

    Level 1 is fitted on the pruned-path module input against each level-1 layer's dense output (one
    Gram serves all of them); the level-2 input is then recomputed through the re-fitted level 1 and
    level 2 re-fitted against the dense level-2 output. Each pass gathers only what its step reads
    (``restat(needs)``); the last one gathers ``final_needs`` for scoring and reconstruction.
    """
    cross = restat(frozenset({"level1_cross"})).level1_cross
    refitted: set[int] = set()
    for part, dense_part in zip(module.level1, dense_module.level1):
        projection = part.projection
        if id(projection.module) in refitted:
            continue  # a fused projection (GPT-2 c_attn) is re-fitted once, whole
        refitted.add(id(projection.module))
        dense_w, dense_b = _dense_target(dense_part.projection)
        weight, bias = ridge_to_dense(cross, None, dense_w, dense_b, torch.zeros_like(dense_w), alpha,
                                      dense_b is not None, f"{module.name} {projection.name} (GOA level 1)")
        projection.replace(weight.T, bias)
    level2_cross = restat(frozenset({"level2_cross"})).level2_cross
    dense_w, dense_b = _dense_target(dense_module.level2)
    weight, bias = ridge_to_dense(level2_cross, None, dense_w, dense_b, torch.zeros_like(dense_w), alpha,
                                  dense_b is not None, f"{module.name} (GOA level 2)")
    module.level2.replace(weight.T, bias)
    return restat(final_needs)


def criteria_read_data(config: PruneConfig) -> bool:
    """Whether the run's criteria read calibration statistics (random and magnitude do not)."""
    return any(get_criterion(config.criterion_for(kind)).needs for kind in config.kinds)


def _score_pass(adapter: ModelAdapter, acts: Activations | None, config: PruneConfig,
                eligible: set[tuple[int, str]], generator: torch.Generator,
                device: torch.device) -> dict[tuple[int, str], torch.Tensor]:
    """Scores of every eligible module on the dense model (global allocation needs all layers' scores).

    Each block runs once per batch for the statistics of all its modules, and a criterion that reads only
    per-channel moments gets no Gram; with no criterion reading statistics no block is run at all.
    """
    scores: dict[tuple[int, str], torch.Tensor] = {}
    blocks = adapter.blocks()
    criteria = {kind: get_criterion(config.criterion_for(kind)) for kind in config.kinds}
    if not criteria_read_data(config):
        acts = None
    for index in tqdm(range(len(blocks)), desc="scoring (global allocation)", leave=False):
        modules = [m for m in adapter.depth2_modules(index) if (index, m.kind) in eligible]
        if acts is None:
            stats = [ModuleStats() for _ in modules]
        else:
            block = blocks[index]
            home = next(block.parameters()).device
            block.to(device)
            stats, acts = collect_block_stats(block, modules, [criteria[m.kind].needs for m in modules], acts)
            block.to(home)
        for module, module_stats in zip(modules, stats):
            scores[(index, module.kind)] = criteria[module.kind].score(module, module_stats, generator).cpu()
    return scores


def _check_scores(adapter: ModelAdapter, scores: dict[tuple[int, str], torch.Tensor],
                  eligible: set[tuple[int, str]]) -> None:
    """Reused scores must be those of this model and configuration (see :func:`global_scores`)."""
    if set(scores) != eligible:
        raise ValueError(
            f"the given scores cover modules {sorted(set(scores) - eligible)} not pruned here and miss "
            f"{sorted(eligible - set(scores))}: compute them with global_scores() for the same model and config"
        )
    for index, kind in sorted(eligible):
        module = next(m for m in adapter.depth2_modules(index) if m.kind == kind)
        if scores[(index, kind)].shape != (module.num_units,):
            raise ValueError(f"the given scores of {module.name} have shape {tuple(scores[(index, kind)].shape)}, "
                             f"not ({module.num_units},): they belong to another model (or to a pruned one)")


def _capture_inputs(model: nn.Module, adapter: ModelAdapter, calibration_ids: torch.Tensor, config: PruneConfig,
                    device: torch.device) -> Activations:
    # attention probabilities come from eager attention, which needs the explicit masks it builds
    wants_probabilities = any("head_divergence" in _needs(config, kind) for kind in config.kinds)
    return capture_block_inputs(model, adapter, calibration_ids, config.batch_size, device,
                                attn_implementation="eager" if wants_probabilities else None)


def _eligible(config: PruneConfig, num_blocks: int) -> set[tuple[int, str]]:
    """(block, kind) of every module this run may prune."""
    return {(i, k) for i in range(config.keep_first, num_blocks - config.keep_last) for k in config.kinds}


def _check_calibration_ids(calibration_ids: torch.Tensor) -> None:
    if calibration_ids.ndim != 2 or calibration_ids.shape[0] == 0:
        raise ValueError(f"calibration_ids must be a non-empty (samples, tokens) tensor, got {tuple(calibration_ids.shape)}")


@torch.no_grad()
def global_scores(model: nn.Module, calibration_ids: torch.Tensor,
                  config: PruneConfig) -> dict[tuple[int, str], torch.Tensor]:
    """The dense model's scores that global allocation ranks, keyed (block, kind), to be reused.

    ``prune(copy, ids, config_at_any_ratio, scores=...)`` on copies of the same dense model then skips its
    own scoring pass (one forward over the calibration data), e.g. for a sweep over ratios or
    reconstructions. The weights are not changed (as in prune, the non-block modules stay on the compute
    device). A criterion drawing random numbers continues from a generator this pass did not advance, so
    its runs differ from ones that score themselves.
    """
    adapter = get_adapter(model)
    blocks = adapter.blocks()
    config = replace(config.fitted(len(blocks)), allocation="global")
    config.validate(len(blocks))
    _check_calibration_ids(calibration_ids)
    check_finite_weights(model)
    device = _default_device(config.device)
    model.eval()
    acts = _capture_inputs(model, adapter, calibration_ids, config, device) if criteria_read_data(config) else None
    generator = torch.Generator().manual_seed(config.seed)
    return _score_pass(adapter, acts, config, _eligible(config, len(blocks)), generator, device)


def check_finite_weights(model: nn.Module) -> None:
    """A NaN/Inf weight is a corrupted model, and it does not always show in the activations (PyTorch's
    causal SDPA turns a NaN query row into zeros), so it is caught here, by name, before any work."""
    for name, parameter in model.named_parameters():
        if not torch.isfinite(parameter).all():
            raise FloatingPointError(
                f"{name} holds NaN or Inf values: the input model is corrupted (or was saved after an overflow). "
                "Reload it from a good checkpoint before pruning."
            )


@torch.no_grad()
def prune(
    model: nn.Module,
    calibration_ids: torch.Tensor,
    config: PruneConfig | None = None,
    progress: bool = True,
    scores: dict[tuple[int, str], torch.Tensor] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Prune ``model`` in place and return it with a report.

    ``calibration_ids`` is an (N, L) tensor of token ids (see :func:`reprune.data.calibration_ids`).
    ``scores``: global allocation's scores from :func:`global_scores` on the same dense model, reused
    instead of a scoring pass.
    """
    config = config or PruneConfig()
    adapter = get_adapter(model)
    blocks = adapter.blocks()
    config = config.fitted(len(blocks))
    config.validate(len(blocks))
    if scores is not None and config.allocation != "global":
        raise ValueError(f"scores are read by global allocation only, but allocation is {config.allocation!r}: "
                         "drop scores= or set allocation='global'")
    _check_calibration_ids(calibration_ids)
    check_finite_weights(model)
    device = _default_device(config.device)
    model.eval()
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(config.seed)
    started = time.perf_counter()
    params_before = sum(p.numel() for p in model.parameters())
    prunable_before = prunable_parameters(adapter)

    data_free = _data_free(config)
    acts = None if data_free else _capture_inputs(model, adapter, calibration_ids, config, device)
    two_path = _uses_dense_path(config)
    dense_acts = acts.clone() if two_path else None
    seconds_capture = time.perf_counter() - started

    budgets = [module_budget(m, config.gqa_mode) for i in range(len(blocks)) for m in adapter.depth2_modules(i)]
    eligible = _eligible(config, len(blocks))
    if scores is not None:
        _check_scores(adapter, scores, eligible)
    elif config.allocation == "global" and config.ratio > 0:
        scores = _score_pass(adapter, acts, config, eligible, generator, device)
    counts = allocate(budgets, config.ratio, config.allocation, eligible, scores)

    records: list[LayerRecord] = []
    iterator = tqdm(range(len(blocks)), desc="pruning blocks", disable=not progress)
    for index in iterator:
        block = blocks[index]
        home = next(block.parameters()).device
        block.to(device)
        dense_block = copy.deepcopy(block) if two_path else None
        dense_modules = adapter.modules_of(dense_block, index) if dense_block is not None else [None, None]
        # each path runs the whole block on its input until a pruned attention leaves a residual tail; then
        # the rest of the block (AfterAttention) runs on the post-attention stream built from that tail
        runner, stream, dense_runner, dense_stream = block, acts, dense_block, dense_acts
        block_out = dense_out = tails = after = dense_after = None
        for position, kind in enumerate(("attention", "ffn")):
            module = adapter.modules_of(block, index)[position]  # re-read: surgery replaced modules
            n_remove = counts[(index, kind)]
            if n_remove == 0 and not ((index, kind) in eligible and _always_processed(config, kind)):
                continue
            residual_of = adapter.attention_residual if kind == "attention" else adapter.ffn_residual
            tails = None
            if acts is not None and residual_of(block) is not None:
                tails = (ResidualTail(residual_of(block)),
                         ResidualTail(residual_of(dense_block)) if dense_block is not None else None)
            record = _prune_module(adapter, runner, module, dense_runner, dense_modules[position], stream,
                                   dense_stream, n_remove, config, generator, tails)
            records.append(record)
            if tails is None:
                continue
            shrunk = adapter.modules_of(block, index)[position]
            after = tails[0].outputs(shrunk.level2.module, shrunk.unit_channels(record.kept_units), stream)
            dense_tail = tails[1]  # filled when a two-path statistics pass ran the dense block too
            dense_after = (dense_tail.outputs(dense_modules[position].level2.module, None, dense_stream)
                           if dense_tail is not None and dense_tail.level2_in else None)
            if kind == "attention":
                runner, stream = AfterAttention(adapter, block), after
                if dense_after is not None:
                    dense_runner, dense_stream = AfterAttention(adapter, dense_block), dense_after
            else:  # the FFN is the block's last step
                block_out, dense_out = after, dense_after
        if acts is not None:
            acts = block_out if block_out is not None else run_block(runner, stream)
        if dense_block is not None:
            dense_acts = dense_out if dense_out is not None else run_block(dense_runner, dense_stream)
        del tails, after, dense_after, block_out, dense_out, runner, stream, dense_runner, dense_stream
        block.to(home)
        del dense_block

    report = _report(model, adapter, config, records, counts, params_before, prunable_before,
                     calibration_ids, not data_free, seconds_capture, time.perf_counter() - started)
    return model, report


def _prune_module(adapter: ModelAdapter, block: nn.Module | AfterAttention, module: Depth2Module,
                  dense_block: nn.Module | AfterAttention | None, dense_module: Depth2Module | None,
                  acts: Activations | None, dense_acts: Activations | None, n_remove: int, config: PruneConfig,
                  generator: torch.Generator,
                  tails: tuple[ResidualTail, ResidualTail | None] | None = None) -> LayerRecord:
    """Calibrate, (recover,) score, select, reconstruct and shrink one module.

    ``block``/``acts`` run the block up to this module (the whole block on its input, or AfterAttention
    on the post-attention stream); ``tails`` (pruned path, dense path), for a pre-norm branch, keep what
    propagation reuses.
    """
    criterion = get_criterion(config.criterion_for(module.kind))
    reconstruction = get_reconstruction(config.reconstruction)
    needs = _needs(config, module.kind)

    def restat(wanted: frozenset[str]) -> ModuleStats:
        return collect_module_stats(block, module, acts, wanted, dense_block, dense_module, dense_acts,
                                    *(tails or (None, None)))

    tick = time.perf_counter()
    if acts is None:  # a data-free method (see _data_free)
        stats = ModuleStats()
    elif config.recovery == "goa":
        stats = goa_recover(module, dense_module, config.recovery_alpha, restat, needs)
    else:
        stats = restat(needs)
    seconds_stats = time.perf_counter() - tick
    scores = criterion.score(module, stats, generator)
    if criterion.count is not None:  # e.g. head-similarity's threshold τ replaces the allocated count
        wanted = criterion.count(module, stats, config.criterion_options)
        if wanted is not None:
            n_remove = legal_count(module, wanted, config.gqa_mode)
    kept_units = select_units(module, scores, n_remove, config.gqa_mode)
    kept = module.unit_channels(kept_units)
    mask = torch.ones(module.num_units * module.unit_width, dtype=torch.bool)
    mask[kept] = False
    removed = torch.nonzero(mask).reshape(-1)

    tick = time.perf_counter()
    dense_w, dense_b = _dense_target(dense_module.level2) if dense_module is not None else (None, None)
    inp = ReconstructionInput(module, kept, removed, stats, config.alpha, dense_w, dense_b)
    new_weight, new_bias = reconstruction.fn(inp)
    if not torch.isfinite(new_weight).all() or (new_bias is not None and not torch.isfinite(new_bias).all()):
        raise FloatingPointError(f"{module.name}: reconstruction produced NaN/Inf weights")
    error_none = error = None  # no calibration rows to measure them on
    if stats.level2_in.n:
        full_w, full_b = inp.weight, inp.bias
        energy = max(output_energy(stats.level2_in, full_w, full_b), 1e-30)
        plain_bias = full_b if module.level2.bias() is not None else None
        error_none = output_error(stats.level2_in, full_w, full_b, kept, full_w[kept], plain_bias) / energy
        error = output_error(stats.level2_in, full_w, full_b, kept, new_weight, new_bias) / energy
    seconds_solve = time.perf_counter() - tick

    shrink_module(adapter, module, kept_units, new_weight, new_bias)
    return LayerRecord(module.block, module.kind, module.num_units, len(kept_units), kept_units.tolist(),
                       error_none, error, seconds_stats, seconds_solve)


def _report(model: nn.Module, adapter: ModelAdapter, config: PruneConfig, records: list[LayerRecord],
            counts: dict, params_before: int, prunable_before: int, calibration_ids: torch.Tensor,
            calibrated: bool, seconds_capture: float, seconds_total: float) -> dict[str, Any]:
    params_after = sum(p.numel() for p in model.parameters())
    prunable_after = prunable_parameters(adapter)
    return {
        "config": asdict(config),
        "model_type": model.config.model_type,
        "architecture": type(model).__name__,
        "parameters": {
            "total_before": params_before,
            "total_after": params_after,
            "prunable_before": prunable_before,
            "prunable_after": prunable_after,
            "ratio_prunable": 1 - prunable_after / prunable_before,
            "ratio_total": 1 - params_after / params_before,
        },
        "layers": [asdict(r) for r in records],
        "shapes": layer_shapes(adapter),
        "calibration": {"num_samples": int(calibration_ids.shape[0]), "seq_len": int(calibration_ids.shape[1]),
                        "seed": config.seed, "used": calibrated},
        "timings": {
            "total_seconds": seconds_total,
            "capture_seconds": seconds_capture,
            "stats_seconds": sum(r.seconds_stats for r in records),
            "solve_seconds": sum(r.seconds_solve for r in records),
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
    }


def layer_shapes(adapter: ModelAdapter) -> list[dict[str, int]]:
    """Per block: query heads, KV heads, head size and FFN width, as they are now."""
    shapes = []
    for index in range(len(adapter.blocks())):
        attention, ffn = adapter.depth2_modules(index)
        shapes.append({
            "num_heads": attention.num_units,
            "num_kv_heads": attention.num_kv_heads,
            "head_dim": attention.unit_width,
            "intermediate_size": ffn.num_units,
        })
    return shapes
