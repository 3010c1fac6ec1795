"""load_settings: TOML file + CK_<SECTION>__<KEY> overlay, validation errors that name the key.

Every test passes an explicit ``environ`` dict and an explicit file, so the real process environment
and the project's litestar.toml never leak in.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from app.settings import Settings, SettingsError, load_settings

GOOD_KEY = "k" * 32
OTHER_KEY = "o" * 32
JWT_SECRET = "unit-test-jwt-secret-0123456789abcdef"


def write(tmp_path: Path, text: str, name: str = "settings.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_empty_file_and_empty_environment_give_the_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, ""), environ={})
    assert settings == Settings()
    assert settings.is_development
    assert settings.quiz.choices_per_question == 4
    assert settings.signing.active_key_id in settings.signing.keys


def test_toml_values_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[quiz]
choices_per_question = 3
locale = "de"

[retry]
cooldown_seconds = 120
max_attempts_per_day = 5

[scoring.weights]
COMPREHENSION = 2.0
CONSENT = 3.0
FREE_RESPONSE = 0.0
""",
    )
    settings = load_settings(path, environ={})
    assert settings.quiz.choices_per_question == 3
    assert settings.quiz.locale == "de"
    assert settings.retry.cooldown_seconds == 120
    assert settings.retry.max_attempts_per_day == 5
    assert settings.scoring.weights == {"COMPREHENSION": 2.0, "CONSENT": 3.0, "FREE_RESPONSE": 0.0}
    # untouched sections keep their defaults
    assert settings.queue == Settings().queue


def test_environment_overrides_toml_and_scalars_are_converted(tmp_path: Path) -> None:
    path = write(tmp_path, "[quiz]\nchoices_per_question = 3\n[rate_limit]\nenabled = true\n")
    settings = load_settings(
        path,
        environ={
            "CK_QUIZ__CHOICES_PER_QUESTION": "5",
            "CK_RATE_LIMIT__ENABLED": "false",
            "CK_SCORING__PASS_THRESHOLD": "0.7",
            "CK_DATABASE__AUTO_MIGRATE": "null",
            "CK_QUIZ__LOCALE": "fr",
        },
    )
    assert settings.quiz.choices_per_question == 5
    assert settings.rate_limit.enabled is False
    assert settings.scoring.pass_threshold == pytest.approx(0.7)
    assert settings.database.auto_migrate is None
    assert settings.quiz.locale == "fr"


def test_environment_names_are_case_insensitive_for_section_and_key(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, ""), environ={"CK_quiz__Locale": "es"})
    assert settings.quiz.locale == "es"


def test_structured_environment_values_are_json(tmp_path: Path) -> None:
    settings = load_settings(
        write(tmp_path, ""),
        environ={
            "CK_PLUGINS__ENABLED": '["rule"]',
            "CK_SIGNING__KEYS": f'{{"k1": "{GOOD_KEY}", "k2": "{OTHER_KEY}"}}',
            "CK_SIGNING__ACTIVE_KEY_ID": "k2",
        },
    )
    assert settings.plugins.enabled == ["rule"]
    assert settings.signing.keys == {"k1": GOOD_KEY, "k2": OTHER_KEY}
    assert settings.signing.active_key_id == "k2"


def test_unrelated_environment_variables_are_ignored(tmp_path: Path) -> None:
    settings = load_settings(
        write(tmp_path, ""),
        environ={
            "HOME": "/root",
            "XCK_QUIZ__LOCALE": "de",  # wrong prefix
            "ck_quiz__locale": "de",  # the prefix is case-sensitive
            "CK_TEST_POSTGRES_URL": "postgresql://u@h/db",  # read by the test suite, not a setting
            "PATH": "/usr/bin",
        },
    )
    assert settings == Settings()


def test_settings_file_can_come_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, '[quiz]\nlocale = "it"\n', name="other.toml")
    settings = load_settings(environ={"CK_SETTINGS_FILE": str(path)})
    assert settings.quiz.locale == "it"


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "absent.toml", environ={})


def test_missing_file_named_by_environment_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(environ={"CK_SETTINGS_FILE": str(tmp_path / "absent.toml")})


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[quiz\nlocale = ", name="broken.toml")
    with pytest.raises(SettingsError, match="broken.toml"):
        load_settings(path, environ={})


def test_unknown_key_in_toml_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "[quiz]\nchoices_per_questio = 3\n")
    with pytest.raises(SettingsError, match="choices_per_questio") as info:
        load_settings(path, environ={})
    assert "$.quiz" in str(info.value)


