"""Quality checks for BERT-family sentence encoders (mean-pooled embeddings).

* :func:`sts_spearman`: unsupervised STS-B, cosine similarity of the two sentence embeddings vs the gold
  score (Spearman), the sentence-transformers evaluation.
* :func:`glue_probe` (= :func:`fit_probe` + :func:`score_probe`): a logistic-regression probe trained once
  on the *dense* encoder's embeddings and applied unchanged to a pruned encoder's embeddings, so it
  measures how far pruning moved the embedding space rather than how well a fresh classifier adapts.
"""

from __future__ import annotations

import csv
import gzip
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from tqdm.auto import tqdm

from reprune.evaluation.perplexity import eval_mode, model_max_length, prepare_model
from reprune.models import shared_data_dir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

STSB_DEV = "glue/STS-B/dev.tsv"
STSB_TRAIN = "glue/STS-B/train.tsv"


def read_glue_tsv(path: str | Path, limit: int | None = None) -> list[dict[str, str]]:
    """Rows of a GLUE-style TSV (header line, tab-separated, no quoting, optional UTF-8 BOM, ``.gz`` ok).

    GLUE files must be read with ``csv.QUOTE_NONE``: sentences contain unbalanced quote characters.
    Works for SST-2 (``sentence label``), MRPC (``Quality #1 ID #2 ID #1 String #2 String``), STS-B, QNLI.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GLUE TSV file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    rows: list[dict[str, str]] = []
    with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path} is empty; expected a header line.")
        for number, fields in enumerate(reader, start=2):
            if limit is not None and len(rows) >= limit:
                break
            if not fields:
                continue
            if len(fields) != len(header):
                raise ValueError(f"{path}:{number} has {len(fields)} fields but the header has {len(header)} ({header}).")
            rows.append(dict(zip(header, fields)))
    return rows


def embed(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Attention-mask-aware mean pooling of the last hidden states, as sentence-transformers does.

    ``model`` is a base encoder (``AutoModel``'s BertModel) or a model with a head on one (e.g.
    ``MPNetForMaskedLM``, as a pruned masked-LM checkpoint loads), whose base encoder is then used: the
    pooled states are those the head reads. Texts are batched by length to limit padding; rows come back
    in input order (float32, [n, hidden]).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if not texts:
        raise ValueError("No texts to embed.")
    dev = prepare_model(model, device)
    encoder = getattr(model, "base_model", model)  # a head model's logits are not sentence states
    max_length = min(model_max_length(model, default=512), tokenizer.model_max_length)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    pooled: list[torch.Tensor | None] = [None] * len(texts)
    with torch.inference_mode(), eval_mode(model):
        for start in tqdm(range(0, len(order), batch_size), desc="embed", unit="batch", disable=not progress):
            indices = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in indices], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            ).to(dev)
            hidden = getattr(encoder(**batch), "last_hidden_state", None)
            if hidden is None:
                raise TypeError(
                    f"{type(encoder).__name__} returns no last_hidden_state; pass the base encoder "
                    "(e.g. AutoModel.from_pretrained(...), or model.bert of a task model)."
                )
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            means = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            for row, i in enumerate(indices):
                pooled[i] = means[row].float().cpu()
    return torch.stack(pooled).numpy()  # type: ignore[arg-type]


def _default_path(path: str | Path | None, relative: str) -> Path:
    """The given path, or the file at ``relative`` inside the shared data folder."""
    return Path(path) if path is not None else shared_data_dir() / relative


def sts_spearman(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    path: str | Path | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """STS-B (default: shared ``glue/STS-B/dev.tsv``): Spearman and Pearson of cosine similarity vs gold score.

    ``limit`` keeps the first rows only (for quick checks). Returns ``spearman``, ``pearson``, ``n``.
    """
    rows = read_glue_tsv(_default_path(path, STSB_DEV), limit)
    if len(rows) < 2:
        raise ValueError(f"STS needs at least 2 sentence pairs, got {len(rows)}; raise limit.")
    first = embed(model, tokenizer, [row["sentence1"] for row in rows], batch_size, device, progress)
    second = embed(model, tokenizer, [row["sentence2"] for row in rows], batch_size, device, progress)
    cosine = (first * second).sum(axis=1) / np.maximum(
        np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1), 1e-12
    )
    gold = np.array([float(row["score"]) for row in rows])
    return {
        "spearman": float(spearmanr(cosine, gold)[0]),
        "pearson": float(pearsonr(cosine, gold)[0]),
        "n": len(rows),
    }


def _check_columns(rows: Sequence[dict[str, str]], columns: Sequence[str], path: str | Path) -> None:
    """Name the missing text column and the file's real columns instead of failing with a bare KeyError."""
    missing = [c for c in columns if rows and c not in rows[0]]
    if missing:
        raise KeyError(f"{path} has no column(s) {missing}; its columns are {list(rows[0])}.")


