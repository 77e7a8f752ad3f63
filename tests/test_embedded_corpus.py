"""The shipped ``wiki-embedded`` corpus: it needs no gensim, and it is exactly what gensim's parser makes of
the dump, so calibration token ids (and every benchmark number) are the same with or without gensim."""

from __future__ import annotations

import bz2
import importlib.util
import json

import pytest
import torch

from reprune.data import EMBEDDED_CORPUS, calibration_ids, embedded_corpus_texts, load_corpus

needs_gensim = pytest.mark.skipif(importlib.util.find_spec("gensim") is None, reason="gensim is not installed")


def test_wiki_embedded_reads_the_shipped_file_without_gensim(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("gensim") else real_find_spec(name, *a))
    texts = load_corpus("wiki-embedded")
    assert len(texts) == 106 and all(len(text) > 200 for text in texts)


def test_shipped_corpus_is_small_and_has_its_notice() -> None:
    assert EMBEDDED_CORPUS.stat().st_size < 2 * 2**20
    notice = (EMBEDDED_CORPUS.parent / "NOTICE").read_text(encoding="utf-8")
    assert "CC BY-SA 3.0" in notice
    with bz2.open(EMBEDDED_CORPUS, "rt", encoding="utf-8") as handle:
        titles = [json.loads(line)["title"] for line in handle]
    assert all(f"\n{title}\n" in notice for title in titles)  # every article is attributed


@needs_gensim
def test_shipped_corpus_gives_the_gensim_calibration_ids(tokenizer) -> None:
    from reprune.data import _wiki_dump_texts, embedded_wikipedia_path

    from_gensim = _wiki_dump_texts(embedded_wikipedia_path())
    assert embedded_corpus_texts() == from_gensim
    shipped = calibration_ids(tokenizer, "wiki-embedded", 128, 128, seed=0)  # the defaults
    assert torch.equal(shipped, calibration_ids(tokenizer, from_gensim, 128, 128, seed=0))