def test_unknown_section_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="nope"):
        load_settings(write(tmp_path, "[nope]\nx = 1\n"), environ={})


def test_unknown_key_from_environment_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="colour"):
        load_settings(write(tmp_path, ""), environ={"CK_QUIZ__COLOUR": "blue"})


def test_out_of_range_value_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"\$\.quiz\.choices_per_question"):
        load_settings(write(tmp_path, "[quiz]\nchoices_per_question = 9\n"), environ={})


def test_wrong_type_from_environment_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"\$\.retry\.cooldown_seconds"):
        load_settings(write(tmp_path, ""), environ={"CK_RETRY__COOLDOWN_SECONDS": "soon"})


def test_invalid_json_in_environment_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="CK_PLUGINS__ENABLED"):
        load_settings(write(tmp_path, ""), environ={"CK_PLUGINS__ENABLED": "[rule"})


def test_environment_key_under_a_non_section_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="`quiz` is not a section"):
        load_settings(write(tmp_path, "quiz = 5\n"), environ={"CK_QUIZ__LOCALE": "de"})


def test_literal_values_are_checked(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"\$\.server\.environment"):
        load_settings(write(tmp_path, ""), environ={"CK_SERVER__ENVIRONMENT": "staging"})
    with pytest.raises(SettingsError, match=r"scoring\.routes"):
        load_settings(write(tmp_path, ""), environ={"CK_SCORING__ROUTES": '{"ESSAY": "x"}'})


def test_none_algorithm_can_never_be_configured(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"auth\.algorithms"):
        load_settings(write(tmp_path, ""), environ={"CK_AUTH__ALGORITHMS": '["none"]'})


def test_active_signing_key_must_be_configured(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="signing.active_key_id `k9`"):
        load_settings(write(tmp_path, ""), environ={"CK_SIGNING__ACTIVE_KEY_ID": "k9"})


def test_short_signing_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"signing\.keys\.short"):
        load_settings(
            write(tmp_path, ""),
            environ={"CK_SIGNING__KEYS": f'{{"dev-1": "{GOOD_KEY}", "short": "abc"}}'},
        )


def test_short_jwt_secret_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"auth\.jwt_secret"):
        load_settings(write(tmp_path, ""), environ={"CK_AUTH__JWT_SECRET": "too-short"})


def test_production_refuses_development_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nenvironment = "production"\n')
    # A production encryption KEK (the development one is refused: tests/security/test_encryption_at_rest.py).
    kek = {
        "CK_ENCRYPTION__KEYS": '{"prod-kek": "' + "cHJvZC1vbmx5LWtlay0wMTIzNDU2Nzg5YWJjZGVmZ2g=" + '"}',
        "CK_ENCRYPTION__ACTIVE_KEY_ID": "prod-kek",
    }
    with pytest.raises(SettingsError, match=r"auth\.jwt_secret"):
        load_settings(path, environ={**kek})
    with pytest.raises(SettingsError, match=r"signing\.keys"):
        load_settings(path, environ={**kek, "CK_AUTH__JWT_SECRET": JWT_SECRET})
    secrets = {
        **kek,
        "CK_AUTH__JWT_SECRET": JWT_SECRET,
        "CK_SIGNING__KEYS": f'{{"prod-1": "{GOOD_KEY}"}}',
        "CK_SIGNING__ACTIVE_KEY_ID": "prod-1",
    }
    with pytest.raises(SettingsError, match=r"audit\.digest_key"):
        load_settings(path, environ=secrets)
    with pytest.raises(SettingsError, match=r"encryption"):
        load_settings(path, environ={**secrets, "CK_AUDIT__DIGEST_KEY": "p" * 40, "CK_ENCRYPTION__KEYS": "{}"})
    settings = load_settings(path, environ={**secrets, "CK_AUDIT__DIGEST_KEY": "p" * 40})
    assert settings.server.environment == "production"
    assert not settings.is_development


def test_development_defaults_are_fine_outside_production(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[server]\nenvironment = "test"\n'), environ={})
    assert settings.server.environment == "test"


def test_pool_bounds_are_checked(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="pool_min_size"):
        load_settings(
            write(tmp_path, ""),
            environ={"CK_DATABASE__POOL_MIN_SIZE": "20", "CK_DATABASE__POOL_MAX_SIZE": "5"},
        )


@pytest.mark.parametrize("url", ["mysql://db/x", "sqlite.db", ""])
def test_database_url_scheme_is_checked(tmp_path: Path, url: str) -> None:
    with pytest.raises(SettingsError, match=r"database\.url"):
        load_settings(write(tmp_path, ""), environ={"CK_DATABASE__URL": url})


@pytest.mark.parametrize("url", ["sqlite:///var/x.sqlite3", "postgresql://u@h/db", "postgres://u@h/db"])
def test_database_url_schemes_accepted(tmp_path: Path, url: str) -> None:
    assert load_settings(write(tmp_path, ""), environ={"CK_DATABASE__URL": url}).database.url == url


def test_settings_are_immutable(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, ""), environ={})
    with pytest.raises(AttributeError):
        settings.quiz.locale = "de"  # type: ignore[misc]


