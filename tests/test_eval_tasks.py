"""Task loaders: lm-eval prompt templates on hand-written HF-format fixtures, and the shared files' row counts."""

from __future__ import annotations

import collections
import gzip
import json
from pathlib import Path

import pytest

from reprune.evaluation.tasks import TASKS, MultipleChoiceItem, default_task_path, load_piqa, load_task
from reprune.models import shared_data_dir

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"


def test_piqa_original_release_reads_separate_labels_file() -> None:
    items = load_task("piqa", FIXTURES / "piqa_valid.jsonl")
    assert [item.gold for item in items] == [0, 1, 0]  # from piqa_valid-labels.lst
    assert items[0].context == "Question: How do I keep bread fresh?\nAnswer:"
    assert items[0].continuations == [
        " Store it in a sealed bag at room temperature.",
        " Store it in an open bowl of water.",
    ]
    assert items[2].continuations == [" can hold socks ", " can hold rivers "]  # raw text, like lm-eval


def test_piqa_hf_label_field_and_missing_labels_file(tmp_path: Path) -> None:
    items = load_task("piqa", FIXTURES / "piqa_hf.jsonl")
    assert [item.gold for item in items] == [0, 1, 0]
    assert items[1].context == "Question: Dry wet shoes.\nAnswer:"
    lonely = tmp_path / "valid.jsonl"
    lonely.write_text((FIXTURES / "piqa_valid.jsonl").read_text())
    with pytest.raises(FileNotFoundError, match="valid-labels.lst"):
        load_piqa(lonely)
    (tmp_path / "labels.txt").write_text("1\n1\n0\n")
    assert [item.gold for item in load_piqa(lonely, labels_path=tmp_path / "labels.txt")] == [1, 1, 0]


def test_hellaswag_preprocessing_matches_lm_eval() -> None:
    items = load_task("hellaswag", FIXTURES / "hellaswag.jsonl")
    assert [item.gold for item in items] == [3, 0, 0]
    assert items[0].context == "Roof shingle removal: A man is sitting on a roof. He"
    assert items[0].continuations[3] == " starts pulling up roofing on a roof."
    # " [title]" -> ". ", other [brackets] dropped, one pass of "  " -> " ".
    assert items[1].context == "Home and Garden: How to water a plant. Check the soil. push a finger into the soil."
    assert items[1].continuations[0] == " If it is dry, water it.  Use a can."
    assert items[1].continuations[2] == " Sing to the plant. loudly."
    assert items[2].context == "Playing guitar: A woman holds a guitar."


def test_arc_hf_and_original_layouts() -> None:
    items = load_task("arc_easy", FIXTURES / "arc_easy.jsonl")
    assert [item.gold for item in items] == [1, 0, 2]  # answerKey "B", "1" (numeric labels), "C"
    assert items[0].context == "Question: Which gas do plants take in for photosynthesis?\nAnswer:"
    assert items[0].continuations == [" oxygen", " carbon dioxide", " helium", " neon"]
    assert items[2].num_choices == 5
    original = load_task("arc_challenge", FIXTURES / "arc_original.jsonl")
    assert original[0] == items[0]
    assert original[1].gold == 1 and original[1].continuations == [" magnetism", " gravity", " light"]


def test_openbookqa_context_is_the_question_stem() -> None:
    items = load_task("openbookqa", FIXTURES / "openbookqa.jsonl")
    assert [item.gold for item in items] == [3, 3, 0]  # " D" is stripped like lm-eval's answerKey.lstrip()
    assert items[0].context == "The sun is responsible for"
    assert items[0].continuations[3] == " plants sprouting, blooming and wilting"


def test_boolq_prompt_and_answer_fields() -> None:
    items = load_task("boolq", FIXTURES / "boolq.jsonl")
    assert [item.gold for item in items] == [1, 0, 1]  # answer true/false, super_glue label 1
    assert items[0].context == (
        "The Sun is the star at the center of the Solar System.\nQuestion: is the sun a star?\nAnswer:"
    )
    assert items[0].continuations == [" no", " yes"]


def test_winogrande_partial_scoring() -> None:
    items = load_task("winogrande", FIXTURES / "winogrande.jsonl")
    assert [item.gold for item in items] == [0, 1, 1]
    assert items[0].contexts == [
        "The trophy didn't fit in the suitcase because the trophy",
        "The trophy didn't fit in the suitcase because the suitcase",
    ]
    assert items[0].continuations == [" was too big."]
    assert items[0].requests() == [(context, " was too big.") for context in items[0].contexts]
    assert items[2].requests()[1] == ("Anna gave Maria a gift because Maria", " was kind.")


