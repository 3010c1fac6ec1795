"""Settings: defaults, the API key from the environment, and errors that name the field."""

from __future__ import annotations

import pytest

from scorers.llm_rubric.config import ConfigError, LlmRubricConfig, load_config


def test_defaults() -> None:
    config = load_config({}, environ={})
    assert config == LlmRubricConfig()
    assert not config.configured
    assert (config.model, config.timeout_seconds, config.max_retries, config.max_answers_per_call) == (
        "gpt-4o-mini",
        2.0,
        1,
        8,
    )
    assert config.rubric_file == "templates/rubrics/free_response.toml"


def test_strings_from_the_environment_are_converted() -> None:
    config = load_config({"timeout_seconds": "1.5", "max_concurrency": "3"}, environ={})
    assert (config.timeout_seconds, config.max_concurrency) == (1.5, 3)


def test_completions_url() -> None:
    config = load_config({"base_url": " http://llm.local:8000/v1/ "}, environ={})
    assert config.configured and config.completions_url == "http://llm.local:8000/v1/chat/completions"


def test_the_environment_key_wins() -> None:
    assert load_config({"api_key": "from-file"}, environ={"CK_LLM_API_KEY": "from-env"}).api_key == "from-env"
    assert load_config({"api_key": "from-file"}, environ={"CK_LLM_API_KEY": ""}).api_key == "from-file"
    assert load_config({"api_key_env": "MY_KEY"}, environ={"MY_KEY": "mine", "CK_LLM_API_KEY": "x"}).api_key == "mine"
    assert load_config({"api_key_env": ""}, environ={"": "odd"}).api_key == ""


def test_the_key_never_shows_in_repr() -> None:
    config = load_config({"api_key": "sk-very-secret", "base_url": "http://h/v1"}, environ={})
    assert "sk-very-secret" not in repr(config) and "sk-very-secret" not in str(config)
    assert "api_key=<set>" in repr(config)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"timeout_seconds": "soon"}, "llm_rubric.timeout_seconds"),
        ({"timeout_seconds": 0}, "llm_rubric.timeout_seconds"),
        ({"max_retries": -1}, "llm_rubric.max_retries"),
        ({"max_concurrency": 0}, "llm_rubric.max_concurrency"),
        ({"max_answers_per_call": 0}, "llm_rubric.max_answers_per_call"),
        ({"breaker_failure_threshold": 0}, "llm_rubric.breaker_failure_threshold"),
        ({"model": ""}, "llm_rubric.model"),
        ({"temprature": 0}, "temprature"),
        ({"base_url": "llm.local/v1"}, "base_url"),
    ],
)
def test_invalid_settings_name_the_field(raw: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=r"\[plugins.config.llm_rubric\]") as caught:
        load_config(raw, environ={})
    assert field in str(caught.value)