def test_a_secret_starting_with_a_brace_stays_a_string(tmp_path: Path) -> None:
    secret = "{not-json-but-a-valid-secret-0123456789abcdef}"
    settings = load_settings(write(tmp_path, ""), environ={"CK_AUTH__JWT_SECRET": secret})
    assert settings.auth.jwt_secret == secret


def test_table_settings_from_the_environment_are_json(tmp_path: Path) -> None:
    keys = {"k1": "a" * 40, "k2": "b" * 40}
    env = {"CK_SIGNING__KEYS": json.dumps(keys), "CK_SIGNING__ACTIVE_KEY_ID": "k2"}
    assert load_settings(write(tmp_path, ""), environ=env).signing.keys == keys
    with pytest.raises(SettingsError, match="CK_SIGNING__KEYS"):
        load_settings(write(tmp_path, ""), environ={"CK_SIGNING__KEYS": "{broken"})


def test_the_project_settings_file_lists_every_setting_and_matches_the_defaults() -> None:
    import re

    path = Path(__file__).resolve().parents[2] / "litestar.toml"
    text = path.read_text(encoding="utf-8")
    assert load_settings(path, environ={}) == Settings()
    for section in Settings.__struct_fields__:
        assert f"[{section}]" in text, section
        for key in getattr(Settings(), section).__struct_fields__:
            assert re.search(rf"^#? ?{key} = ", text, re.MULTILINE) or f"[{section}.{key}]" in text, f"{section}.{key}"


def test_one_plugin_setting_can_come_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, '[plugins.config.embedding]\nvariant = "int8"\nmax_batch = 16\n')
    settings = load_settings(
        path,
        environ={
            "CK_PLUGINS__CONFIG__EMBEDDING__VARIANT": "fp32",
            "CK_PLUGINS__CONFIG__LLM_RUBRIC__BASE_URL": "http://x/v1",
        },
    )
    assert settings.plugins.config == {
        "embedding": {"variant": "fp32", "max_batch": 16},
        "llm_rubric": {"base_url": "http://x/v1"},
    }


def test_a_nested_environment_path_into_a_scalar_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="CK_QUIZ__LOCALE__X: `quiz.locale` is not a table"):
        load_settings(write(tmp_path, ""), environ={"CK_QUIZ__LOCALE__X": "1"})


def test_two_enabled_experiments_on_one_kind_are_refused(tmp_path: Path) -> None:
    text = """
[[scoring.experiments]]
name = "a"
kind = "COMPREHENSION"
variants = [{ name = "x", scorer = "embedding.similarity" }]
[[scoring.experiments]]
name = "b"
kind = "COMPREHENSION"
variants = [{ name = "y", scorer = "embedding.cosine" }]
"""
    with pytest.raises(SettingsError, match="more than one enabled experiment for COMPREHENSION"):
        load_settings(write(tmp_path, text), environ={})
    settings = load_settings(write(tmp_path, text.replace('name = "b"', 'name = "b"\nenabled = false')), environ={})
    assert [e.name for e in settings.scoring.experiments] == ["a", "b"]


def test_experiment_names_must_be_unique(tmp_path: Path) -> None:
    text = """
[[scoring.experiments]]
name = "a"
kind = "COMPREHENSION"
variants = [{ name = "x", scorer = "s" }]
[[scoring.experiments]]
name = "a"
kind = "CONSENT"
variants = [{ name = "y", scorer = "s" }]
"""
    with pytest.raises(SettingsError, match="names must be unique"):
        load_settings(write(tmp_path, text), environ={})


def test_litestar_toml_shows_every_embedding_plugin_setting() -> None:
    from scorers.embedding.config import EmbeddingConfig, RubricConfig

    text = (Path(__file__).resolve().parents[2] / "litestar.toml").read_text(encoding="utf-8")
    section = text.split("[plugins.config.embedding]", 1)[1]
    for key in [*EmbeddingConfig.__struct_fields__, *RubricConfig.__struct_fields__]:
        if key != "rubric":
            assert re.search(rf"^# {key} = ", section, re.MULTILINE), key
