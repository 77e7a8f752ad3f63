"""Text corpora and calibration samples.

The library takes any local text/JSON(L) file, the embedded Wikipedia sample (``wiki-embedded``, shipped
inside reprune, see :data:`EMBEDDED_CORPUS`), or (where a network exists) a Hugging Face dataset name.
"""

from __future__ import annotations

import bz2
import gzip
import importlib.util
import json
from pathlib import Path

import torch
from torch import nn

from reprune.preflight import parse_json, read_text

EMBEDDED_WIKI = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
# The article texts gensim's parser makes of EMBEDDED_WIKI (gensim 4.4.0), shipped with reprune so that the
# default calibration works from a plain install; NOTICE beside it gives the source and the licence.
EMBEDDED_CORPUS = Path(__file__).parent / "corpora" / "wiki-embedded.jsonl.bz2"


class CorpusError(ValueError):
    """The calibration or evaluation corpus cannot be used as given."""


def embedded_wikipedia_path() -> Path:
    """The ~1.7 MB Wikipedia dump inside the gensim wheel (disjoint from WikiText-2 test), the source of
    :data:`EMBEDDED_CORPUS`."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise CorpusError("The embedded Wikipedia corpus needs the 'gensim' package: pip install gensim")
    path = Path(spec.origin).parent / "test" / "test_data" / EMBEDDED_WIKI
    if not path.exists():
        raise CorpusError(f"{path} is missing from the gensim installation; reinstall gensim")
    return path


def _wiki_dump_articles(path: Path) -> list[tuple[str, str]]:
    """(title, text) of the articles of a MediaWiki XML dump with the markup removed (gensim's own parser)."""
    if importlib.util.find_spec("gensim") is None:
        raise CorpusError(f"Reading the wiki dump {path} needs the 'gensim' package: pip install gensim")
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    articles = []
    with bz2.open(path, "rb") as handle:
        for title, text, _pageid in extract_pages(handle):
            if not text or text.lower().startswith("#redirect"):
                continue
            clean = filter_wiki(text).replace("'''", "").replace("''", "")
            lines = [line.strip() for line in clean.splitlines()]
            body = "\n".join(line for line in lines if line and not line.startswith(("|", "!", "{", "}")))
            if len(body) > 200:
                articles.append((title, body))
    return articles


def _wiki_dump_texts(path: Path) -> list[str]:
    return [text for _title, text in _wiki_dump_articles(path)]


def embedded_corpus_texts() -> list[str]:
    """The shipped ``wiki-embedded`` texts: the same list that parsing gensim's dump gives, without gensim."""
    if not EMBEDDED_CORPUS.is_file():
        raise CorpusError(f"{EMBEDDED_CORPUS} is missing from the reprune installation; reinstall reprune")
    with bz2.open(EMBEDDED_CORPUS, "rt", encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()]


def write_embedded_corpus(target: Path = EMBEDDED_CORPUS) -> Path:
    """Rebuild the shipped corpus from gensim's dump (a maintainer's step; needs gensim): one JSON line
    ``{"title", "text"}`` per article, in dump order, bz2-compressed."""
    lines = [json.dumps({"title": title, "text": text}, ensure_ascii=False)
             for title, text in _wiki_dump_articles(embedded_wikipedia_path())]
    target.parent.mkdir(parents=True, exist_ok=True)
    with bz2.open(target, "wt", encoding="utf-8", compresslevel=9) as handle:
        handle.write("\n".join(lines) + "\n")
    return target


def _open_text(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else bz2.open if path.suffix == ".bz2" else open
    return read_text(path, opener)


def load_corpus(source: str | Path, text_field: str = "text") -> list[str]:
    """Documents from ``source``: 'wiki-embedded', a .txt/.raw/.jsonl/.json(.gz) file, a .xml.bz2 wiki
    dump, or a Hugging Face dataset name ``name[:config[:split]]`` (needs the network)."""
    if str(source) in ("wiki-embedded", "embedded"):
        return embedded_corpus_texts()
    path = Path(source)
    if path.exists():
        name = path.name
        if name.endswith(".xml.bz2") or (name.endswith(".bz2") and "pages-articles" in name):
            return _wiki_dump_texts(path)
        raw = _open_text(path)
        stem = name.removesuffix(".gz").removesuffix(".bz2")
        if stem.endswith(".jsonl"):
            rows = [parse_json(line, path, "JSONL corpus", number)
                    for number, line in enumerate(raw.splitlines(), start=1) if line.strip()]
            return [_field(row, text_field, path) for row in rows]
        if stem.endswith(".json"):
            data = parse_json(raw, path, "JSON corpus")
            rows = data if isinstance(data, list) else data.get("data", [])
            return [row if isinstance(row, str) else _field(row, text_field, path) for row in rows]
        return [raw]
    if "/" in str(source) or str(source).endswith((".txt", ".raw", ".jsonl", ".json")):
        raise FileNotFoundError(f"Corpus file not found: {source}. Pass an existing text/JSONL file or 'wiki-embedded'.")
    return _hf_dataset(str(source), text_field)


def _field(row: dict, text_field: str, path: Path) -> str:
    if text_field not in row:
        raise CorpusError(f"{path}: rows have no field {text_field!r} (fields: {sorted(row)}); pass --text-field")
    return str(row[text_field])


def _hf_dataset(spec: str, text_field: str) -> list[str]:
    name, _, rest = spec.partition(":")
    config, _, split = rest.partition(":")
    try:
        import datasets
    except ImportError as err:
        raise CorpusError(
            f"{spec!r} is neither a local file nor loadable: Hugging Face datasets need `pip install datasets` "
            "and a network. Offline, pass a local text/JSONL file or 'wiki-embedded'."
        ) from err
    dataset = datasets.load_dataset(name, config or None, split=split or "train")
    return [str(t) for t in dataset[text_field]]


def calibration_ids(
    tokenizer,
    source: str | Path | list[str],
    num_samples: int = 128,
    seq_len: int = 128,
    seed: int = 0,
) -> torch.Tensor:
    """``num_samples`` random windows of ``seq_len`` tokens from the corpus (seeded), shape (N, L).

    Documents are joined with the tokenizer's EOS (or a blank line) so windows may span documents, as
    FLAP/Wanda/SparseGPT sample C4 or WikiText.
    """
    return calibration_sets(tokenizer, source, [num_samples], seq_len, seed)[0]


def calibration_sets(tokenizer, source: str | Path | list[str], counts: list[int], seq_len: int = 128,
                     seed: int = 0) -> list[torch.Tensor]:
    """Disjoint sets of random ``seq_len``-token windows from one corpus, ``counts[k]`` windows in set k.

    The first set is the draw :func:`calibration_ids` makes (windows may overlap each other, as in FLAP's
    sampling); every later window overlaps no window of an earlier set, so a recovery or held-out set never
    shares a token position with the calibration rows.
    """
    if min(counts) < 1 or seq_len < 2:
        raise CorpusError(f"need num_samples ≥ 1 and seq_len ≥ 2 (got {counts} × {seq_len})")
    docs = load_corpus(source) if not isinstance(source, list) else source
    separator = tokenizer.eos_token or "\n\n"
    ids = tokenizer(separator.join(docs), return_tensors="pt", add_special_tokens=False).input_ids[0]
    if ids.numel() <= seq_len:
        raise CorpusError(
            f"the calibration corpus has {ids.numel()} tokens, shorter than one sample of {seq_len}; "
            "use a longer corpus or a smaller --seq-len"
        )
    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(0, ids.numel() - seq_len, (counts[0],), generator=generator).tolist()
    taken = torch.zeros(ids.numel(), dtype=torch.bool)
    for start in first:
        taken[start : start + seq_len] = True
    sets = [first] + [_free_windows(taken, seq_len, count, generator) for count in counts[1:]]
    samples = [torch.stack([ids[s : s + seq_len] for s in starts]) for starts in sets]
    if tokenizer.cls_token_id is not None and tokenizer.sep_token_id is not None and tokenizer.bos_token_id is None:
        for rows in samples:
            rows[:, 0] = tokenizer.cls_token_id  # encoders expect [CLS] ... [SEP]
            rows[:, -1] = tokenizer.sep_token_id
    return samples


def _free_windows(taken: torch.Tensor, seq_len: int, count: int, generator: torch.Generator) -> list[int]:
    """``count`` random window starts whose ``seq_len`` tokens are all free in ``taken`` (marked as drawn)."""
    occupied = torch.cat([torch.zeros(1, dtype=torch.long), taken.long().cumsum(0)])
    free = torch.nonzero(occupied[seq_len:] - occupied[:-seq_len] == 0).reshape(-1)
    starts: list[int] = []
    while len(starts) < count:
        free = free[~taken[free] & ~taken[(free + seq_len - 1).clamp(max=taken.numel() - 1)]]
        if free.numel() == 0:
            raise CorpusError(f"the corpus is too short for {count} more windows of {seq_len} tokens disjoint "
                              f"from the calibration rows (found {len(starts)}); pass a longer corpus or fewer "
                              "--recovery-samples / --heldout-samples")
        start = int(free[torch.randint(0, free.numel(), (1,), generator=generator)])
        taken[start : start + seq_len] = True
        starts.append(start)
    return starts


SELF_GENERATED = "self-generated"
RANDOM_TOKENS = "random-tokens"  # uniform random token ids: GOA's data-free second moment (App. D)
Calibration = str | Path | list[str] | torch.Tensor


def calibration_source(calibration: Calibration) -> str | None:
    """How a record names the calibration data (None for ready token ids)."""
    if isinstance(calibration, torch.Tensor):
        return None
    return "list of texts" if isinstance(calibration, list) else str(calibration)


def resolve_calibration(calibration: Calibration, tokenizer, model: nn.Module, num_samples: int, seq_len: int,
                        seed: int, text_field: str = "text", device: str | None = None) -> torch.Tensor:
    """Token ids (N, L) from any calibration source: ready ids, ``'self-generated'`` (sampled from
    ``model``, GOA's data-free setting), ``'random-tokens'`` (uniform token ids, GOA App. D), a corpus name
    or file (``text_field`` for JSON rows), or texts."""
    return resolve_calibration_sets(calibration, tokenizer, model, [num_samples], seq_len, seed, text_field,
                                    device)[0]


def resolve_calibration_sets(calibration: Calibration, tokenizer, model: nn.Module, counts: list[int],
                             seq_len: int, seed: int, text_field: str = "text",
                             device: str | None = None) -> list[torch.Tensor | None]:
    """Disjoint sets of ``counts[k]`` samples from one calibration source (see :func:`resolve_calibration`);
    the first is the calibration set itself. Ready ids give only that one: the later sets are None."""
    if isinstance(calibration, torch.Tensor):
        return [calibration] + [None] * (len(counts) - 1)
    if calibration == RANDOM_TOKENS:
        vocab = model.get_input_embeddings().num_embeddings
        return [torch.randint(0, vocab, (count, seq_len), generator=torch.Generator().manual_seed(seed + k))
                for k, count in enumerate(counts)]
    if tokenizer is None:
        raise ValueError("a tokenizer is needed to turn the calibration corpus into samples: pass tokenizer=")
    if calibration == SELF_GENERATED:
        from reprune.selfgen import self_generated_ids

        return [self_generated_ids(model, tokenizer, count, seq_len, seed + k, device=device)
                for k, count in enumerate(counts)]
    docs = calibration if isinstance(calibration, list) else load_corpus(calibration, text_field=text_field)
    return calibration_sets(tokenizer, docs, counts, seq_len, seed)
