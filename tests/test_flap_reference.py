"""The ``flap`` criterion and global allocation reproduce FLAP's kept sets, computed here from its published
formulas as the official code (CASIA-IVA-Lab/FLAP, ``lib/prune.py``, ``prune_flap``) applies them:

- score of input channel j of a level-2 projection: WIFV = Var(x_j) · ‖W[:, j]‖²;
- a head's score: the sum over its channels of the *squared* WIFV (``W_metric ** 2`` for o_proj);
  a neuron's: its WIFV;
- uniform (UL-UM): each layer drops its lowest-scored units;
- global (AL-AM): each layer's channel scores are standardised over the layer's channels, a head's score is
  the mean of its channels' standardised scores, and one threshold over all units keeps those above it,
  each unit weighted by the parameters it removes (heads 4·head_dim·hidden, neurons 3·hidden).

The reference runs the dense model once with hooks, as FLAP does, so it shares nothing with reprune's
calibration, statistics or allocation code.
"""

from __future__ import annotations

import pytest
import torch

from reprune import PruneConfig, prune
import transformers

from tiny_models import VOCAB, _randomised, calibration_batch

IDS = calibration_batch(32, 16)
SEEDS = [1, 6, 8]  # with seed 6, summing unsquared channel scores would keep another pair of heads


def flap_model(seed: int) -> transformers.LlamaForCausalLM:
    """A tiny LLaMA without GQA (FLAP's code has none), 8 heads of 4 channels, so head rankings can differ."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=64)
    return _randomised(transformers.LlamaForCausalLM(config))


def level2_inputs(model: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every token's input to each block's o_proj and down_proj on the dense model, float64."""
    attn, mlp = [], []
    hooks = []
    for layer in model.model.layers:
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(
            lambda _, args: attn.append(args[0].reshape(-1, args[0].shape[-1]).double())))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(
            lambda _, args: mlp.append(args[0].reshape(-1, args[0].shape[-1]).double())))
    with torch.no_grad():
        model(input_ids=IDS)
    for hook in hooks:
        hook.remove()
    return attn, mlp


def wifv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x.var(0) * weight.double().pow(2).sum(0)


def flap_metrics(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer channel metrics as FLAP computes them: (layers, hidden) for attention (squared WIFV) and
    (layers, intermediate) for the FFN (WIFV)."""
    attn_x, mlp_x = level2_inputs(model)
    layers = model.model.layers
    attn = torch.stack([wifv(x, layer.self_attn.o_proj.weight) ** 2 for x, layer in zip(attn_x, layers)])
    mlp = torch.stack([wifv(x, layer.mlp.down_proj.weight) for x, layer in zip(mlp_x, layers)])
    return attn, mlp


def flap_global_kept(model: torch.nn.Module, ratio: float) -> tuple[list[set[int]], list[set[int]]]:
    """AL-AM: standardise per layer, heads as the mean of their channels, one weighted threshold."""
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    attn, mlp = flap_metrics(model)

    def standardise(x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)

    attn = standardise(attn).reshape(len(attn), -1, head_dim).mean(2)
    mlp = standardise(mlp)
    metric = torch.cat([attn.reshape(-1), mlp.reshape(-1)])
    ordered, indices = torch.sort(metric, descending=True)
    weight = torch.ones_like(ordered)
    weight[indices < attn.numel()] = 4.0 * head_dim / 3.0  # a head's parameters over a neuron's
    threshold = ordered[torch.argmin(torch.abs(torch.cumsum(weight, 0) - weight.sum() * (1 - ratio)))]
    heads = [set(torch.nonzero(row > threshold).reshape(-1).tolist()) for row in attn]
    neurons = [set(torch.nonzero(row > threshold).reshape(-1).tolist()) for row in mlp]
    return heads, neurons


def kept_sets(record, kind: str, units: int) -> list[set[int]]:
    """Each block's kept units of one kind (a module that lost none has no record)."""
    kept = {layer.block: set(layer.kept_units) for layer in record.layers if layer.kind == kind}
    return [kept.get(block, set(range(units))) for block in range(len(record.shapes))]


def config(allocation: str, ratio: float) -> PruneConfig:
    """FLAP's setting: scores from the dense model, exact widths, bias compensation."""
    return PruneConfig(ratio=ratio, criterion="flap", reconstruction="bias", allocation=allocation,
                       score_on="dense", keep_first=0, keep_last=0, multiple_of=1, batch_size=8)


@pytest.mark.parametrize("seed", SEEDS)
def test_uniform_flap_keeps_the_heads_and_neurons_flap_keeps(seed: int) -> None:
    """Given each layer's count, the kept units are FLAP's top-scored ones: heads by their summed squared WIFV."""
    model = flap_model(seed)
    attn, mlp = flap_metrics(model)
    _, record = prune(model, IDS, config("uniform", 0.3), progress=False)
    for kind, metric in (("attention", attn.reshape(len(attn), 8, -1).sum(2)), ("ffn", mlp)):
        for kept, scores in zip(kept_sets(record, kind, metric.shape[1]), metric):
            assert 0 < len(kept) < len(scores)
            assert kept == set(torch.argsort(scores, descending=True)[: len(kept)].tolist())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_global_flap_keeps_the_units_flaps_al_am_keeps(seed: int, ratio: float) -> None:
    model = flap_model(seed)
    heads, neurons = flap_global_kept(model, ratio)
    _, record = prune(model, IDS, config("global", ratio), progress=False)
    assert kept_sets(record, "attention", 8) == heads
    assert kept_sets(record, "ffn", 48) == neurons
