"""Settings of the LLM rubric scorer, read from ``[plugins.config.llm_rubric]``.

Every field has a default, so an empty table gives a scorer that is registered but not configured
(``base_url`` empty): it then raises :class:`plugins.scorer.ScorerUnavailableError` and the service uses
its fallback scorer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

__all__ = ["CONFIG_NAME", "ConfigError", "LlmRubricConfig", "load_config"]

CONFIG_NAME = "llm_rubric"


class ConfigError(ValueError):
    """The ``[plugins.config.llm_rubric]`` table is invalid; the message names the field."""


class LlmRubricConfig(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Settings, field by field.

    Attributes:
        base_url: OpenAI-compatible API root, e.g. ``https://api.openai.com/v1`` (``/chat/completions`` is
            appended). Empty means not configured: every ``score`` call raises ``ScorerUnavailableError``.
        model: model name sent with each call.
        api_key: bearer token; prefer the environment variable named by ``api_key_env``, which wins when
            set. Empty sends no ``Authorization`` header (e.g. a local model server). Never logged.
        api_key_env: name of the environment variable holding the API key.
        timeout_seconds: limit on one HTTP call, connect to last byte.
        max_retries: further attempts after a failed call (timeout, connection error, 5xx, 429, a reply
            that is not valid grades). Keep the total under ``scoring.timeout_seconds``.
        backoff_base_seconds: first wait before a retry; it doubles per retry, plus random jitter of up
            to the same amount.
        max_backoff_seconds: cap on any single wait, including a server's ``Retry-After``.
        max_concurrency: HTTP calls in flight at once across all batches.
        max_answers_per_call: answers graded in one call; larger batches are split.
        breaker_failure_threshold: consecutive failed calls that open the circuit.
        breaker_reset_seconds: how long the circuit stays open before one probe call is let through.
        rubric_file: TOML file with the criteria and prompts; a relative path is looked up from the
            working directory, then from the project root.
        max_answer_chars: answers longer than this are cut before sending and flagged ``truncated``;
            the person's texts are cut to the same length (unflagged) to bound the prompt.
    """

    base_url: str = ""
    model: Annotated[str, Meta(min_length=1)] = "gpt-4o-mini"
    api_key: str = ""
    api_key_env: str = "CK_LLM_API_KEY"
    timeout_seconds: Annotated[float, Meta(gt=0, le=120)] = 2.0
    max_retries: Annotated[int, Meta(ge=0, le=10)] = 1
    backoff_base_seconds: Annotated[float, Meta(ge=0, le=60)] = 0.2
    max_backoff_seconds: Annotated[float, Meta(ge=0, le=300)] = 2.0
    max_concurrency: Annotated[int, Meta(ge=1, le=256)] = 4
    max_answers_per_call: Annotated[int, Meta(ge=1, le=64)] = 8
    breaker_failure_threshold: Annotated[int, Meta(ge=1)] = 5
    breaker_reset_seconds: Annotated[float, Meta(gt=0)] = 30.0
    rubric_file: Annotated[str, Meta(min_length=1)] = "templates/rubrics/free_response.toml"
    max_answer_chars: Annotated[int, Meta(ge=1)] = 2000

    def __repr__(self) -> str:
        # The default repr would print the key; this one is safe to log.
        return (
            f"LlmRubricConfig(endpoint_configured={self.configured}, model={self.model!r}, "
            f"api_key={'<set>' if self.api_key else '<unset>'})"
        )

    __str__ = __repr__

    @property
    def configured(self) -> bool:
        """Whether an endpoint is set."""
        return bool(self.base_url)

    @property
    def completions_url(self) -> str:
        """The chat-completions URL under ``base_url``."""
        return f"{self.base_url.rstrip('/')}/chat/completions"


def load_config(raw: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> LlmRubricConfig:
    """Build the settings from the plugin's table, taking the API key from the environment when set.

    ``environ`` defaults to ``os.environ``. Raises :class:`ConfigError` naming the offending field.
    """
    try:
        config = msgspec.convert(dict(raw), LlmRubricConfig, strict=False)
    except msgspec.ValidationError as exc:
        # msgspec says "... - at `$.timeout_seconds`"; name the field as it is written in litestar.toml.
        message = str(exc).replace("`$.", f"`{CONFIG_NAME}.")
        raise ConfigError(f"invalid [plugins.config.{CONFIG_NAME}]: {message}") from None
    base_url = config.base_url.strip()
    if base_url and not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"invalid [plugins.config.{CONFIG_NAME}]: base_url must start with http:// or https://")
    env = os.environ if environ is None else environ
    api_key = (env.get(config.api_key_env, "") if config.api_key_env else "").strip() or config.api_key.strip()
    return msgspec.structs.replace(config, base_url=base_url, api_key=api_key)
