"""Global allocation's scoring pass: one forward per block and batch for every module's statistics, no
block run for criteria that read none, and scores that can be computed once and reused across runs."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from reprune import pipeline
from reprune.adapters import get_adapter
from reprune.calibration import collect_module_stats, run_block
from reprune.criteria import CRITERIA
from reprune import PruneConfig, global_scores, prune
from reprune.stats import Moments
from tiny_models import FAMILIES, calibration_batch, entered_path, model_output, tiny_model

IDS = calibration_batch(16, 16)
BATCHES = 2  # 16 samples, batch_size 8


def _reference_scores(model: torch.nn.Module, config: PruneConfig) -> dict[tuple[int, str], torch.Tensor]:
    """Each module scored from its own full statistics pass, then the block run again to propagate."""
    adapter = get_adapter(model)
    acts = pipeline.capture_inputs(model, adapter, IDS, config.resolve(len(adapter.blocks())), torch.device("cpu"))
    generator = torch.Generator().manual_seed(config.seed)
    scores = {}
    for index, block in enumerate(adapter.blocks()):
        for module in adapter.depth2_modules(index):
            criterion = CRITERIA.get(config.criterion_for(module.kind))
            stats = collect_module_stats(module, criterion.needs, entered_path(adapter, acts, index))
            scores[(index, module.kind)] = criterion.score(module, stats, generator)
        acts = run_block(block, acts)
    return scores


def _count_block_runs(model: torch.nn.Module) -> list[int]:
    runs: list[int] = []
    for block in get_adapter(model).blocks():
        block.register_forward_pre_hook(lambda *_: runs.append(1))
    return runs


def _uniform_runs(family: str, config: PruneConfig) -> int:
    """Block runs of the same pruning with uniform allocation (no scoring pass)."""
    model = tiny_model(family)
    runs = _count_block_runs(model)
    prune(model, IDS, replace(config, allocation="uniform"), progress=False)
    return len(runs)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attention_criterion, ffn_criterion", [
    ("flap", "flap"), ("wanda-sp", "wanda-sp"), ("second-moment", "second-moment"), ("head-similarity", "flap"),
])
def test_one_forward_per_block_gives_the_scores_of_separate_passes(
    family: str, attention_criterion: str, ffn_criterion: str
) -> None:
    config = PruneConfig(attention_criterion=attention_criterion, ffn_criterion=ffn_criterion, batch_size=8)
    model = tiny_model(family)
    reference = _reference_scores(tiny_model(family), config)
    runs = _count_block_runs(model)
    scores = global_scores(model, IDS, config)
    # one run per block and batch scores both modules; capturing block 0's inputs enters it once per batch too
    assert len(runs) == (len(get_adapter(model).blocks()) + 1) * BATCHES
    assert scores.keys() == reference.keys()
    for key in scores:
        torch.testing.assert_close(scores[key], reference[key].to(scores[key].dtype), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("criterion", ["random", "magnitude"])
def test_criteria_reading_no_statistics_score_without_running_blocks(criterion: str) -> None:
    """Global random/magnitude with a calibrated reconstruction: the scoring pass runs no block."""
    model = tiny_model("llama")
    runs = _count_block_runs(model)
    config = PruneConfig(ratio=0.3, criterion=criterion, reconstruction="liar", allocation="global", batch_size=8)
    prune(model, IDS, config, progress=False)
    assert len(runs) == _uniform_runs("llama", config), "only the pruning pass runs the blocks"


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_reused_scores_give_the_same_pruned_model(family: str) -> None:
    dense = tiny_model(family)
    before = copy.deepcopy(dense.state_dict())
    scores = global_scores(dense, IDS, PruneConfig(criterion="wanda-sp", batch_size=8))
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items()), "scoring must not change the model"
    for ratio, reconstruction in [(0.2, "liar"), (0.4, "bias")]:
        config = PruneConfig(ratio=ratio, criterion="wanda-sp", reconstruction=reconstruction, allocation="global",
                             batch_size=8)
        model = copy.deepcopy(dense)
        runs = _count_block_runs(model)
        reused, reused_report = prune(model, IDS, config, progress=False, scores=scores)
        assert len(runs) == _uniform_runs(family, config), "no scoring pass with given scores"
        scored, scored_report = prune(copy.deepcopy(dense), IDS, config, progress=False)
        assert [r.kept_units for r in reused_report.layers] == [r.kept_units for r in scored_report.layers]
        torch.testing.assert_close(model_output(reused, IDS), model_output(scored, IDS))


def test_scores_that_do_not_fit_are_refused() -> None:
    config = PruneConfig(criterion="flap", allocation="global", batch_size=8)
    scores = global_scores(tiny_model("llama"), IDS, config)
    with pytest.raises(ValueError, match="global allocation or score_on=.dense. only"):
        prune(tiny_model("llama"), IDS, PruneConfig(criterion="flap"), progress=False, scores=scores)
    with pytest.raises(ValueError, match="miss"):
        prune(tiny_model("llama"), IDS, PruneConfig(criterion="flap", allocation="global", keep_first=0),
              progress=False, scores={k: v for k, v in scores.items() if k[0] > 0})
    wide = {k: torch.cat([v, v]) for k, v in scores.items()}
    with pytest.raises(ValueError, match="another model"):
        prune(tiny_model("llama"), IDS, config, progress=False, scores=wide)


def test_diagonal_moments_equal_the_diagonal_of_full_moments() -> None:
    rows = torch.randn(3, 50, 6, generator=torch.Generator().manual_seed(0)) * torch.arange(1, 7) + torch.arange(6)
    full, diagonal = Moments(), Moments(diagonal_only=True)
    for batch in rows:
        full.update(batch)
        diagonal.update(batch)
    assert diagonal.gram is None
    # both sum float32 batch squares (in different orders) into float64
    torch.testing.assert_close(diagonal.square_sum, full.gram.diagonal(), rtol=1e-6, atol=0)
    torch.testing.assert_close(diagonal.variance, full.covariance.diagonal(), rtol=1e-5, atol=0)
    with pytest.raises(RuntimeError, match="only the diagonal"):
        _ = diagonal.covariance
