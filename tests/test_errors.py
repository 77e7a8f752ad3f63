"""Bad input gives a clear error, and no partial output folder is ever left behind (library API)."""

from __future__ import annotations

import re

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from reprune.checkpoint import OutputExistsError, check_output_dir, load, save_pruned
from reprune.data import CorpusError, calibration_ids, load_corpus
from reprune import PruneConfig, prune
from tiny_models import calibration_batch, tiny_model

WORDS = "the a of and to in is was for on that with as by it at from his her an".split()


@pytest.fixture(scope="module")
def tokenizer():
    vocab = {"[UNK]": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>")


@pytest.fixture(scope="module")
def ids():
    return calibration_batch(num_samples=4, seq_len=8)


def folder_entries(path):
    return sorted(p.name for p in path.iterdir())


# ------------------------------------------------------------------------------------------ ratio


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_out_of_range(ratio, ids, tmp_path):
    out = check_output_dir(tmp_path / "out", overwrite=False)  # what a caller does before the work
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="ratio"):
        prune(model, ids, PruneConfig(ratio=ratio), progress=False)
    assert not out.exists() and folder_entries(tmp_path) == []
    for name, tensor in model.state_dict().items():  # rejected before anything was touched
        assert torch.equal(tensor, before[name]), name


def test_ratio_beyond_capacity_of_eligible_modules(ids):
    with pytest.raises(ValueError, match="ratio"):
        prune(tiny_model("llama"), ids, PruneConfig(ratio=0.9, targets="attention"), progress=False)


def test_keep_first_last_leaving_nothing(ids):
    with pytest.raises(ValueError, match="keep_first"):
        prune(tiny_model("llama"), ids, PruneConfig(ratio=0.3, keep_first=2, keep_last=1), progress=False)


def test_unknown_criterion_and_reconstruction(ids):
    with pytest.raises(ValueError, match="criterion"):
        prune(tiny_model("opt"), ids, PruneConfig(criterion="no-such-thing"), progress=False)
    with pytest.raises(ValueError, match="reconstruction"):
        prune(tiny_model("opt"), ids, PruneConfig(reconstruction="no-such-thing"), progress=False)


def test_empty_calibration(ids):
    with pytest.raises(ValueError, match="calibration ids must be a non-empty"):
        prune(tiny_model("opt"), ids[:0], PruneConfig(), progress=False)


# ------------------------------------------------------------------------------------------ corpus


def test_corpus_shorter_than_one_sample(tokenizer):
    with pytest.raises(CorpusError, match="shorter than one sample"):
        calibration_ids(tokenizer, ["the a of and to in"], num_samples=4, seq_len=128)


