"""Zero-shot task loaders that turn benchmark files into lm-eval-style log-likelihood requests.

Every loader returns a list of :class:`MultipleChoiceItem` built with exactly the prompt templates of
lm-evaluation-harness (v0.4), so accuracies are comparable with published lm-eval numbers. Each loader
reads, row by row, either

* the Hugging Face / original-release field layout that lm-eval reads (``goal/sol1/sol2``,
  ``ctx/endings/label``, ``question/choices/answerKey``, ...), or
* the MosaicML ICL layout (``query/choices/gold``, ``context_options/continuation/gold``,
  ``context/continuation``) that the shared data folder holds,

from ``.jsonl`` or ``.jsonl.gz`` files.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from reprune.models import shared_data_dir


@dataclass(frozen=True)
class MultipleChoiceItem:
    """One benchmark question as log-likelihood requests.

    Normal form: one ``context`` and several ``continuations`` (one per answer choice, each starting with
    lm-eval's target delimiter, usually one space); choice ``i`` is scored as log p(continuations[i] |
    context).

    Partial-scoring form (WinoGrande): ``contexts`` holds one context per choice and ``continuations``
    holds the single shared continuation; choice ``i`` is scored as log p(continuations[0] | contexts[i]).
    ``context`` is then the empty string.

    LAMBADA uses the normal form with one continuation (the last word) and ``gold = 0``.
    """

    context: str
    continuations: list[str]
    gold: int
    contexts: list[str] | None = None

    def __post_init__(self) -> None:
        if not self.continuations:
            raise ValueError("A MultipleChoiceItem needs at least one continuation.")
        if self.contexts is not None and len(self.continuations) != 1:
            raise ValueError("With per-choice contexts (partial scoring) give exactly one shared continuation.")
        if not 0 <= self.gold < self.num_choices:
            raise ValueError(f"gold={self.gold} is out of range for {self.num_choices} choices.")

    @property
    def num_choices(self) -> int:
        """How many answer choices the item has."""
        return len(self.contexts) if self.contexts is not None else len(self.continuations)

    def requests(self) -> list[tuple[str, str]]:
        """The (context, continuation) pair scored for each choice, in choice order."""
        if self.contexts is not None:
            return [(context, self.continuations[0]) for context in self.contexts]
        return [(self.context, continuation) for continuation in self.continuations]


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, row) from a ``.jsonl`` or ``.jsonl.gz`` file, skipping blank lines."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Task file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path}:{number} is not valid JSON ({error}); expected one JSON object per line."
                ) from None


def _format_error(path: Path, number: int, row: dict, expected: str) -> ValueError:
    """Error for a row in neither known layout, naming the file, line, found and expected fields."""
    return ValueError(f"{path}:{number} has fields {sorted(row)}; expected {expected}.")


def _mosaic_item(context: str, row: dict) -> MultipleChoiceItem:
    """Item from a MosaicML ``choices``/``gold`` row; lm-eval's one-space target delimiter is added."""
    return MultipleChoiceItem(context, [" " + choice for choice in row["choices"]], int(row["gold"]))


def _question_answer(question: str) -> str:
    """lm-eval's ``Question: {q}\\nAnswer:`` prompt; accepts a MosaicML query that already has ``Question: ``."""
    question = question.rstrip("\n")
    if question.startswith("Question: "):
        question = question[len("Question: ") :]
    return f"Question: {question}\nAnswer:"


def _letter_gold(labels: list[str], key: str, path: Path, number: int) -> int:
    """Index of ``answerKey`` among the choice labels (ARC mixes ``A``-``E`` and ``1``-``5``)."""
    key = str(key).strip()
    if key not in labels:
        raise ValueError(f"{path}:{number}: answerKey {key!r} is not one of the choice labels {labels}.")
    return labels.index(key)


def _ai2_choices(row: dict, path: Path, number: int) -> tuple[str, list[str], int]:
    """Stem, choice texts and gold index of an ARC/OpenBookQA row (HF layout or AI2's nested original)."""
    question = row["question"] if "question" in row else row["question_stem"]
    if isinstance(question, dict):  # AI2 original: {"question": {"stem", "choices": [{"text", "label"}]}}
        stem = question["stem"]
        texts = [choice["text"] for choice in question["choices"]]
        labels = [choice["label"] for choice in question["choices"]]
    else:  # Hugging Face: question / question_stem + choices {"text": [...], "label": [...]}
        stem = question
        texts, labels = list(row["choices"]["text"]), list(row["choices"]["label"])
    return stem, texts, _letter_gold(labels, row["answerKey"], path, number)


def _labels_file(path: Path) -> Path:
    """Original PIQA keeps labels beside the data: ``valid.jsonl`` -> ``valid-labels.lst``."""
    stem = path.name[: -len(".gz")] if path.name.endswith(".gz") else path.name
    stem = stem.rsplit(".", 1)[0]
    return path.with_name(f"{stem}-labels.lst")


