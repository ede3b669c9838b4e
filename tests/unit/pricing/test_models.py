"""Model-name resolution: dated snapshots resolve to their family, look-alike models do not."""

from __future__ import annotations

import pytest

from gateway.pricing.builtin import builtin_rate
from gateway.pricing.models import model_candidates, normalize_model


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("gpt-4", "gpt-4"),
        ("gpt-4-0613", "gpt-4"),
        ("gpt-4-0314", "gpt-4"),
        ("gpt-4-turbo", "gpt-4-turbo"),
        ("gpt-4-turbo-2024-04-09", "gpt-4-turbo"),
        ("gpt-4-1106-preview", "gpt-4-turbo"),
        ("gpt-4-0125-preview", "gpt-4-turbo"),
        ("gpt-4-turbo-preview", "gpt-4-turbo"),
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-2024-05-13", "gpt-4o"),
        ("claude-3-haiku-20240307", "claude-3-haiku"),
        ("claude-3-opus-20240229", "claude-3-opus"),
        ("claude-3-sonnet-20240229", "claude-3-sonnet"),
        ("claude-3-opus-latest", "claude-3-opus"),
        ("claude-3-haiku@20240307", "claude-3-haiku"),
        ("gemini-pro", "gemini-pro"),
        ("gemini-1.0-pro", "gemini-pro"),
        ("gemini-1.0-pro-001", "gemini-pro"),
        ("models/gemini-pro", "gemini-pro"),
        ("models/gemini-1.0-pro-001", "gemini-pro"),
        ("GPT-4o-2024-08-06", "gpt-4o"),
        ("llama3:latest", "llama3"),
        ("nomic-embed-text:latest", "nomic-embed-text"),
    ],
)
def test_snapshots_resolve_to_their_family(name: str, family: str) -> None:
    candidates = model_candidates(name)
    assert candidates[-1] == family
    assert candidates[0] == normalize_model(name)


@pytest.mark.parametrize(
    ("name", "not_family"),
    [
        ("gpt-4o-mini", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o"),
        ("gpt-4-turbo", "gpt-4"),
        ("gpt-4-turbo-2024-04-09", "gpt-4"),
        ("gpt-4-0125-preview", "gpt-4"),
        ("gpt-4-32k", "gpt-4"),
        ("gpt-4-32k-0613", "gpt-4"),
        ("gpt-4o-audio-preview-2024-10-01", "gpt-4o"),
        ("chatgpt-4o-latest", "gpt-4o"),
        ("claude-3-5-sonnet-20241022", "claude-3-sonnet"),
        ("claude-3-5-haiku-latest", "claude-3-haiku"),
        ("gemini-pro-latest", "gemini-pro"),
        ("gemini-pro-vision", "gemini-pro"),
        ("gemini-1.5-pro-002", "gemini-pro"),
    ],
)
def test_look_alike_models_are_not_the_family(name: str, not_family: str) -> None:
    assert not_family not in model_candidates(name)


def test_exact_name_comes_before_its_family() -> None:
    assert model_candidates("gpt-4-turbo-2024-04-09") == ("gpt-4-turbo-2024-04-09", "gpt-4-turbo")
    assert model_candidates("gpt-4-0125-preview") == ("gpt-4-0125-preview", "gpt-4-turbo")
    assert model_candidates("gemini-1.0-pro-001") == (
        "gemini-1.0-pro-001",
        "gemini-1.0-pro",
        "gemini-pro",
    )


def test_azure_spelling_is_normalised() -> None:
    assert normalize_model("gpt-35-turbo") == "gpt-3.5-turbo"
    assert normalize_model("gpt-35-turbo-16k") == "gpt-3.5-turbo-16k"
    assert builtin_rate("gpt-35-turbo") is None  # not built in: priced by the database


def test_names_without_a_suffix_stay_as_they_are() -> None:
    assert model_candidates("llama3") == ("llama3",)
    assert model_candidates("my-finetune-2026-01-15") == ("my-finetune-2026-01-15", "my-finetune")
