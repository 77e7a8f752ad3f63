"""Perplexity over a long text with non-overlapping windows (the lm-eval / FLAP / Wanda convention).

The whole text is tokenised once, cut into ``floor(N / seq_len)`` windows of ``seq_len`` tokens (the
tail is dropped), and perplexity is ``exp`` of the mean negative log-likelihood over every predicted
token (``seq_len - 1`` per window: the first token of a window has no context and is not scored).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from reprune.preflight import check_device, read_text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def prepare_model(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """Move ``model`` to ``device`` (if given) and return the device its inputs must go to.

    Shared by all evaluation modules so that every entry point accepts the same ``device`` argument.
    With ``device=None`` the model stays where it is (the device of its first parameter, CPU if none).
    """
    if device is not None:
        check_device(str(device))
        target = torch.device(device)
        model.to(target)
        return target
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Switch dropout off for a measurement and restore the caller's train/eval state afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def model_max_length(model: nn.Module, default: int = 2048) -> int:
    """Longest input the model accepts, read from its config like lm-eval (2048 when unknown)."""
    config = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def read_text_file(path: str | Path) -> str:
    """Read a plain-text corpus (.txt/.raw/.tokens) as one string.

    Text mode turns CRLF into ``\\n``, so the result is the file's lines joined with ``\\n`` as read,
    which is the form papers use for WikiText-2 ``wiki.test.raw``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Text file not found: {path}. Pass the path of an existing .txt/.raw file.")
    return read_text(path)


def perplexity(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    seq_len: int = 512,
    batch_size: int = 4,
    max_windows: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict:
    """Perplexity of a causal LM on ``text`` over non-overlapping ``seq_len``-token windows.

    The text is tokenised the way FLAP/Wanda do it (``tokenizer(text)``, so a tokenizer that adds a BOS
    token adds it once at the very start). ``max_windows`` keeps only the first windows, for quick runs.
    Returns ``ppl``, ``nll`` (mean per predicted token, nats), ``tokens`` (predicted tokens),
    ``windows`` and ``seq_len``.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 (one context token and one predicted token), got {seq_len}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    limit = model_max_length(model)
    if seq_len > limit:
        raise ValueError(f"seq_len={seq_len} is longer than the model's maximum length {limit}; pass seq_len <= {limit}.")
    ids = torch.as_tensor(tokenizer(text)["input_ids"], dtype=torch.long).flatten()
    n_windows = ids.numel() // seq_len
    if n_windows == 0:
        raise ValueError(
            f"The text has {ids.numel()} tokens, fewer than one window of seq_len={seq_len}; "
            "pass a longer text or a smaller seq_len."
        )
    if max_windows is not None:
        if max_windows < 1:
            raise ValueError(f"max_windows must be at least 1 or None, got {max_windows}.")
        n_windows = min(n_windows, max_windows)
    windows = ids[: n_windows * seq_len].view(n_windows, seq_len)
    dev = prepare_model(model, device)
    total_nll = 0.0
    with torch.inference_mode(), eval_mode(model):
        for start in tqdm(range(0, n_windows, batch_size), desc="perplexity", unit="batch", disable=not progress):
            batch = windows[start : start + batch_size].to(dev)
            logits = model(input_ids=batch, use_cache=False).logits
            total_nll += F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum"
            ).item()
    tokens = n_windows * (seq_len - 1)
    nll = total_nll / tokens
    return {"ppl": math.exp(nll), "nll": nll, "tokens": tokens, "windows": n_windows, "seq_len": seq_len}
