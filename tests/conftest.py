"""Test-wide settings: unit tests on tiny models run fastest single-threaded; integration tests use both cores."""

from __future__ import annotations

import pytest
import torch
import transformers


@pytest.fixture(autouse=True)
def _threads(request: pytest.FixtureRequest) -> None:
    torch.set_num_threads(2 if request.node.get_closest_marker("integration") else 1)


@pytest.fixture(scope="session")
def tokenizer() -> transformers.PreTrainedTokenizerBase:
    """The real SmolLM2 tokenizer (tokenizer files only: no weights are loaded)."""
    from reprune.models import smollm2_path

    return transformers.AutoTokenizer.from_pretrained(smollm2_path())
