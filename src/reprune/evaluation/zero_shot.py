"""Zero-shot log-likelihood scoring of multiple-choice tasks, reproducing lm-evaluation-harness (v0.4).

For each (context, continuation) request the score is the summed log-probability of the continuation
tokens given the context. Tokenisation follows lm-eval's ``HFLM``: trailing spaces of the context move to
the continuation, ``context + continuation`` and ``context`` are encoded without special tokens, and the
continuation tokens are the tail of the whole encoding beyond the context's length. An empty context is
replaced by the BOS token (EOS if there is none); ``add_bos=True`` prepends BOS to every context, like
lm-eval's ``add_bos_token=True``. Inputs longer than the model's maximum length are cut from the left.

Metrics: ``acc`` = argmax of the summed log-likelihood; ``acc_norm`` = argmax of log-likelihood divided
by the character length of the answer text (lm-eval's ``len(choice)``, i.e. without the one-space target
delimiter). LAMBADA reports last-word accuracy (every target token is the greedy argmax) and the target
word's perplexity ``exp(-mean log-likelihood)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from reprune.evaluation.perplexity import eval_mode, model_max_length, prepare_model
from reprune.evaluation.tasks import MultipleChoiceItem, load_task

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Tasks scored by last-word prediction rather than by choosing among continuations.
LAST_WORD_TASKS = frozenset({"lambada"})


class LogLikelihood(NamedTuple):
    """Score of one request: summed log-probability, whether greedy decoding reproduces it, token count."""

    logprob: float
    is_greedy: bool
    num_tokens: int


def _prefix_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """Token that stands in for an empty context (lm-eval's ``prefix_token_id``: BOS, else EOS)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError("The tokenizer has neither a BOS nor an EOS token to stand in for an empty context.")
    return token


def encode_pair(
    tokenizer: PreTrainedTokenizerBase, context: str, continuation: str, add_bos: bool = False
) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) split the way lm-eval's ``HFLM._encode_pair`` splits them."""
    if not continuation:
        raise ValueError(f"Empty continuation for context {context[-60:]!r}: there is nothing to score.")
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if context:
        whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        continuation_ids = whole[len(context_ids) :]
    else:
        context_ids = [_prefix_token(tokenizer)]
        continuation_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if add_bos:
        if tokenizer.bos_token_id is None:
            raise ValueError("add_bos=True but the tokenizer has no BOS token; call with add_bos=False.")
        if context_ids[0] != tokenizer.bos_token_id:
            context_ids = [tokenizer.bos_token_id, *context_ids]
    if not continuation_ids:
        raise ValueError(f"The continuation {continuation!r} produced no tokens after the context.")
    return list(context_ids), list(continuation_ids)


