"""The command line end to end on a tiny LLaMA that uses SmolLM2's real tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoTokenizer

from reprune.record import RunRecord
from reprune.checkpoint import load
from reprune.cli import build_config, build_parser, main
from reprune.models import smollm2_path

CORPUS = (
    "The quick brown fox jumps over the lazy dog. Pruning removes whole attention heads and neurons, "
    "then repairs the output projections in closed form from a little calibration text. "
) * 40


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "calib.txt"
    path.write_text(CORPUS)
    return path


def test_prune_then_eval(tiny_dir: Path, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "pruned"
    weights_before = (tiny_dir / "model.safetensors").read_bytes()
    code = main(["prune", "--model", str(tiny_dir), "--ratio", "0.3", "--criterion", "wanda-sp",
                 "--reconstruct", "liar", "--calib", str(corpus), "--num-samples", "4", "--seq-len", "32",
                 "--device", "cpu", "--out", str(out)])
    assert code == 0
    report = RunRecord.read(out)
    assert report.config.criterion == "wanda-sp" and report.config.reconstruction == "liar"
    model = load(out)
    assert sum(p.numel() for p in model.parameters()) == report.parameters.total_after
    assert report.parameters.total_after < report.parameters.total_before
    assert (tiny_dir / "model.safetensors").read_bytes() == weights_before  # input never modified

    code = main(["eval", "--model", str(out), "--ppl", str(corpus), "--seq-len", "16,32", "--max-windows", "2"])
    assert code == 0
    results = json.loads((out / "reprune_eval.json").read_text())
    assert {"ppl@16", "ppl@32"} <= results.keys()
    assert results["ppl@32"]["windows"] == 2 and results["ppl@32"]["ppl"] > 1
    assert "perplexity" in capsys.readouterr().out


def test_existing_output_is_refused_before_any_work(tiny_dir: Path, corpus: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = main(["prune", "--model", str(tiny_dir), "--calib", str(corpus), "--out", str(out)])
    assert code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/no/such/model"], "Model folder not found"),
        (["--ratio", "1.5"], "ratio"),
        (["--calib", "/no/such/corpus.txt"], "Corpus file not found"),
    ],
)
def test_bad_input_names_the_problem(tiny_dir: Path, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                     args: list[str], message: str) -> None:
    out = tmp_path / "out"
    base = {"--model": str(tiny_dir), "--calib": str(corpus), "--ratio": "0.3"}
    base.update(dict(zip(args[::2], args[1::2])))
    argv = ["prune", "--out", str(out), "--num-samples", "4", "--seq-len", "32", "--device", "cpu"]
    for key, value in base.items():
        argv += [key, value]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert not any(p.name.startswith(".out.partial-") for p in tmp_path.iterdir())


def test_preset_fields_can_be_overridden_from_the_command_line() -> None:
    parse = build_parser().parse_args
    base = ["prune", "--model", "smollm2", "--out", "x", "--method", "goa"]
    assert build_config(parse(base)).recovery_alpha == 1e-4  # the paper's ridge
    config = build_config(parse([*base, "--recovery-alpha", "0.01", "--num-samples", "64", "--reconstruct", "liar"]))
    assert (config.recovery_alpha, config.num_samples, config.reconstruction, config.recovery) == (0.01, 64, "liar", "goa")
    assert (build_config(parse(base)).recovery_samples, build_config(parse(base)).keep_last) == (1024, 2)
    config = build_config(parse([*base, "--recovery-samples", "128", "--heldout-samples", "0"]))
    assert (config.recovery_samples, config.heldout_samples) == (128, 0)