def _features(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[dict[str, str]],
    text_columns: Sequence[str],
    batch_size: int,
    device: str | torch.device | None,
    progress: bool,
) -> np.ndarray:
    """One sentence: its embedding. A pair: [e1, e2, |e1 - e2|, e1 * e2] (InferSent / SentEval features)."""
    embeddings = [embed(model, tokenizer, [row[c] for row in rows], batch_size, device, progress) for c in text_columns]
    if len(embeddings) == 1:
        return embeddings[0]
    first, second = embeddings
    return np.concatenate([first, second, np.abs(first - second), first * second], axis=1)


@dataclass(frozen=True)
class Probe:
    """A classifier fitted on the dense encoder's features, reusable for any number of pruned encoders."""

    classifier: Pipeline
    text_columns: tuple[str, ...]
    label_of: Callable[[dict[str, str]], Hashable]
    n_train: int


def fit_probe(
    dense_model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train_path: str | Path,
    text_columns: Sequence[str],
    label: str | Callable[[dict[str, str]], Hashable],
    seed: int = 0,
    max_train: int | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Probe:
    """Fit a standardised logistic regression on ``dense_model``'s embeddings of the training rows.

    ``text_columns`` names one column (single sentence) or two (sentence pair). ``label`` is a column name
    or a function of the row. ``max_train`` draws a random subset of the rows (``seed``); GLUE train files
    are often ordered by source, so the first rows would not be representative.
    """
    if len(text_columns) not in (1, 2):
        raise ValueError(f"text_columns must name one column or a pair of columns, got {list(text_columns)}.")
    label_of = (lambda row: row[label]) if isinstance(label, str) else label
    rows = read_glue_tsv(train_path)
    if max_train is not None and max_train < len(rows):
        chosen = np.random.default_rng(seed).choice(len(rows), size=max_train, replace=False)
        rows = [rows[i] for i in sorted(chosen)]
    _check_columns(rows, text_columns, train_path)
    labels = [label_of(row) for row in rows]
    if len(set(labels)) < 2:
        raise ValueError("The probe's training rows hold a single label; raise max_train or check the label.")
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    classifier.fit(_features(dense_model, tokenizer, rows, text_columns, batch_size, device, progress), labels)
    return Probe(classifier, tuple(text_columns), label_of, len(rows))


def score_probe(
    probe: Probe,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    dev_path: str | Path,
    limit: int | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict:
    """Apply a fitted probe unchanged to ``model``'s embeddings of the first ``limit`` dev rows.

    Returns ``accuracy``, ``majority_rate`` (share of the most frequent dev label: the chance level),
    ``n_train`` and ``n_dev``.
    """
    rows = read_glue_tsv(dev_path, limit)
    if not rows:
        raise ValueError(f"{dev_path} has no rows to score.")
    _check_columns(rows, probe.text_columns, dev_path)
    labels = np.array([probe.label_of(row) for row in rows])
    features = _features(model, tokenizer, rows, probe.text_columns, batch_size, device, progress)
    predictions = probe.classifier.predict(features)
    return {
        "accuracy": float(np.mean(predictions == labels)),
        "majority_rate": Counter(labels.tolist()).most_common(1)[0][1] / len(rows),
        "n_train": probe.n_train,
        "n_dev": len(rows),
    }


def glue_probe(
    dense_model: nn.Module,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train_path: str | Path,
    dev_path: str | Path,
    text_columns: Sequence[str],
    label: str | Callable[[dict[str, str]], Hashable],
    seed: int = 0,
    max_train: int | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict:
    """:func:`fit_probe` on the dense model's train embeddings, then :func:`score_probe` on ``model``'s dev ones.

    Pass ``model=dense_model`` for the dense reference accuracy. To score several pruned models against
    the same probe, call :func:`fit_probe` once and :func:`score_probe` per model instead.
    """
    probe = fit_probe(dense_model, tokenizer, train_path, text_columns, label, seed, max_train, batch_size, device, progress)
    return score_probe(probe, model, tokenizer, dev_path, limit, batch_size, device, progress)


def stsb_label(row: dict[str, str]) -> int:
    """STS-B as binary classification: 1 when the gold similarity is at least 2.5 (of 5)."""
    return int(float(row["score"]) >= 2.5)


def stsb_probe(
    dense_model: nn.Module,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train_path: str | Path | None = None,
    dev_path: str | Path | None = None,
    seed: int = 0,
    max_train: int | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict:
    """:func:`glue_probe` on STS-B as binary "similar" (score >= 2.5), trained on train, scored on dev."""
    return glue_probe(
        dense_model,
        model,
        tokenizer,
        _default_path(train_path, STSB_TRAIN),
        _default_path(dev_path, STSB_DEV),
        text_columns=("sentence1", "sentence2"),
        label=stsb_label,
        seed=seed,
        max_train=max_train,
        limit=limit,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