def forward_rows(encoded: Sequence[tuple[list[int], list[int]]]) -> list[list[int]]:
    """Requests grouped into forward rows and ordered as lm-eval's ``Collator`` does, so batches match its own.

    Requests whose ``context + continuation[:-1]`` agree feed the same input to the model (one-token answers
    to one question) and share a row, led by the first with the longest continuation; rows go longest first,
    ties by the leader's token ids. Identical batches give identical float32 sums, not just close ones.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, (context, continuation) in enumerate(encoded):
        groups.setdefault((*context, *continuation[:-1]), []).append(index)

    def leader(members: list[int]) -> int:
        return max(members, key=lambda i: len(encoded[i][1]))

    def sort_key(members: list[int]) -> tuple[int, tuple[int, ...]]:
        context, continuation = encoded[leader(members)]
        return -(len(context) + len(continuation)), (*context, *continuation)

    return [sorted(members, key=lambda i: i != leader(members)) for members in sorted(groups.values(), key=sort_key)]


def loglikelihoods(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[tuple[str, str]],
    batch_size: int = 8,
    device: str | torch.device | None = None,
    add_bos: bool = False,
    max_length: int | None = None,
    progress: bool = True,
    desc: str = "loglikelihood",
) -> list[LogLikelihood]:
    """Score (context, continuation) requests with one right-padded forward pass per batch of rows.

    Rows are planned by ``forward_rows`` (lm-eval's order and sharing) and results returned in input order.
    ``max_length`` overrides the model's maximum input length (used for left truncation).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    limit = max_length or model_max_length(model)
    encoded = [encode_pair(tokenizer, context, continuation, add_bos) for context, continuation in requests]
    for (context, continuation), (_, continuation_ids) in zip(requests, encoded):
        if len(continuation_ids) > limit:
            raise ValueError(
                f"Continuation {continuation[:60]!r} has {len(continuation_ids)} tokens, more than the model's "
                f"maximum length {limit}; it cannot be scored."
            )
    rows_plan = forward_rows(encoded)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dev = prepare_model(model, device)
    results: list[LogLikelihood | None] = [None] * len(encoded)
    with torch.inference_mode(), eval_mode(model):
        for start in tqdm(range(0, len(rows_plan), batch_size), desc=desc, unit="batch", disable=not progress):
            groups = rows_plan[start : start + batch_size]
            # Input = (context + continuation) of the row's leader cut to limit + 1 tokens from the left, minus the last.
            rows = [(encoded[members[0]][0] + encoded[members[0]][1])[-(limit + 1) :][:-1] for members in groups]
            batch = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
            for row, ids in enumerate(rows):
                batch[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            logits = model(input_ids=batch.to(dev), use_cache=False).logits
            for row, members in enumerate(groups):
                end = len(rows[row])
                for i in members:
                    target = torch.tensor(encoded[i][1], dtype=torch.long, device=logits.device)
                    logprobs = logits[row, end - len(target) : end].float().log_softmax(dim=-1)
                    results[i] = LogLikelihood(
                        logprob=logprobs.gather(-1, target[:, None]).sum().item(),
                        is_greedy=bool((logprobs.argmax(dim=-1) == target).all()),
                        num_tokens=len(target),
                    )
    return results  # type: ignore[return-value]


def _answer_length(continuation: str) -> int:
    """lm-eval's acc_norm length: characters of the answer text without the one-space target delimiter."""
    return max(1, len(continuation[1:] if continuation.startswith(" ") else continuation))


def _exp(value: float) -> float:
    """``exp`` that gives ``inf`` instead of raising for a hopeless model's perplexity."""
    try:
        return math.exp(value)
    except OverflowError:
        return float("inf")


def _stderr(values: np.ndarray) -> float:
    """Standard error of a mean (sample standard deviation / sqrt(n)), as lm-eval reports it."""
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


def evaluate_items(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[MultipleChoiceItem],
    last_word: bool = False,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    add_bos: bool = False,
    max_length: int | None = None,
    progress: bool = True,
    desc: str = "zero-shot",
) -> dict:
    """Score already-loaded items.

    Multiple choice: returns ``acc``, ``acc_norm``, ``n``, ``stderr`` (of acc) and ``acc_norm_stderr``.
    ``last_word=True`` (LAMBADA): returns ``acc`` (greedy last-word accuracy), ``ppl`` of the target word,
    ``n`` and ``stderr``. Both also give ``seconds`` of wall time.
    """
    if not items:
        raise ValueError("No items to evaluate; check the task file and the limit.")
    started = time.perf_counter()
    requests = [request for item in items for request in item.requests()]
    scores = loglikelihoods(model, tokenizer, requests, batch_size, device, add_bos, max_length, progress, desc)
    if last_word:
        if any(item.num_choices != 1 for item in items):
            raise ValueError("last_word scoring expects one continuation per item (LAMBADA form).")
        correct = np.array([score.is_greedy for score in scores], dtype=float)
        mean_logprob = float(np.mean([score.logprob for score in scores]))
        return {
            "acc": float(correct.mean()),
            "ppl": _exp(-mean_logprob),
            "n": len(items),
            "stderr": _stderr(correct),
            "seconds": time.perf_counter() - started,
        }
    correct, correct_norm, position = [], [], 0
    for item in items:
        item_scores = np.array([score.logprob for score in scores[position : position + item.num_choices]])
        lengths = np.array([_answer_length(continuation) for _, continuation in item.requests()], dtype=float)
        position += item.num_choices
        correct.append(float(np.argmax(item_scores) == item.gold))
        correct_norm.append(float(np.argmax(item_scores / lengths) == item.gold))
    acc, acc_norm = np.array(correct), np.array(correct_norm)
    return {
        "acc": float(acc.mean()),
        "acc_norm": float(acc_norm.mean()),
        "n": len(items),
        "stderr": _stderr(acc),
        "acc_norm_stderr": _stderr(acc_norm),
        "seconds": time.perf_counter() - started,
    }


def evaluate_task(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: str,
    path: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    add_bos: bool = False,
    progress: bool = True,
) -> dict:
    """Load ``task`` (from ``path``, default the shared file), keep the first ``limit`` items, and score it."""
    items = load_task(task, path, limit)
    return evaluate_items(
        model, tokenizer, items, last_word=task in LAST_WORD_TASKS, batch_size=batch_size, device=device,
        add_bos=add_bos, progress=progress, desc=task,
    )


def evaluate_tasks(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[str],
    paths: dict[str, str | Path] | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    add_bos: bool = False,
    progress: bool = True,
) -> dict[str, dict]:
    """Score several tasks; ``paths`` maps a task name to its file where the shared default is not wanted."""
    paths = paths or {}
    unknown = set(paths) - set(tasks)
    if unknown:
        raise ValueError(f"paths names tasks that are not being evaluated: {sorted(unknown)}; tasks are {list(tasks)}.")
    return {
        task: evaluate_task(model, tokenizer, task, paths.get(task), limit, batch_size, device, add_bos, progress)
        for task in tasks
    }