def test_corpus_file_shorter_than_one_sample(tokenizer, tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("the a of and to in is was\n")
    with pytest.raises(CorpusError, match="128"):
        calibration_ids(tokenizer, path, num_samples=4, seq_len=128)


def test_corpus_long_enough_works(tokenizer):
    text = " ".join(WORDS * 20)
    samples = calibration_ids(tokenizer, [text], num_samples=3, seq_len=16, seed=1)
    assert samples.shape == (3, 16)
    again = calibration_ids(tokenizer, [text], num_samples=3, seq_len=16, seed=1)
    assert torch.equal(samples, again)  # seeded


@pytest.mark.parametrize("num_samples, seq_len", [(0, 16), (4, 1)])
def test_bad_sample_shape(tokenizer, num_samples, seq_len):
    with pytest.raises(CorpusError):
        calibration_ids(tokenizer, [" ".join(WORDS * 20)], num_samples=num_samples, seq_len=seq_len)


def test_missing_corpus_file(tokenizer, tmp_path):
    missing = tmp_path / "no" / "such" / "corpus.txt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        calibration_ids(tokenizer, missing, num_samples=4, seq_len=16)
    with pytest.raises(FileNotFoundError, match="corpus.txt"):
        load_corpus(str(missing))


def test_jsonl_without_text_field(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"body": "the a of"}\n')
    with pytest.raises(CorpusError, match="text"):
        load_corpus(path)


# ------------------------------------------------------------------------------------------ NaN


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("scale, message", [
    (float("inf"), "NaN or Inf in calibration activations"),  # overflow to Inf, as float16 models can
    (1e25, "overflow float32 when squared"),  # finite, but the Gram overflows: said so, not a failed solve
])
def test_activations_that_overflow_on_the_calibration_text(family, scale, message, ids):
    """Finite weights, broken activations: an FFN activation of block 1 is scaled on every forward."""
    model = tiny_model(family)
    block = model.model.layers[1] if family == "llama" else model.transformer.h[1]
    up = block.mlp.up_proj if family == "llama" else block.mlp.c_fc
    up.register_forward_hook(lambda module, inputs, output: output * scale)
    with pytest.raises(FloatingPointError, match=message):
        prune(model, ids, PruneConfig(ratio=0.3, reconstruction="liar"), progress=False)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_nan_weight_is_named_before_any_work(family, ids):
    model = tiny_model(family)
    query = model.model.layers[0].self_attn.q_proj if family == "llama" else model.transformer.h[0].attn.c_attn
    with torch.no_grad():
        query.weight[0, 0] = float("nan")
    name = "model.layers.0.self_attn.q_proj.weight" if family == "llama" else "transformer.h.0.attn.c_attn.weight"
    with pytest.raises(FloatingPointError, match=re.escape(name) + " holds NaN"):
        prune(model, ids, PruneConfig(ratio=0.3, reconstruction="liar"), progress=False)


# ------------------------------------------------------------------------------------------ loading


def test_load_missing_model_directory(tmp_path):
    missing = tmp_path / "no-model-here"
    with pytest.raises(FileNotFoundError, match="no-model-here"):
        load(missing)


def test_load_folder_without_config(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load(tmp_path)


# ------------------------------------------------------------------------------------------ saving


@pytest.fixture()
def pruned(ids):
    model, report = prune(tiny_model("opt"), ids, PruneConfig(ratio=0.3), progress=False)
    return model, report


def test_save_into_existing_folder_without_overwrite(pruned, tmp_path):
    model, report = pruned
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(OutputExistsError, match="existing"):
        save_pruned(model, None, out, report)
    assert folder_entries(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"
    assert folder_entries(tmp_path) == ["existing"]  # no staging folder either
    assert isinstance(OutputExistsError("x"), FileExistsError)


def test_save_with_overwrite_replaces_folder(pruned, tmp_path):
    model, report = pruned
    out = tmp_path / "existing"
    out.mkdir()
    (out / "old.txt").write_text("old")
    (out / "reprune_report.json").write_text("{}")  # only a reprune checkpoint may be replaced
    save_pruned(model, None, out, report, overwrite=True)
    assert not (out / "old.txt").exists() and (out / "config.json").exists()
    assert folder_entries(tmp_path) == ["existing"]


class Boom(RuntimeError):
    pass


def _fail(*args, **kwargs):
    raise Boom("disk full (simulated)")


def test_failure_during_save_leaves_nothing(pruned, tmp_path, monkeypatch):
    model, report = pruned
    monkeypatch.setattr(model, "save_pretrained", _fail)
    out = tmp_path / "out"
    with pytest.raises(Boom):
        save_pruned(model, None, out, report)
    assert not out.exists()
    assert folder_entries(tmp_path) == []  # in particular no ".out.partial-*" staging folder


def test_failure_during_overwrite_keeps_old_folder(pruned, tmp_path, monkeypatch):
    model, report = pruned
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    (out / "reprune_report.json").write_text("{}")
    monkeypatch.setattr(model, "save_pretrained", _fail)
    with pytest.raises(Boom):
        save_pruned(model, None, out, report, overwrite=True)
    assert folder_entries(out) == ["old.txt", "reprune_report.json"] and (out / "old.txt").read_text() == "old"
    assert folder_entries(tmp_path) == ["out"]


def test_failure_in_tokenizer_save_leaves_nothing(pruned, tmp_path):
    model, report = pruned

    class BadTokenizer:
        def save_pretrained(self, path):
            raise Boom("tokenizer cannot be written")

    with pytest.raises(Boom):
        save_pruned(model, BadTokenizer(), tmp_path / "out", report)
    assert folder_entries(tmp_path) == []
