"""Pruned checkpoints load in a fresh interpreter that never imports reprune.

Uniformly pruned LLaMA with bias compensation: plain ``AutoModelForCausalLM.from_pretrained``.
Per-layer sizes (global allocation) and head-pruned BERT: ``trust_remote_code=True``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from reprune.checkpoint import REMOTE_FILE, save_pruned
from reprune import PruneConfig, prune
from tiny_models import calibration_batch, contract_model, model_output, tiny_model

CHILD = textwrap.dedent(
    """
    import json, sys
    import torch, transformers
    folder, auto, trust, ids_path, expected_path = sys.argv[1:6]
    cls = getattr(transformers, auto)
    model = cls.from_pretrained(folder, trust_remote_code=trust == "1").eval()
    ids = torch.load(ids_path)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    got = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
    expected = torch.load(expected_path)
    leaked = sorted(k for k in sys.modules if k == "reprune" or k.startswith("reprune."))
    print(json.dumps({
        "leaked": leaked,
        "class": type(model).__name__,
        "shape": list(got.shape),
        "max_diff": (got - expected).abs().max().item() if got.shape == expected.shape else None,
    }))
    """
)


def load_in_subprocess(folder, auto_class: str, trust_remote_code: bool, ids: torch.Tensor,
                       expected: torch.Tensor, tmp_path) -> dict:
    ids_path, expected_path = tmp_path / "ids.pt", tmp_path / "expected.pt"
    torch.save(ids, ids_path)
    torch.save(expected, expected_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update({
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "hf_modules"),  # remote code is copied here, not into ~/.cache
        "TQDM_DISABLE": "1",
    })
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), auto_class, "1" if trust_remote_code else "0",
         str(ids_path), str(expected_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, f"child failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def ids():
    return calibration_batch(num_samples=8, seq_len=16)


def test_uniform_llama_loads_with_plain_transformers(ids, tmp_path):
    model = tiny_model("llama")  # hidden 32, 4 query heads over 2 KV heads
    model, report = prune(model, ids, PruneConfig(ratio=0.3, allocation="uniform", reconstruction="bias"),
                          progress=False)
    assert all(s.num_heads == 2 for s in report.shapes)  # 32 is still a multiple of the head count
    expected = model_output(model, ids)
    out = save_pruned(model, None, tmp_path / "plain", report)
    config = json.loads((out / "config.json").read_text())
    assert "reprune_manifest" not in config and "auto_map" not in config
    assert not (out / REMOTE_FILE).exists()
    assert config["num_attention_heads"] == 2 and config["num_key_value_heads"] == 2
    assert config["intermediate_size"] == report.shapes[0].intermediate_size
    assert config["mlp_bias"] is True and config["attention_bias"] is True  # the compensation biases
    assert json.loads((out / "reprune_report.json").read_text())["plain_transformers"] is True

    child = load_in_subprocess(out, "AutoModelForCausalLM", False, ids, expected, tmp_path)
    assert child["leaked"] == []
    assert child["class"] == "LlamaForCausalLM"
    assert child["max_diff"] is not None and child["max_diff"] < 1e-5


def test_global_llama_loads_with_remote_code(ids, tmp_path):
    model, report = prune(tiny_model("llama"), ids,
                          PruneConfig(ratio=0.3, allocation="global", reconstruction="liar", multiple_of=1),
                          progress=False)
    shapes = report.shapes
    assert any(s != shapes[0] for s in shapes), "global allocation should give per-layer sizes here"
    expected = model_output(model, ids)
    out = save_pruned(model, None, tmp_path / "remote", report)
    config = json.loads((out / "config.json").read_text())
    assert config["reprune_manifest"]["modules"]
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_reprune.RepruneLlamaForCausalLM"
    assert (out / REMOTE_FILE).exists()

    child = load_in_subprocess(out, "AutoModelForCausalLM", True, ids, expected, tmp_path)
    assert child["leaked"] == []
    assert child["class"] == "RepruneLlamaForCausalLM"
    assert child["max_diff"] is not None and child["max_diff"] < 1e-5


def test_bert_head_pruned_loads_with_remote_code(ids, tmp_path):
    model, report = prune(tiny_model("bert"), ids, PruneConfig(ratio=0.3, allocation="uniform", reconstruction="liar"), progress=False)
    assert all(s.num_heads == 3 for s in report.shapes)  # 3 × 8 ≠ 32: needs the manifest
    expected = model_output(model, ids)
    out = save_pruned(model, None, tmp_path / "bert", report)
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_reprune.RepruneBertModel"

    child = load_in_subprocess(out, "AutoModel", True, ids, expected, tmp_path)
    assert child["leaked"] == []
    assert child["class"] == "RepruneBertModel"
    assert child["max_diff"] is not None and child["max_diff"] < 1e-5


# each needs a manifest feature besides projection shapes: a layer's own view of the config (phi3), an
# argument selection (mpnet), a module list length (stablelm), a per-head parameter shape (cohere), the base
# class's checkpoint key renames (gpt_neox's embed_out), 3-D expert parameters with reprune's routed expert
# biases (mixtral), per-head sinks beside transposed experts (gpt_oss)
MANIFEST_FEATURES = [("phi3", "AutoModelForCausalLM", "ReprunePhi3ForCausalLM"),
                     ("mixtral", "AutoModelForCausalLM", "RepruneMixtralForCausalLM"),
                     ("gpt_oss", "AutoModelForCausalLM", "RepruneGptOssForCausalLM"),
                     ("mpnet", "AutoModel", "RepruneMPNetModel"),
                     ("stablelm", "AutoModelForCausalLM", "RepruneStableLmForCausalLM"),
                     ("cohere", "AutoModelForCausalLM", "RepruneCohereForCausalLM"),
                     ("gpt_neox", "AutoModelForCausalLM", "RepruneGPTNeoXForCausalLM")]


@pytest.mark.parametrize("model_type, auto, expected_class", MANIFEST_FEATURES)
def test_head_pruned_families_load_with_remote_code(model_type, auto, expected_class, ids, tmp_path):
    # intercept=True: the manifest is under test, and `auto` would make an output whose sizes and biases the
    # config can state (e.g. cohere when both blocks keep two heads) a stock checkpoint instead
    # FLAP's threshold keeps the mixtures' heads at 45 % (their experts' neurons rank lower): prune more there
    ratio = 0.6 if model_type in ("mixtral", "gpt_oss") else 0.45
    model, report = prune(contract_model(model_type), ids,
                          PruneConfig(ratio=ratio, allocation="global", intercept=True), progress=False)
    assert any(s.num_heads < 4 for s in report.shapes)
    expected = model_output(model, ids)
    out = save_pruned(model, None, tmp_path / model_type, report)
    assert json.loads((out / "config.json").read_text())["reprune_manifest"]

    child = load_in_subprocess(out, auto, True, ids, expected, tmp_path)
    assert child["leaked"] == []
    assert child["class"] == expected_class
    assert child["max_diff"] is not None and child["max_diff"] < 1e-5
