"""Kept widths in hardware-friendly multiples (``multiple_of``): the widths, the ratio they achieve and
count, and ``multiple_of=1`` as the exact counts of before (same units, same weights to rounding, against a
fixture of the old code; the cases that FLAP's head scores and threshold changed were regenerated then).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from reprune import PruneConfig, prune
from reprune.adapters import get_adapter
from reprune.allocation import module_budget
from reprune.cli import build_config, build_parser
from reprune.preflight import PreflightError, check_config
from reprune.record import RunRecord
from tiny_models import calibration_batch, contract_model, tiny_model

IDS = calibration_batch(16, 16)
FIXTURE = Path(__file__).parent / "fixtures" / "exact_widths.json"


def llama(intermediate_size: int = 48, hidden_size: int = 32, heads: int = 4, kv_heads: int = 2) -> torch.nn.Module:
    """A tiny LLaMA of the given sizes (widths that are no multiple of 8, heads of 6 channels)."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=hidden_size, intermediate_size=intermediate_size,
                                      num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=kv_heads,
                                      max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


MODELS = {
    "llama": lambda: tiny_model("llama"),
    "bert": lambda: tiny_model("bert"),
    "gpt2": lambda: tiny_model("gpt2"),
    "ffn-52": lambda: llama(intermediate_size=52),  # 52 neurons: kept 48, 40, ... (removals 4, 12, ...)
    "head-dim-6": lambda: llama(hidden_size=48, heads=8),  # 8 heads of 6 channels: kept in fours (24 channels)
    "mixtral": lambda: contract_model("mixtral"),
    "qwen3_moe": lambda: contract_model("qwen3_moe"),
}


@pytest.mark.parametrize("multiple_of", [8, 16])
@pytest.mark.parametrize("allocation", ["uniform", "global"])
@pytest.mark.parametrize("name", list(MODELS))
def test_kept_widths_are_multiples(name: str, allocation: str, multiple_of: int) -> None:
    config = PruneConfig(ratio=0.3, allocation=allocation, reconstruction="none", multiple_of=multiple_of)
    model, record = prune(MODELS[name](), IDS, config, progress=False)
    assert any(layer.units_after < layer.units_before for layer in record.layers)
    for layer, shape in ((layer, record.shapes[layer.block]) for layer in record.layers):
        assert layer.units_after > 0
        if layer.units_after == layer.units_before:
            continue
        if layer.kind == "ffn":
            assert layer.units_after % multiple_of == 0, (layer.block, layer.units_after)
        else:
            assert layer.units_after * shape.head_dim % multiple_of == 0, (layer.block, layer.units_after)
            assert layer.units_after % shape.num_kv_heads == 0


def test_a_module_narrower_than_the_multiple_stays_whole() -> None:
    ffn = get_adapter(llama(intermediate_size=6)).depth2_modules(0)[1]
    assert module_budget(ffn, "query", 8).max_remove == 0
    assert module_budget(ffn, "query", 1).max_remove == 5


def projection_parameters(model: torch.nn.Module) -> int:
    """Parameters of the attention and FFN projections of a LLaMA, counted from the module names."""
    return sum(p.numel() for name, p in model.named_parameters() if ".self_attn." in name or ".mlp." in name)


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_the_reported_ratio_is_that_of_the_real_parameter_count(allocation: str) -> None:
    dense = llama(intermediate_size=52)
    before = projection_parameters(dense)
    model, record = prune(dense, IDS, PruneConfig(ratio=0.3, allocation=allocation, reconstruction="none"),
                          progress=False)
    params = record.parameters
    assert (params.prunable_before, params.prunable_after) == (before, projection_parameters(model))
    assert params.total_after == sum(p.numel() for p in model.parameters())
    assert params.ratio_prunable == pytest.approx(1 - projection_parameters(model) / before, abs=0)


