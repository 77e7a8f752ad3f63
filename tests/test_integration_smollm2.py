"""SmolLM2-135M (LLaMA, GQA 9 heads / 3 KV heads), 30 % uniform pruning, WikiText-2 perplexity:
no compensation > bias compensation > LIAR. Calibration is the embedded Wikipedia sample (disjoint
from WikiText-2 test). Three prunes of a 135M model dominate the run time (about a minute each on
two idle CPU cores)."""

from __future__ import annotations

import gc
import math

import pytest
import torch

pytestmark = pytest.mark.integration

SEQ_LEN = 128
EVAL_WINDOWS = 24
RATIO = 0.3


@pytest.fixture(scope="module")
def smollm2():
    transformers = pytest.importorskip("transformers")
    from reprune.models import smollm2_path

    try:
        path = smollm2_path()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)

    def fresh_model():
        return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    return fresh_model, tokenizer


@pytest.fixture(scope="module")
def calibration(smollm2):
    from reprune.data import calibration_ids

    _, tokenizer = smollm2
    ids = calibration_ids(tokenizer, "wiki-embedded", 32, SEQ_LEN)
    assert ids.shape == (32, SEQ_LEN)
    return ids


@pytest.fixture(scope="module")
def eval_windows(smollm2):
    from reprune.models import shared_data_dir

    _, tokenizer = smollm2
    path = shared_data_dir() / "wikitext-2-raw" / "canonical" / "wiki.test.raw"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    text = path.read_text(encoding="utf-8")[: 60 * SEQ_LEN * 8]  # enough characters for the first windows
    ids = torch.as_tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    assert ids.numel() >= EVAL_WINDOWS * SEQ_LEN
    return ids[: EVAL_WINDOWS * SEQ_LEN].view(EVAL_WINDOWS, SEQ_LEN)


@torch.inference_mode()
def perplexity(model, windows: torch.Tensor, batch_size: int = 8) -> float:
    """exp(mean NLL) over every predicted token of non-overlapping windows."""
    total, count = 0.0, 0
    for batch in windows.split(batch_size):
        logits = model(input_ids=batch, use_cache=False).logits
        total += torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten(),
                                                   reduction="sum").item()
        count += batch[:, 1:].numel()
    return math.exp(total / count)


@pytest.fixture(scope="module")
def results(smollm2, calibration, eval_windows):
    """Perplexity per reconstruction mode, each computed once and on demand."""
    from reprune import PruneConfig, prune

    fresh_model, _ = smollm2
    cache: dict[str, tuple[float, dict]] = {}

    def get(mode: str) -> tuple[float, dict]:
        if mode not in cache:
            model = fresh_model()
            report = None
            if mode != "dense":
                config = PruneConfig(ratio=RATIO, allocation="uniform", criterion="flap", reconstruction=mode,
                                     num_samples=32, seq_len=SEQ_LEN)
                model, report = prune(model, calibration, config, progress=False)
            cache[mode] = (perplexity(model, eval_windows), report)
            del model
            gc.collect()
        return cache[mode]

    return get


def test_smollm2_shape_is_gqa(smollm2):
    fresh_model, _ = smollm2
    config = fresh_model().config
    assert (config.model_type, config.num_attention_heads, config.num_key_value_heads) == ("llama", 9, 3)


def test_uniform_pruning_report(results):
    ppl, report = results("bias")
    assert math.isfinite(ppl)
    params = report.parameters
    assert abs(params.ratio_prunable - RATIO) < 0.01
    # GQA query mode: the same number of query heads goes from each of the 3 groups, KV heads stay
    for shape in report.shapes:
        assert shape.num_kv_heads == 3 and shape.num_heads % 3 == 0 and shape.num_heads < 9
    for layer in report.layers:
        assert layer.error <= layer.error_none * (1 + 1e-9)


def test_bias_compensation_beats_plain_pruning(results):
    ppl_none, _ = results("none")
    ppl_bias, _ = results("bias")
    assert math.isfinite(ppl_none) and math.isfinite(ppl_bias)
    assert ppl_bias < ppl_none, (ppl_bias, ppl_none)


def test_liar_beats_bias_compensation(results):
    ppl_bias, report_bias = results("bias")
    ppl_liar, report_liar = results("liar")
    assert math.isfinite(ppl_liar)
    assert ppl_liar < ppl_bias, (ppl_liar, ppl_bias)
    # the first layer sees the same inputs in both runs: LIAR's output error is lower there
    first_bias, first_liar = report_bias.layers[0], report_liar.layers[0]
    assert first_bias.kept_units == first_liar.kept_units
    assert first_liar.error <= first_bias.error


def test_dense_is_best(results):
    ppl_dense, _ = results("dense")
    ppl_liar, _ = results("liar")
    assert math.isfinite(ppl_dense) and ppl_dense < ppl_liar
