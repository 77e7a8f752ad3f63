"""``--model`` takes a GGUF file (converted once into the cache), and every output folder carries a Hugging Face
model card whose metadata repeats the run record and whose evaluation section follows ``reprune eval``."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
import yaml

from reprune import checkpoint
from reprune.cli import main
from reprune.config import PruneConfig
from reprune.model_card import CARD_FILE, render_card
from reprune.models import gguf_cache_name
from reprune.preflight import PreflightError
from reprune.record import RunRecord
from reprune.workflow import EvalOptions, evaluate_folder, prune_folder
from tiny_models import write_tiny_gguf

WORDS = "the cat sat on a mat and the hat was red while a dog ate the bread".split()
SMALL = PruneConfig(ratio=0.25, num_samples=8, seq_len=32, device="cpu")


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("REPRUNE_CACHE", str(tmp_path / "cache"))
    write_tiny_gguf(tmp_path / "tiny.gguf")
    (tmp_path / "corpus.txt").write_text(" ".join(WORDS * 60))
    return tmp_path


def card_of(folder: Path) -> tuple[dict, str]:
    text = (folder / CARD_FILE).read_text(encoding="utf-8")
    assert text.startswith("---\n")
    meta, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(meta), body


def test_gguf_is_converted_once_and_pruned(work: Path) -> None:
    gguf = work / "tiny.gguf"
    out, record = prune_folder(gguf, work / "out", SMALL, str(work / "corpus.txt"), progress=False)
    (converted,) = (work / "cache").iterdir()
    ids = torch.tensor([[5, 40, 77, 120, 9, 33]])
    reference = transformers.AutoModelForCausalLM.from_pretrained(work, gguf_file=gguf.name, dtype=torch.float32)
    assert torch.equal(checkpoint.load(converted)(ids).logits, reference(ids).logits)
    assert record.input_model == str(gguf) and record.parameters.total_after < record.parameters.total_before
    assert checkpoint.load(out)(ids).logits.shape == (1, 6, 262)
    stamp = (converted / "model.safetensors").stat().st_mtime_ns
    prune_folder(gguf, work / "out", SMALL, str(work / "corpus.txt"), overwrite=True, progress=False)
    assert [p.name for p in (work / "cache").iterdir()] == [converted.name]
    assert (converted / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again


def test_gguf_cache_key_follows_the_content(work: Path) -> None:
    other = work / "other" / "tiny.gguf"
    other.parent.mkdir()
    write_tiny_gguf(other, seed=1)
    copy = work / "copy" / "tiny.gguf"
    copy.parent.mkdir()
    shutil.copyfile(work / "tiny.gguf", copy)
    assert gguf_cache_name(work / "tiny.gguf") != gguf_cache_name(other)
    assert gguf_cache_name(work / "tiny.gguf") == gguf_cache_name(copy)


@pytest.mark.parametrize("content, message", [
    (None, "GGUF file not found"),
    (b"PK\x03\x04 a zip, not gguf", "is not a GGUF file"),
    ("truncated", "GGUF header cannot be read"),
])
def test_a_bad_gguf_is_refused_before_any_conversion(work: Path, content: bytes | str | None, message: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    bad = work / "bad.gguf"
    if content == "truncated":
        bad.write_bytes((work / "tiny.gguf").read_bytes()[:200])
    elif content is not None:
        bad.write_bytes(content)
    with pytest.raises(PreflightError if content else FileNotFoundError, match=message):
        prune_folder(bad, work / "out", SMALL, str(work / "corpus.txt"), progress=False)
    assert main(["eval", "--model", str(bad), "--ppl", str(work / "corpus.txt")]) == 2
    assert message in capsys.readouterr().err
    assert not (work / "cache").exists() or not any((work / "cache").iterdir())


def test_gguf_options_are_checked_before_the_conversion(work: Path) -> None:
    with pytest.raises(ValueError, match="ratio"):
        prune_folder(work / "tiny.gguf", work / "out", PruneConfig(ratio=1.5), str(work / "corpus.txt"))
    assert not (work / "cache").exists() or not any((work / "cache").iterdir())


def test_card_repeats_the_record_and_follows_eval(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["prune", "--model", str(work / "tiny.gguf"), "--out", str(work / "out"), "--ratio", "0.25",
                 "--calib", str(work / "corpus.txt"), "--num-samples", "8", "--seq-len", "32", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    record = RunRecord.read(work / "out")
    meta, body = card_of(work / "out")
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"reprune", "pruning", record.model_type} <= set(meta["tags"])
    assert "base_model" not in meta  # a local file has no Hub id
    bundled = dataclasses.replace(record, base_model="HuggingFaceTB/SmolLM2-135M-Instruct")
    assert yaml.safe_load(render_card(bundled, "out")[4:].split("\n---\n")[0])["base_model"] == bundled.base_model
    summary = meta["reprune"]
    assert (summary["criterion"], summary["reconstruction"], summary["allocation"], summary["recovery"]) == (
        record.config.criterion, record.config.reconstruction, record.config.allocation, record.config.recovery)
    assert summary["ratio"] == record.config.ratio == 0.25
    assert summary["ratio_total"] == record.parameters.ratio_total
    assert summary["parameters_after"] == record.parameters.total_after
    assert (summary["calibration_source"], summary["calibration_samples"], summary["calibration_seq_len"]) == (
        str(work / "corpus.txt"), 8, 32)
    assert summary["plain_transformers"] is True and "trust_remote_code" not in body
    assert "Not evaluated yet" in body

    main(["eval", "--model", str(work / "out"), "--ppl", str(work / "corpus.txt"), "--seq-len", "32",
          "--max-windows", "3", "--device", "cpu"])
    results = json.loads((work / "out" / "reprune_eval.json").read_text())
    meta_after, body = card_of(work / "out")
    assert meta_after == meta and "Not evaluated yet" not in body
    assert f"| perplexity, length 32 ({results['ppl@32']['tokens']:,} tokens) | {results['ppl@32']['ppl']:.3f} |" in body


def test_global_card_says_trust_remote_code(work: Path) -> None:
    config = PruneConfig(ratio=0.4, allocation="global", num_samples=8, seq_len=32, device="cpu")
    out, _ = prune_folder(work / "tiny.gguf", work / "out", config, str(work / "corpus.txt"), progress=False)
    meta, body = card_of(out)
    assert meta["reprune"]["plain_transformers"] is False and meta["reprune"]["allocation"] == "global"
    assert 'from_pretrained("path/to/this/folder", trust_remote_code=True)' in body
    model = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)  # what the card says
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 262)


def test_the_card_is_written_inside_the_staged_output(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while writing the card leaves no output folder: the card is part of the atomic write."""
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "write_card", fail)
    with pytest.raises(OSError, match="disk full"):
        prune_folder(work / "tiny.gguf", work / "out", SMALL, str(work / "corpus.txt"), progress=False)
    assert not (work / "out").exists() and not [p for p in work.iterdir() if p.name.startswith(".out")]