def test_uniform_rounds_to_the_width_whose_ratio_is_nearest() -> None:
    """Of the multiples around the exact width, the one kept gives the achieved ratio closest to the asked one
    (rounding down would always prune less)."""
    ratio, multiple_of = 0.3, 8
    dense = llama(intermediate_size=64)
    ffn_budget = module_budget(get_adapter(dense).depth2_modules(0)[1], "query", multiple_of)
    _, record = prune(dense, IDS, PruneConfig(ratio=ratio, reconstruction="none", targets="ffn",
                                              multiple_of=multiple_of), progress=False)
    params, blocks = record.parameters, len(record.layers)
    target = ratio * params.prunable_before
    removed = params.prunable_before - params.prunable_after
    for other in (removed - multiple_of * ffn_budget.unit_cost * blocks, removed + multiple_of * ffn_budget.unit_cost * blocks):
        assert abs(removed - target) <= abs(other - target)


def state_fingerprint(model: torch.nn.Module) -> dict[str, list[float]]:
    """Per tensor: sum, sum of |x| and the dot with a seeded normal probe, in float64 (a hash of the bytes would
    change with the BLAS and library versions that round the last bits differently)."""
    fingerprint = {}
    for name, tensor in sorted(model.state_dict().items()):
        values = tensor.detach().to(torch.float64).flatten()
        probe = torch.randn(values.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        fingerprint[name] = [values.sum().item(), values.abs().sum().item(), (values * probe).sum().item()]
    return fingerprint


def assert_fingerprints_match(actual: dict[str, list[float]], expected: dict[str, list[float]]) -> None:
    """Same tensors; each statistic within 1e-4 of the tensor's sum of |x| (rounding, not a changed weight: a
    BERT attention bias after LIAR's solve differed by 1.7e-5 of it between two machines on the same code)."""
    assert sorted(actual) == sorted(expected)
    for name, (total, magnitude, projection) in expected.items():
        tolerance = 1e-4 * magnitude + 1e-9
        assert actual[name] == pytest.approx([total, magnitude, projection], rel=0, abs=tolerance), name


@pytest.mark.parametrize("case", [key for key in json.loads(FIXTURE.read_text()) if not key.startswith("_")])
def test_multiple_of_one_reproduces_the_exact_widths_of_the_old_code(case: str) -> None:
    family, allocation, gqa_mode = case.split("-")
    expected = json.loads(FIXTURE.read_text())[case]
    model = contract_model(family) if family == "mixtral" else tiny_model(family)
    # flap: the fixture's criterion; intercept=True: its code fitted LIAR's intercept everywhere (before "auto")
    config = PruneConfig(ratio=0.3, criterion="flap", allocation=allocation, gqa_mode=gqa_mode, reconstruction="liar",
                         batch_size=8, multiple_of=1, intercept=True)
    model, record = prune(model, IDS, config, progress=False)
    assert [[layer.block, layer.kind, layer.expert, layer.kept_units] for layer in record.layers] == expected["kept"]
    assert record.parameters.prunable_after == expected["prunable_after"]
    assert_fingerprints_match(state_fingerprint(model), expected["fingerprint"])


def test_the_option_is_parsed_checked_and_defaults_to_one_in_older_records() -> None:
    parse = build_parser().parse_args
    base = ["prune", "--model", "smollm2", "--out", "x"]
    assert build_config(parse(base)).multiple_of == PruneConfig().multiple_of == 8
    assert build_config(parse([*base, "--multiple-of", "1"])).multiple_of == 1
    with pytest.raises(PreflightError, match="--multiple-of"):
        check_config(PruneConfig(multiple_of=0))
    _, record = prune(tiny_model("opt"), IDS, PruneConfig(ratio=0.2, reconstruction="none"), progress=False)
    data = record.to_json()
    del data["config"]["multiple_of"]  # a record written before the option existed: its widths were exact
    assert RunRecord.from_json(data).config.multiple_of == 1
