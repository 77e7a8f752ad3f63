"""Data-free calibration ("Self-Gen"): calibration text sampled from the model itself.

As in LLM-QAT's data-free distillation and LLM-Pruner's data-free setting, each sample starts from the
BOS token and continues by top-k sampling (``temperature=1.0``, ``top_k=50``), so the calibration
activations follow the model's own distribution when no corpus may be used. EOS is suppressed so
every sample has exactly ``seq_len`` tokens. Sampling uses its own seeded generator: the result
depends only on the model, ``seed`` and ``batch_size``, never on the global random state.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from reprune.adapters import get_adapter

TEMPERATURE = 1.0
TOP_K = 50


@torch.inference_mode()
def self_generated_ids(
    model: nn.Module,
    tokenizer,
    num_samples: int,
    seq_len: int,
    seed: int,
    batch_size: int = 8,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """``num_samples`` sequences of ``seq_len`` token ids sampled from a causal LM, shape (N, L), on the CPU.

    Each row is BOS followed by ``seq_len - 1`` sampled tokens. ``device`` defaults to the model's; the
    model is moved there for sampling and back afterwards.
    """
    if num_samples < 1 or seq_len < 2:
        raise ValueError(f"need num_samples ≥ 1 and seq_len ≥ 2 (got {num_samples} × {seq_len})")
    if not get_adapter(model).causal or model.get_output_embeddings() is None:
        raise ValueError(
            f"self-generated calibration samples text from a causal language model with an LM head; "
            f"{type(model).__name__} ({model.config.model_type}) cannot generate: use a text corpus "
            "(e.g. --calib wiki-embedded) instead"
        )
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to start self-generated samples from")
    home = next(model.parameters()).device
    target = torch.device(device) if device is not None else home
    model.to(target)
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=target).manual_seed(seed)
    rows = []
    try:
        for first in tqdm(range(0, num_samples, batch_size), desc="self-generating calibration", leave=False):
            count = min(batch_size, num_samples - first)
            rows.append(_sample(model, start, tokenizer.eos_token_id, count, seq_len, generator, target))
    finally:
        model.train(was_training)
        model.to(home)
    return torch.cat(rows)


def _sample(model: nn.Module, start: int, eos: int | None, count: int, seq_len: int,
            generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """One batch: BOS, then top-k sampling, one token at a time with the KV cache."""
    tokens = [torch.full((count, 1), start, dtype=torch.long, device=device)]
    cache = None
    for _ in range(seq_len - 1):
        out = model(input_ids=tokens[-1], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        logits = out.logits[:, -1].float() / TEMPERATURE
        if eos is not None:
            logits[:, eos] = -torch.inf
        top = logits.topk(min(TOP_K, logits.shape[-1]), dim=-1)
        choice = torch.multinomial(torch.softmax(top.values, dim=-1), 1, generator=generator)
        tokens.append(top.indices.gather(1, choice))
    return torch.cat(tokens, dim=1).cpu()