def load_piqa(path: str | Path, labels_path: str | Path | None = None) -> list[MultipleChoiceItem]:
    """PIQA: ``Question: {goal}\\nAnswer:`` + `` {sol}``.

    Labels come from a ``label`` field (HF), a ``gold`` field (MosaicML), or the original release's
    separate ``*-labels.lst`` file (found next to the data file unless ``labels_path`` is given).
    """
    path = Path(path)
    rows = list(read_jsonl(path))
    labels: list[int] | None = None
    if rows and all("goal" in row and "label" not in row for _, row in rows):
        labels_file = Path(labels_path) if labels_path is not None else _labels_file(path)
        if not labels_file.is_file():
            raise FileNotFoundError(
                f"{path} has no label field and the labels file {labels_file} does not exist; "
                "pass labels_path (the original PIQA release ships valid-labels.lst beside valid.jsonl)."
            )
        labels = [int(line) for line in labels_file.read_text(encoding="utf-8").split()]
        if len(labels) != len(rows):
            raise ValueError(f"{labels_file} has {len(labels)} labels but {path} has {len(rows)} rows.")
    items = []
    for index, (number, row) in enumerate(rows):
        if "goal" in row:
            gold = labels[index] if labels is not None else int(row["label"])
            continuations = [" " + row["sol1"], " " + row["sol2"]]
            items.append(MultipleChoiceItem(_question_answer(row["goal"]), continuations, gold))
        elif "query" in row:
            items.append(_mosaic_item(_question_answer(row["query"]), row))
        else:
            raise _format_error(path, number, row, "goal/sol1/sol2(/label) or query/choices/gold")
    return items


def _hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag cleanup: drop WikiHow ``[title]``/``[header]`` artefacts and double spaces."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def load_hellaswag(path: str | Path) -> list[MultipleChoiceItem]:
    """HellaSwag: ``preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())`` + `` {ending}``."""
    path = Path(path)
    items = []
    for number, row in read_jsonl(path):
        if "endings" in row:
            if row.get("label") in (None, ""):
                raise ValueError(
                    f"{path}:{number} has no label (the HellaSwag test split is unlabelled); use the validation split."
                )
            ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
            query = _hellaswag_preprocess(row["activity_label"] + ": " + ctx)
            endings = [" " + _hellaswag_preprocess(ending) for ending in row["endings"]]
            items.append(MultipleChoiceItem(query, endings, int(row["label"])))
        elif "query" in row:
            items.append(_mosaic_item(row["query"], row))
        else:
            raise _format_error(path, number, row, "activity_label/ctx_a/ctx_b/endings/label or query/choices/gold")
    return items


def _load_arc(path: str | Path) -> list[MultipleChoiceItem]:
    """ARC: ``Question: {question}\\nAnswer:`` + `` {choice}``."""
    path = Path(path)
    items = []
    for number, row in read_jsonl(path):
        if "answerKey" in row:
            stem, texts, gold = _ai2_choices(row, path, number)
            items.append(MultipleChoiceItem(_question_answer(stem), [" " + t for t in texts], gold))
        elif "query" in row:
            items.append(_mosaic_item(_question_answer(row["query"]), row))
        else:
            raise _format_error(path, number, row, "question/choices{text,label}/answerKey or query/choices/gold")
    return items


def load_arc_easy(path: str | Path) -> list[MultipleChoiceItem]:
    """ARC-Easy (same format and prompt as ARC-Challenge)."""
    return _load_arc(path)


def load_arc_challenge(path: str | Path) -> list[MultipleChoiceItem]:
    """ARC-Challenge (same format and prompt as ARC-Easy)."""
    return _load_arc(path)


def load_openbookqa(path: str | Path) -> list[MultipleChoiceItem]:
    """OpenBookQA: context = ``question_stem``, continuations `` {choice}``."""
    path = Path(path)
    items = []
    for number, row in read_jsonl(path):
        if "answerKey" in row:
            stem, texts, gold = _ai2_choices(row, path, number)
            items.append(MultipleChoiceItem(stem, [" " + t for t in texts], gold))
        elif "query" in row:
            items.append(_mosaic_item(row["query"], row))
        else:
            raise _format_error(path, number, row, "question_stem/choices{text,label}/answerKey or query/choices/gold")
    return items


def load_boolq(path: str | Path) -> list[MultipleChoiceItem]:
    """BoolQ: ``{passage}\\nQuestion: {question}?\\nAnswer:`` + [`` no``, `` yes``]; gold 1 = true.

    MosaicML's ``query`` is ``Passage: {passage}\\nQuestion: {question}?``, i.e. lm-eval's prompt with a
    ``Passage: `` prefix and without ``\\nAnswer:``; it is converted back.
    """
    path = Path(path)
    items = []
    for number, row in read_jsonl(path):
        if "passage" in row:
            answer = row["answer"] if "answer" in row else row["label"]  # google/boolq vs super_glue/boolq
            context = f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:"
            items.append(MultipleChoiceItem(context, [" no", " yes"], int(bool(answer))))
        elif "query" in row:
            query = row["query"]
            if not query.startswith("Passage: ") or "\nQuestion: " not in query:
                raise ValueError(
                    f"{path}:{number}: MosaicML BoolQ query should look like 'Passage: ...\\nQuestion: ...?'."
                )
            context = query[len("Passage: ") :] + "\nAnswer:"
            items.append(_mosaic_item(context, row))
        else:
            raise _format_error(path, number, row, "passage/question/answer or query/choices/gold")
    return items


