"""The model catalog: which providers a requested model goes to, as which of their models."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.errors import ModelNotFound
from gateway.routing.catalog import DEFAULT_GROUPS, ModelCatalog, family_of
from gateway.settings import ProviderSettings, Settings

ALL = ("openai", "azure", "anthropic", "google", "ollama")


def route(catalog: ModelCatalog, model: str) -> list[tuple[str, str]]:
    return [(c.provider, c.model) for c in catalog.candidates(model, priority=ALL, configured=ALL)]


@pytest.mark.parametrize("model", ["gpt-4-1106-preview", "gpt-4-0125-preview", "gpt-4-vision-preview"])
def test_the_gpt_4_turbo_previews_fall_back_in_the_turbo_group(model: str) -> None:
    """They fell back as gpt-4 (to Claude 3 Opus, 5x the price of the turbo group's Sonnet): the
    routing stripped ``-preview`` then ``-1106``; the price tables know them as GPT-4 Turbo."""
    assert family_of(model) == "gpt-4-turbo"
    routed = dict(route(ModelCatalog(), model))
    assert routed["openai"] == model and routed["anthropic"] == DEFAULT_GROUPS["gpt-4-turbo"]["anthropic"]


def test_a_moving_alias_is_not_taken_for_an_old_family() -> None:
    assert family_of("gemini-pro-latest") == "gemini-pro-latest"
    assert route(ModelCatalog(), "gemini-pro-latest") == [("google", "gemini-pro-latest")]


def test_a_config_group_is_the_whole_list_even_for_a_vendors_own_model() -> None:
    """An operator who leaves a vendor out of a group (cost, data residency) had its own model
    sent to it all the same, first, under the group's bare name (a review)."""
    catalog = ModelCatalog({"claude-3-haiku": {"openai": "gpt-4o-mini", "google": "gemini-1.5-flash"}})
    assert route(catalog, "claude-3-haiku") == [("openai", "gpt-4o-mini"), ("google", "gemini-1.5-flash")]
    # a dated snapshot of the family falls in the same group: Anthropic left out too
    assert [p for p, _ in route(catalog, "claude-3-haiku-20240307")] == ["openai", "google"]
    only_anthropic = ModelCatalog({"gpt-4": {"anthropic": "claude-3-opus-20240229"}})
    assert route(only_anthropic, "gpt-4") == [("anthropic", "claude-3-opus-20240229")]
    # a model no group holds still goes to the vendors whose own name it is
    assert route(catalog, "claude-3-5-sonnet-20241022") == [("anthropic", "claude-3-5-sonnet-20241022")]


@pytest.mark.parametrize("model", ["gpt-4 ", " gpt-4", "gpt-4\t"])
def test_a_model_name_with_blank_edges_is_not_served(model: str) -> None:
    """``"gpt-4 "`` went upstream as such (and ``" gpt-4"`` was a 404): both are 404s."""
    with pytest.raises(ModelNotFound):
        route(ModelCatalog(), model)


@pytest.mark.parametrize(
    "model", ["command-r:35b-v0.1-q4_K_M", "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", "granite3.1-dense:8b"]
)
def test_ollama_names_with_a_tag_in_any_case_go_to_ollama(model: str) -> None:
    assert route(ModelCatalog(), model) == [("ollama", model)]


@pytest.mark.parametrize(
    ("groups", "fragment"),
    [
        ({"blank": {"openai": "", "anthropic": "claude-3-haiku-20240307"}}, "not a model name"),
        ({"trav": {"google": "../../../v1beta/models/gemini-pro", "ollama": "llama3"}}, "URL path step"),
        ({"q": {"google": "gemini-pro?alt=sse"}}, "URL path step"),
        ({"edge": {"openai": "gpt-4o "}}, "not a model name"),
        ({"empty": {}}, "names no provider"),
        ({"": {"openai": "gpt-4o"}}, "a model group's name"),
    ],
)
def test_a_model_group_a_vendor_could_not_take_is_refused_at_start(groups: dict, fragment: str) -> None:  # type: ignore[type-arg]
    """Each was taken, and every call of the group was a 400 that ended it (``model: ""``, a
    path out of Gemini's URL): a configuration that would misbehave is refused at start."""
    with pytest.raises(ValidationError) as info:
        Settings(model_groups=groups, _env_file=None)
    assert fragment in str(info.value)


def test_an_azure_deployment_name_with_a_path_step_is_refused() -> None:
    with pytest.raises(ValidationError, match="URL path step"):
        ProviderSettings(deployments={"gpt-4o": "../admin"})


def test_one_model_under_both_spellings_to_two_deployments_is_refused() -> None:
    """Azure is sent one spelling, so one of the two entries was never used (a re-test)."""
    with pytest.raises(ValidationError, match="are one model"):
        ProviderSettings(deployments={"gpt-35-turbo": "dep-a", "gpt-3.5-turbo": "dep-b"})
    ProviderSettings(deployments={"gpt-35-turbo": "dep-a", "gpt-3.5-turbo": "dep-a"})  # the same: fine


def test_a_config_group_that_leaves_out_its_own_vendor_says_so_at_start(caplog: pytest.LogCaptureFixture) -> None:
    """A config written when groups were extended, not replaced, loses its vendor silently
    (``gpt-4o: {ollama: llama3:70b}`` no longer reached OpenAI; a diff review): a warning."""
    with caplog.at_level("WARNING", logger="gateway.routing.catalog"):
        ModelCatalog({"gpt-4o": {"ollama": "llama3:70b"}, "mine": {"openai": "gpt-4o"}})
    [warning] = caplog.records
    assert "'gpt-4o'" in warning.getMessage() and "openai, azure" in warning.getMessage()


def test_azures_spelling_goes_to_azure_only() -> None:
    """``gpt-35-turbo-instruct`` (Azure's name for gpt-3.5-turbo-instruct) went to OpenAI as such,
    a 404 there, before Azure (a review): OpenAI's names have the dot."""
    catalog = ModelCatalog()
    for model in ("gpt-35-turbo-instruct", "gpt-35-turbo", "gpt-35-turbo-16k"):
        assert catalog.equivalents(model) == {"azure": model}
    assert catalog.equivalents("gpt-3.5-turbo-instruct")["openai"] == "gpt-3.5-turbo-instruct"
