"""Zero-shot scoring: batched log-likelihoods equal a direct per-request computation, and metrics follow."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from torch import nn

from reprune.evaluation.tasks import MultipleChoiceItem
from reprune.evaluation.zero_shot import encode_pair, evaluate_items, evaluate_task, forward_rows, loglikelihoods
from tiny_models import tiny_llama_for

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"


@pytest.fixture(scope="module")
def tiny_llama(tokenizer) -> nn.Module:
    return tiny_llama_for(tokenizer, max_positions=256)


class ConstantLM(nn.Module):
    """A stand-in causal LM whose next-token distribution puts (almost) all mass on one token, everywhere."""

    def __init__(self, vocab_size: int, favourite: int | None, margin: float = 1e4) -> None:
        super().__init__()
        self.vocab_size, self.favourite, self.margin = vocab_size, favourite, margin
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the module a device

    def forward(self, input_ids: torch.Tensor, **kwargs) -> SimpleNamespace:
        logits = torch.zeros(*input_ids.shape, self.vocab_size, device=input_ids.device)
        if self.favourite is not None:
            logits -= self.margin
            logits[..., self.favourite] = 0.0
        return SimpleNamespace(logits=logits)


def direct_loglikelihood(model: nn.Module, tokenizer, context: str, continuation: str) -> float:
    """Independent computation: one unpadded forward of context + continuation, log_softmax, gather."""
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0]
    logprobs = F.log_softmax(logits.float(), dim=-1)
    return sum(logprobs[position - 1, whole[position]].item() for position in range(len(context_ids), len(whole)))


TOY = [  # (context, answer texts, gold); the last item uses per-choice contexts (WinoGrande form)
    ("Question: Is the sky blue on a clear day?\nAnswer:", ["yes", "no", "only at night"], 0),
    ("The cat sat quietly on the", ["mat", "moon and all of the stars", "chair"], 2),
    (["Anna thanked Maria because Anna", "Anna thanked Maria because Maria"], ["was kind to her."], 1),
]


def toy_items() -> list[MultipleChoiceItem]:
    items = []
    for context, answers, gold in TOY:
        if isinstance(context, list):
            items.append(MultipleChoiceItem("", [" " + answers[0]], gold, contexts=context))
        else:
            items.append(MultipleChoiceItem(context, [" " + answer for answer in answers], gold))
    return items


def test_batched_loglikelihoods_match_direct_computation(tiny_llama, tokenizer) -> None:
    requests = [request for item in toy_items() for request in item.requests()]
    batched = loglikelihoods(tiny_llama, tokenizer, requests, batch_size=3, progress=False)  # padded batches
    direct = [direct_loglikelihood(tiny_llama, tokenizer, context, continuation) for context, continuation in requests]
    np.testing.assert_allclose([score.logprob for score in batched], direct, rtol=1e-4, atol=1e-4)
    for score, (context, continuation) in zip(batched, requests):
        whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
        assert score.num_tokens == len(whole) - len(tokenizer(context, add_special_tokens=False)["input_ids"])


def test_rows_follow_lm_evals_collator_order_and_sharing() -> None:
    """Longest first, ties by token ids; requests with equal context + continuation[:-1] share a row led by
    the longest continuation (its input holds the others' positions)."""
    encoded = [([9, 1], [2]), ([9, 1], [3]), ([4, 4], [1]), ([7], [1, 2, 3]), ([9], [1, 5])]
    assert forward_rows(encoded) == [[3], [2], [4, 0, 1]]


def test_one_token_answers_to_one_context_cost_one_row(tiny_llama, tokenizer) -> None:
    context, answers = "The capital of France is", [" Paris", " Rome", " Berlin", " Madrid"]
    assert all(len(tokenizer(a, add_special_tokens=False)["input_ids"]) == 1 for a in answers)
    requests = [(context, answer) for answer in answers] + [("Two plus two is", " four")]
    rows: list[int] = []
    handle = tiny_llama.register_forward_pre_hook(lambda _, args, kwargs: rows.append(kwargs["input_ids"].shape[0]),
                                                  with_kwargs=True)
    try:
        scores = loglikelihoods(tiny_llama, tokenizer, requests, batch_size=8, progress=False)
    finally:
        handle.remove()
    assert rows == [2]
    direct = [direct_loglikelihood(tiny_llama, tokenizer, c, a) for c, a in requests]
    np.testing.assert_allclose([score.logprob for score in scores], direct, rtol=1e-4, atol=1e-4)


def test_metrics_match_hand_computed_acc_and_length_normalised_acc(tiny_llama, tokenizer) -> None:
    hand_acc, hand_norm = [], []
    for context, answers, gold in TOY:
        if isinstance(context, list):
            scores = [direct_loglikelihood(tiny_llama, tokenizer, c, " " + answers[0]) for c in context]
            lengths = [len(answers[0])] * len(context)
        else:
            scores = [direct_loglikelihood(tiny_llama, tokenizer, context, " " + a) for a in answers]
            lengths = [len(a) for a in answers]  # lm-eval: len(choice), without the " " delimiter
        hand_acc.append(int(np.argmax(scores)) == gold)
        hand_norm.append(int(np.argmax(np.array(scores) / np.array(lengths))) == gold)
    result = evaluate_items(tiny_llama, tokenizer, toy_items(), batch_size=4, progress=False)
    assert result["n"] == len(TOY)
    assert result["acc"] == pytest.approx(np.mean(hand_acc))
    assert result["acc_norm"] == pytest.approx(np.mean(hand_norm))


def test_length_normalisation_changes_the_choice(tokenizer) -> None:
    """With a uniform model every token costs log V: acc picks the fewest tokens, acc_norm the most chars per token."""
    uniform = ConstantLM(len(tokenizer), favourite=None)
    short, long = " a", " extraordinarily"
    assert len(tokenizer(long, add_special_tokens=False)["input_ids"]) < len(long) - 1  # several chars per token
    item = MultipleChoiceItem("This is", [short, long], gold=1)
    result = evaluate_items(uniform, tokenizer, [item], progress=False)
    assert (result["acc"], result["acc_norm"]) == (0.0, 1.0)


def test_model_preferring_first_choice_scores_share_of_gold_zero(tokenizer) -> None:
    favourite = tokenizer(" the", add_special_tokens=False)["input_ids"]
    others = [tokenizer(word, add_special_tokens=False)["input_ids"] for word in (" cat", " dog", " house")]
    assert len(favourite) == 1 and all(len(ids) == 1 and ids != favourite for ids in others)
    model = ConstantLM(len(tokenizer), favourite=favourite[0])
    golds = np.random.default_rng(7).integers(0, 3, size=23)
    items = [MultipleChoiceItem(f"Item {i}: pick one word:", [" the", " cat", " dog"], int(g)) for i, g in enumerate(golds)]
    result = evaluate_items(model, tokenizer, items, batch_size=5, progress=False)
    assert result["acc"] == pytest.approx(np.mean(golds == 0))
    assert result["acc_norm"] == pytest.approx(np.mean(golds == 0))
    p = np.mean(golds == 0)
    assert result["stderr"] == pytest.approx(np.sqrt(p * (1 - p) / (len(golds) - 1)))


def test_last_word_accuracy_and_target_perplexity(tokenizer) -> None:
    favourite = tokenizer(" the", add_special_tokens=False)["input_ids"][0]
    model = ConstantLM(len(tokenizer), favourite=favourite, margin=20.0)
    words = [" the", " cat", " the", " house", " the"]
    items = [MultipleChoiceItem(f"Sentence number {i} ends with", [word], 0) for i, word in enumerate(words)]
    result = evaluate_items(model, tokenizer, items, last_word=True, progress=False)
    assert result["acc"] == pytest.approx(3 / 5)
    logits = torch.full((len(tokenizer),), -20.0)
    logits[favourite] = 0.0
    logprobs = F.log_softmax(logits, dim=-1)
    hit, miss = logprobs[favourite].item(), logprobs[favourite + 1].item()
    assert result["ppl"] == pytest.approx(np.exp(-(3 * hit + 2 * miss) / 5), rel=1e-4)
    assert "acc_norm" not in result


def test_left_truncation_keeps_the_continuation(tiny_llama, tokenizer) -> None:
    context, continuation = "one two three four five six seven eight nine", " ten eleven"
    context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
    whole = context_ids + continuation_ids
    limit = len(continuation_ids) + 2
    kept = whole[-(limit + 1) :]  # the last limit + 1 tokens: 3 context tokens, then the continuation
    with torch.no_grad():
        logprobs = F.log_softmax(tiny_llama(torch.tensor([kept[:-1]])).logits[0].float(), dim=-1)
    expected = sum(logprobs[position - 1, kept[position]].item() for position in range(3, len(kept)))
    [score] = loglikelihoods(tiny_llama, tokenizer, [(context, continuation)], max_length=limit, progress=False)
    assert score.logprob == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="maximum length"):
        loglikelihoods(tiny_llama, tokenizer, [(context, continuation)], max_length=1, progress=False)