def test_lambada_last_word_split() -> None:
    items = load_task("lambada", FIXTURES / "lambada.jsonl")
    assert items[0].requests() == [("She opened the door and called the dog by its name,", " Rex")]
    assert items[1].context == '"Pass me the salt," said Tom.\n\nAnna handed the salt to'
    assert items[1].continuations == [" Tom"]


def test_mosaicml_formats_give_lm_eval_prompts(tmp_path: Path) -> None:
    """The MosaicML copies must produce the same requests as the HF layout of the same question."""
    arc = tmp_path / "arc.jsonl"
    arc.write_text(json.dumps({"query": "Question: Which gas do plants take in for photosynthesis?",
                               "choices": ["oxygen", "carbon dioxide", "helium", "neon"], "gold": 1}) + "\n")
    assert load_task("arc_easy", arc)[0] == load_task("arc_easy", FIXTURES / "arc_easy.jsonl")[0]
    piqa = tmp_path / "piqa.jsonl"
    piqa.write_text(json.dumps({"query": "Question: Cool a hot drink quickly.\n",
                                "choices": ["Add an ice cube.", "Add a hot stone."], "gold": 0}) + "\n")
    assert load_task("piqa", piqa)[0] == load_task("piqa", FIXTURES / "piqa_hf.jsonl")[0]
    boolq = tmp_path / "boolq.jsonl.gz"
    with gzip.open(boolq, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"query": "Passage: The Sun is the star at the center of the Solar System.\n"
                                          "Question: is the sun a star?", "choices": ["no", "yes"], "gold": 1}) + "\n")
    assert load_task("boolq", boolq)[0] == load_task("boolq", FIXTURES / "boolq.jsonl")[0]
    wino = tmp_path / "wino.jsonl"
    wino.write_text(json.dumps({"context_options": ["The trophy didn't fit in the suitcase because the trophy",
                                                    "The trophy didn't fit in the suitcase because the suitcase"],
                                "continuation": "was too big.", "gold": 0}) + "\n")
    assert load_task("winogrande", wino)[0] == load_task("winogrande", FIXTURES / "winogrande.jsonl")[0]
    lambada = tmp_path / "lambada.jsonl"
    lambada.write_text(json.dumps({"context": "The ship sailed across the wide blue", "continuation": "ocean"}) + "\n")
    assert load_task("lambada", lambada)[0] == load_task("lambada", FIXTURES / "lambada.jsonl")[2]


def test_errors_name_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"foo": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1 .*goal/sol1/sol2"):
        load_task("piqa", bad)
    with pytest.raises(KeyError, match="Unknown task"):
        load_task("mmlu")
    with pytest.raises(FileNotFoundError, match="--task-file"):
        default_task_path("hellaswag")
    with pytest.raises(FileNotFoundError, match="nothere.jsonl"):
        load_task("boolq", tmp_path / "nothere.jsonl")
    with pytest.raises(ValueError, match="out of range"):
        MultipleChoiceItem("ctx", [" a", " b"], gold=2)
    assert len(load_task("arc_easy", FIXTURES / "arc_easy.jsonl", limit=2)) == 2


SHARED_COUNTS = {
    "piqa": 1838, "winogrande": 1267, "boolq": 3270, "arc_easy": 2376,
    "arc_challenge": 1172, "openbookqa": 500, "lambada": 5153,
}


@pytest.mark.skipif(not shared_data_dir().is_dir(), reason="shared data folder not present")
@pytest.mark.parametrize("task", sorted(SHARED_COUNTS))
def test_shared_files_have_documented_row_counts(task: str) -> None:
    items = load_task(task)
    assert len(items) == SHARED_COUNTS[task]
    assert all(0 <= item.gold < item.num_choices for item in items)


@pytest.mark.skipif(not shared_data_dir().is_dir(), reason="shared data folder not present")
def test_shared_label_balance_matches_manifest() -> None:
    """MANIFEST.md: PIQA labels 910 x 0 / 928 x 1, BoolQ 2,033 yes / 1,237 no."""
    assert collections.Counter(item.gold for item in load_task("piqa")) == {0: 910, 1: 928}
    assert collections.Counter(item.gold for item in load_task("boolq")) == {1: 2033, 0: 1237}
    assert set(TASKS) == set(SHARED_COUNTS) | {"hellaswag"}
