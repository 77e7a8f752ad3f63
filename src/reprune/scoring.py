"""The scoring passes over the dense model, before pruning: module scores, and block similarities.

Global allocation ranks units across layers, so it needs all layers' scores at once; ``score_on='dense'``
chooses each module's units by them too, as FLAP does. Each block runs
once per batch for the statistics of all its modules, and a criterion that reads only per-channel
moments gets no Gram; with no criterion reading statistics no block is run at all.

``influence`` allocation reads one number per block instead: how much of its input the block's output keeps
(mean cosine similarity, 1 − ShortGPT's block influence), from the first :data:`SIMILARITY_SAMPLES` samples.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from reprune.adapters import Depth2Module, ModelAdapter, ModuleKind
from reprune.calibration import Activations, collect_block_stats, on_device, run_block
from reprune.config import Plan
from reprune.criteria import unit_scores
from reprune.stats import ModuleStats

Scores = dict[tuple[int, ModuleKind], torch.Tensor]
# samples the block similarities are measured on: a mean of bounded per-token cosines, which 16 samples pin
# down to within one width step of all 128 (benchmarks/README.md, "Allocation by block influence"), at an
# eighth of a forward pass over the default 128 samples
SIMILARITY_SAMPLES = 16


def score_dense_model(adapter: ModelAdapter, acts: Activations | None, plan: Plan, generator: torch.Generator,
                      device: torch.device, progress: bool = True) -> Scores:
    """Scores of every eligible module, keyed (block, kind); ``acts`` are block 0's inputs (None: data-free)."""
    scores: Scores = {}
    eligible = plan.eligible
    if not plan.criteria_read_data:
        acts = None
    for index in tqdm(range(plan.num_blocks), desc="scoring (global allocation)", leave=False, disable=not progress):
        modules = [m for m in adapter.depth2_modules(index) if (index, m.kind) in eligible]
        if acts is None:
            stats = [ModuleStats() for _ in modules]
        else:
            with on_device(adapter.blocks()[index], device) as block:
                stats, acts = collect_block_stats(block, modules, [plan.criteria[m.kind].needs for m in modules],
                                                  acts.at_block(index))
        for module, module_stats in zip(modules, stats):
            scores[(index, module.kind)] = module_scores(plan, module, module_stats, generator).cpu()
    return scores


def module_scores(plan: Plan, module: Depth2Module, stats: ModuleStats, generator: torch.Generator) -> torch.Tensor:
    """The module's unit scores. A mixture's experts each lose their own lowest neurons, the same number:
    its k-th lowest score is the mean of its experts' k-th lowest (data-free: ``stats`` has no experts)."""
    score = plan.criteria[module.kind].score
    if not module.moe:
        return score(module, stats, generator)
    per_expert = stats.experts or [ModuleStats() for _ in module.moe.experts]
    ranked = [unit_scores(score(expert, expert_stats, generator)).to(torch.float64).sort().values
              for expert, expert_stats in zip(module.moe.experts, per_expert)]
    return torch.stack(ranked).mean(0)


def check_scores(adapter: ModelAdapter, scores: Scores, plan: Plan) -> None:
    """Reused scores must be those of this model and configuration (see :func:`reprune.pipeline.global_scores`)."""
    if plan.config.allocation != "global" and plan.config.score_on != "dense":
        raise ValueError(f"scores are read by global allocation or score_on='dense' only, but allocation is "
                         f"{plan.config.allocation!r} and score_on {plan.config.score_on!r}: drop scores= or set "
                         "allocation='global'")
    eligible = plan.eligible
    if set(scores) != eligible:
        raise ValueError(
            f"the given scores cover modules {sorted(set(scores) - eligible)} not pruned here and miss "
            f"{sorted(eligible - set(scores))}: compute them with global_scores() for the same model and config"
        )
    for index, kind in sorted(eligible):
        module = next(m for m in adapter.depth2_modules(index) if m.kind == kind)
        shape = tuple(scores[(index, kind)].shape)
        if shape not in ((module.num_units,), (module.num_units, module.unit_width)):
            raise ValueError(f"the given scores of {module.name} have shape {shape}, not ({module.num_units},) "
                             f"or ({module.num_units}, {module.unit_width}): they belong to another model "
                             "(or to a pruned one)")


def block_similarities(adapter: ModelAdapter, acts: Activations, blocks: set[int], device: torch.device,
                       progress: bool = True, samples: int = SIMILARITY_SAMPLES) -> dict[int, float]:
    """Mean cosine similarity between each of ``blocks``' input and output hidden states on the dense model,
    over every token of the first ``samples`` samples (``acts``: block 0's inputs).

    A block that rewrites the residual stream (SmolLM2's block 0: about 0.01) scores near 0, one that adds a little
    to it near 1; ``influence`` allocation spares the FFNs of blocks below ½
    (:func:`reprune.allocation.influence_weight`)."""
    acts = acts.first(samples)
    similarities: dict[int, float] = {}
    for index in tqdm(range(max(blocks) + 1), desc="block similarities", leave=False, disable=not progress):
        step = acts.at_block(index)
        with on_device(adapter.blocks()[index], device) as block:
            acts = run_block(block, step)
        if index in blocks:
            cosines = [torch.nn.functional.cosine_similarity(x.to(torch.float64), y.to(torch.float64), dim=-1)
                       for x, y in zip(step.hidden, acts.hidden)]
            similarities[index] = float(torch.cat([c.reshape(-1) for c in cosines]).mean())
    return similarities