def load_winogrande(path: str | Path) -> list[MultipleChoiceItem]:
    """WinoGrande with lm-eval's partial scoring.

    Contexts are the sentence up to the blank with each option filled in; the shared continuation is the
    rest of the sentence after the blank (stripped, with a one-space delimiter). ``answer`` "1"/"2" -> 0/1.
    """
    path = Path(path)
    items = []
    for number, row in read_jsonl(path):
        if "sentence" in row:
            sentence = row["sentence"]
            if "_" not in sentence:
                raise ValueError(f"{path}:{number}: WinoGrande sentence has no '_' blank: {sentence!r}")
            blank = sentence.index("_")
            contexts = [sentence[:blank] + row["option1"], sentence[:blank] + row["option2"]]
            continuation = " " + sentence[blank + 1 :].strip()
            items.append(MultipleChoiceItem("", [continuation], int(row["answer"]) - 1, contexts))
        elif "context_options" in row:
            contexts = list(row["context_options"])
            items.append(MultipleChoiceItem("", [" " + row["continuation"].strip()], int(row["gold"]), contexts))
        else:
            raise _format_error(path, number, row, "sentence/option1/option2/answer or context_options/continuation/gold")
    return items


def load_lambada(path: str | Path) -> list[MultipleChoiceItem]:
    """LAMBADA (OpenAI): context = text without its last space-separated word, continuation `` {word}``."""
    path = Path(path)
    items = []
    for number, row in read_jsonl(path):
        if "text" in row:
            context, _, word = row["text"].rpartition(" ")
            if not context:
                raise ValueError(f"{path}:{number}: LAMBADA text has no space, so there is no last word to predict.")
        elif "context" in row and "continuation" in row:
            context, word = row["context"].rstrip(" "), row["continuation"].strip()
        else:
            raise _format_error(path, number, row, "text or context/continuation")
        items.append(MultipleChoiceItem(context, [" " + word], 0))
    return items


TASKS: dict[str, Callable[[str | Path], list[MultipleChoiceItem]]] = {
    "boolq": load_boolq,
    "piqa": load_piqa,
    "hellaswag": load_hellaswag,
    "winogrande": load_winogrande,
    "arc_easy": load_arc_easy,
    "arc_challenge": load_arc_challenge,
    "openbookqa": load_openbookqa,
    "lambada": load_lambada,
}

# Files in the shared data folder (see its MANIFEST.md); HellaSwag has none.
_SHARED_FILES: dict[str, str] = {
    "boolq": "boolq/validation.mosaicml.jsonl.gz",
    "piqa": "piqa/valid.jsonl",
    "winogrande": "winogrande/dev.mosaicml.jsonl",
    "arc_easy": "arc/arc_easy_test.mosaicml.jsonl",
    "arc_challenge": "arc/arc_challenge_test.mosaicml.jsonl",
    "openbookqa": "openbookqa/test.mosaicml.jsonl",
    "lambada": "lambada_openai/lambada_test.jsonl",
}

_SPLIT_HINTS: dict[str, str] = {
    "hellaswag": "the HellaSwag validation split as jsonl (rowanz/hellaswag hellaswag_val.jsonl, or the "
    "Rowan/hellaswag validation split exported to jsonl)",
}


def _check_task(name: str) -> None:
    """Fail early on a misspelt task name, listing the known ones."""
    if name not in TASKS:
        raise KeyError(f"Unknown task {name!r}; choose one of {sorted(TASKS)}.")


def default_task_path(name: str) -> Path:
    """Path of the task's file in the shared data folder; a clear error if there is none."""
    _check_task(name)
    if name not in _SHARED_FILES:
        hint = _SPLIT_HINTS.get(name, f"a {name} file")
        raise FileNotFoundError(
            f"The shared data folder ({shared_data_dir()}) has no file for task {name!r}; "
            f"pass {hint} with --task-file {name}=PATH (or the path argument)."
        )
    path = shared_data_dir() / _SHARED_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"Expected the shared {name} file at {path}, but it is missing; set REPRUNE_SHARED_DATA to the "
            f"shared data folder or pass the file with --task-file {name}=PATH (or the path argument)."
        )
    return path


def load_task(name: str, path: str | Path | None = None, limit: int | None = None) -> list[MultipleChoiceItem]:
    """Load task ``name`` from ``path`` (default: the shared file), keeping the first ``limit`` items."""
    _check_task(name)
    items = TASKS[name](Path(path) if path is not None else default_task_path(name))
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1 or None, got {limit}.")
        items = items[:limit]
    return items