def test_encode_pair_follows_lm_eval(tokenizer) -> None:
    # Trailing context spaces move to the continuation.
    assert encode_pair(tokenizer, "Answer: ", "yes") == encode_pair(tokenizer, "Answer:", " yes")
    # An empty context becomes the BOS token; add_bos prepends BOS.
    context_ids, continuation_ids = encode_pair(tokenizer, "", "Hello world")
    assert context_ids == [tokenizer.bos_token_id]
    assert continuation_ids == tokenizer("Hello world", add_special_tokens=False)["input_ids"]
    with_bos, _ = encode_pair(tokenizer, "Answer:", " yes", add_bos=True)
    assert with_bos == [tokenizer.bos_token_id, *tokenizer("Answer:", add_special_tokens=False)["input_ids"]]


def test_evaluate_task_reads_a_task_file_with_limit(tiny_llama, tokenizer) -> None:
    result = evaluate_task(tiny_llama, tokenizer, "arc_easy", path=FIXTURES / "arc_easy.jsonl", limit=2, progress=False)
    assert result["n"] == 2 and 0.0 <= result["acc"] <= 1.0 and 0.0 <= result["acc_norm"] <= 1.0
    lambada = evaluate_task(tiny_llama, tokenizer, "lambada", path=FIXTURES / "lambada.jsonl", progress=False)
    assert lambada["n"] == 3 and lambada["ppl"] > 1.0


@pytest.mark.integration
def test_smollm2_beats_chance_on_piqa(tokenizer) -> None:
    from reprune.models import smollm2_path

    model = transformers.AutoModelForCausalLM.from_pretrained(smollm2_path(), dtype=torch.float32)
    result = evaluate_task(model, tokenizer, "piqa", limit=24, batch_size=16, progress=False)
    assert result["n"] == 24
    assert result["acc"] > 0.5 and result["acc_norm"] > 0.5  # chance is 0.5; SmolLM2-135M scores about 0.65
