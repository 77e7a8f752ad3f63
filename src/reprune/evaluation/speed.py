"""Size and speed of a (pruned) model: parameters, bytes, prefill and KV-cached decode latency, peak memory,
and the forward FLOPs its shapes imply (what a prefill speed-up is to be compared with).

Timings are medians over ``repeats`` runs after one warm-up run, under ``torch.inference_mode`` with
CUDA synchronisation around each timed region. Inputs are random token ids (fixed seed), so the numbers
depend only on shapes, not on text.
"""

from __future__ import annotations

import inspect
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from reprune.evaluation.perplexity import eval_mode, model_max_length, prepare_model

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def directory_size(path: str | Path) -> int:
    """Bytes on disk of a checkpoint folder (all files, recursively; links followed) or of one file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint path not found: {path}")
    if path.is_file():
        return path.stat().st_size
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def forward_flops(model: nn.Module, seq_len: int) -> int:
    """FLOPs (2 per multiply-add) of one forward over one sequence of ``seq_len`` tokens, from the shapes:
    every linear layer on every token (projections and the LM head, which a prefill runs at every position)
    and, per block, attention's scores QKᵀ and weighted values PV over the full ``seq_len``² square. Norms,
    activations, softmax and embeddings (O(width) per token) are left out. Dense models only: a mixture's
    experts are 3-D parameters that each token uses only some of."""
    from reprune.adapters import get_adapter

    adapter = get_adapter(model)
    mixtures = [m.name for i in range(len(adapter.blocks())) for m in adapter.depth2_modules(i) if m.moe]
    if mixtures:
        raise NotImplementedError(f"forward_flops counts dense models; {mixtures[0]} is a mixture of experts, "
                                  "whose cost depends on the routing")
    linear = sum(module.weight.numel() for module in model.modules() if isinstance(module, (nn.Linear, Conv1D)))
    attention = sum(2 * 2 * seq_len * seq_len * shape.num_heads * shape.head_dim for shape in adapter.layer_shapes())
    return 2 * linear * seq_len + attention


def _synchronize(device: torch.device) -> None:
    """CUDA kernels run asynchronously: wait for them so wall-clock timings cover the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(run: Callable[[], object], device: torch.device) -> float:
    """Wall time of ``run`` in seconds, with the accelerator's queue drained before and after."""
    _synchronize(device)
    start = time.perf_counter()
    run()
    _synchronize(device)
    return time.perf_counter() - start


def _peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _can_generate(model: nn.Module) -> bool:
    """Decoder LMs get a decode measurement; encoders (and plain modules) only a prefill."""
    can_generate = getattr(model, "can_generate", None)
    return bool(callable(can_generate) and can_generate())


def _decode(model: nn.Module, input_ids: torch.Tensor, new_tokens: int, device: torch.device) -> float:
    """Greedy token-by-token generation with the KV cache; returns the seconds spent after the prefill."""
    # Like generate(): compute the prefill's logits for the last position only when the model allows it.
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    output = model(input_ids=input_ids, use_cache=True, **keep)
    cache, token = output.past_key_values, output.logits[:, -1:].argmax(dim=-1)
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(new_tokens):
        output = model(input_ids=token, past_key_values=cache, use_cache=True)
        cache, token = output.past_key_values, output.logits[:, -1:].argmax(dim=-1)
    _synchronize(device)
    return time.perf_counter() - start


def measure_speed(
    model: nn.Module,
    tokenizer_or_vocab_size: PreTrainedTokenizerBase | int,
    batch_size: int = 1,
    prompt_len: int = 128,
    new_tokens: int = 32,
    repeats: int = 3,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> dict:
    """Measure size, prefill and decode speed, and peak memory of ``model``.

    Prefill = one forward over ``batch_size x prompt_len`` tokens. Decode = ``new_tokens`` single-token
    steps with the KV cache after a prefill (models that cannot generate, e.g. BERT encoders, get prefill
    only and ``None`` for the decode entries). Peak memory: on CUDA ``torch.cuda.max_memory_allocated``
    during the measurement (weights included); on CPU the rise of the process's peak RSS during the
    measurement, a lower bound that is 0 when the process had already peaked higher before.
    """
    if min(batch_size, prompt_len, repeats) < 1 or new_tokens < 0:
        raise ValueError("batch_size, prompt_len and repeats must be >= 1 and new_tokens >= 0.")
    vocab_size = tokenizer_or_vocab_size if isinstance(tokenizer_or_vocab_size, int) else len(tokenizer_or_vocab_size)
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(embeddings, nn.Embedding):
        vocab_size = min(vocab_size, embeddings.num_embeddings)
    decoder = _can_generate(model) and new_tokens > 0
    limit = model_max_length(model)
    needed = prompt_len + (new_tokens if decoder else 0)
    if needed > limit:
        raise ValueError(f"prompt_len + new_tokens = {needed} exceeds the model's maximum length {limit}; shorten them.")
    dev = prepare_model(model, device)
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(vocab_size, (batch_size, prompt_len), generator=generator).to(dev)
    attention_mask = torch.ones_like(input_ids)

    def prefill() -> object:
        return model(input_ids=input_ids, attention_mask=attention_mask)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rss_before = _peak_rss_bytes()
    with torch.inference_mode(), eval_mode(model):
        prefill()  # warm-up: kernels, allocator, lazy initialisation
        if decoder:
            _decode(model, input_ids, new_tokens, dev)
        prefill_s = statistics.median(_timed(prefill, dev) for _ in range(repeats))
        decode_s = statistics.median(_decode(model, input_ids, new_tokens, dev) for _ in range(repeats)) if decoder else None
    if dev.type == "cuda":
        peak_memory, memory_source = torch.cuda.max_memory_allocated(dev), "cuda_max_memory_allocated"
    else:
        peak_memory, memory_source = _peak_rss_bytes() - rss_before, "cpu_peak_rss_increase"
    parameters = list(model.parameters())
    return {
        "params": sum(p.numel() for p in parameters),
        "param_bytes": sum(p.numel() * p.element_size() for p in parameters),
        "batch_size": batch_size,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens if decoder else 0,
        "prefill_latency_s": prefill_s,
        "prefill_tokens_per_s": batch_size * prompt_len / prefill_s,
        "decode_latency_per_token_s": decode_s / new_tokens if decode_s is not None else None,
        "decode_tokens_per_s": batch_size * new_tokens / decode_s if decode_s is not None else None,
        "peak_memory_bytes": peak_memory,
        "memory_source": memory_source,
        "device": str(dev),
    }


def compare_speed(
    dense: nn.Module, pruned: nn.Module, tokenizer_or_vocab_size: PreTrainedTokenizerBase | int, **kwargs: Any
) -> dict:
    """Measure both models with the same settings (``kwargs`` go to :func:`measure_speed`) and give ratios.

    Speed-ups are dense latency / pruned latency (> 1 means the pruned model is faster); ``param_ratio``
    is pruned / dense parameters.
    """
    dense_stats = measure_speed(dense, tokenizer_or_vocab_size, **kwargs)
    pruned_stats = measure_speed(pruned, tokenizer_or_vocab_size, **kwargs)
    decode_speedup = None
    if dense_stats["decode_latency_per_token_s"] and pruned_stats["decode_latency_per_token_s"]:
        decode_speedup = dense_stats["decode_latency_per_token_s"] / pruned_stats["decode_latency_per_token_s"]
    return {
        "dense": dense_stats,
        "pruned": pruned_stats,
        "prefill_speedup": dense_stats["prefill_latency_s"] / pruned_stats["prefill_latency_s"],
        "decode_speedup": decode_speedup,
        "param_ratio": pruned_stats["params"] / dense_stats["params"],
        "param_bytes_ratio": pruned_stats["param_bytes"] / dense_stats["param_bytes"],
    }
