"""Settings that check themselves and say where a bad value came from.

Each section validates itself in ``__post_init__`` (so msgspec reports the section's location), every
field is documented and listed in ``litestar.toml``, a bad value names its environment variable or file
key, and a ``CK_`` variable that matches no setting stops start-up.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

import app.settings as settings_module
from app.domain.experiments import Experiment, ExperimentVariant
from app.settings import (
    NON_SETTING_VARIABLES,
    AuditSettings,
    AuthSettings,
    DatabaseSettings,
    EncryptionSettings,
    ModerationSettings,
    ScoringSettings,
    Settings,
    SettingsError,
    SigningSettings,
    load_settings,
)

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str = "", name: str = "settings.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _sections() -> list[type[msgspec.Struct]]:
    return [field.type for field in msgspec.structs.fields(Settings)]


# --- each section validates itself ---------------------------------------------------------------


def _experiment(name: str, kind: str = "COMPREHENSION") -> Experiment:
    return Experiment(name=name, kind=kind, variants=[ExperimentVariant(name="v", scorer="s")])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: DatabaseSettings(pool_min_size=5, pool_max_size=2), "database.pool_min_size"),
        (lambda: DatabaseSettings(url="mysql://db/x"), "database.url"),
        (lambda: AuthSettings(jwt_secret="short"), "auth.jwt_secret"),
        (lambda: SigningSettings(active_key_id="k9"), "signing.active_key_id `k9`"),
        (lambda: SigningSettings(keys={"dev-1": "x" * 32, "s": "abc"}), r"signing\.keys\.s "),
        (lambda: SigningSettings(retired_keys={"k0": "2026-01-01T00:00:00Z"}), r"signing\.retired_keys\.k0"),
        (
            lambda: ScoringSettings(experiments=[_experiment("a"), _experiment("b")]),
            "more than one enabled experiment for COMPREHENSION",
        ),
        (
            lambda: ScoringSettings(experiments=[_experiment("a"), _experiment("a", "CONSENT")]),
            "names must be unique",
        ),
        (lambda: EncryptionSettings(active_key_id="nope"), "encryption.active_key_id `nope`"),
        (lambda: EncryptionSettings(keys={}), "encryption: no key-encryption keys"),
        (lambda: AuditSettings(retention_days=30), "audit.retention_days must be at least 365"),
        (lambda: AuditSettings(digest_key="short"), "audit.digest_key must be at least 32"),
        (lambda: AuditSettings(export_interval_seconds=60), "audit.s3_bucket is empty"),
        (lambda: ModerationSettings(roles_claim="app_metadata..roles"), "moderation.roles_claim"),
        (lambda: ModerationSettings(page_size=300, max_page_size=100), "moderation.page_size"),
    ],
)
def test_a_section_refuses_a_bad_combination_when_built(build: Any, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        build()


@pytest.mark.parametrize(
    ("environ", "section"),
    [
        ({"CK_DATABASE__POOL_MIN_SIZE": "20", "CK_DATABASE__POOL_MAX_SIZE": "5"}, "database"),
        ({"CK_SIGNING__ACTIVE_KEY_ID": "k9"}, "signing"),
        ({"CK_AUDIT__RETENTION_DAYS": "30"}, "audit"),
        ({"CK_MODERATION__PAGE_SIZE": "300"}, "moderation"),
        ({"CK_ENCRYPTION__ACTIVE_KEY_ID": "nope"}, "encryption"),
    ],
)
def test_msgspec_reports_the_section_that_refused(tmp_path: Path, environ: dict[str, str], section: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path), environ=environ)
    assert f"- at `$.{section}`" in str(info.value)


def test_only_the_production_checks_span_sections(tmp_path: Path) -> None:
    # A production Settings can still be built (tests do); loading one is what refuses the defaults.
    production = msgspec.convert({"server": {"environment": "production"}}, Settings)
    assert production.server.environment == "production"
    with pytest.raises(SettingsError, match="auth.jwt_secret still has the development default"):
        load_settings(write(tmp_path, '[server]\nenvironment = "production"\n'), environ={})
    assert not hasattr(settings_module, "_validate_signing_retirement")
    assert not hasattr(settings_module, "_validate_moderation")


# --- every field documented and listed -----------------------------------------------------------


def _field_docstrings() -> dict[tuple[str, str], str | None]:
    """(class, field) -> the string expression right after the field's annotated assignment."""
    tree = ast.parse(inspect.getsource(settings_module))
    found: dict[tuple[str, str], str | None] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        body = node.body
        for index, statement in enumerate(body):
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                after = body[index + 1] if index + 1 < len(body) else None
                doc = (
                    after.value.value
                    if isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)
                    else None
                )
                found[(node.name, statement.target.id)] = doc
    return found


def test_every_settings_field_has_a_docstring() -> None:
    docs = _field_docstrings()
    missing = [
        f"{section.__name__}.{name}"
        for section in _sections()
        for name in section.__struct_fields__
        if not (docs.get((section.__name__, name)) or "").strip()
    ]
    assert not missing, f"settings fields without a docstring: {missing}"


def _listed_keys(text: str) -> set[str]:
    """``section.key`` for every key shown (set or commented out) under its own table header."""
    listed: set[str] = set()
    table = ""
    for line in text.splitlines():
        if header := re.match(r"^#? ?\[\[?([\w.]+)\]\]?", line):
            table = header.group(1)
            listed.add(table)
        elif key := re.match(r"^#? ?(\w+) = ", line):
            listed.add(f"{table}.{key.group(1)}")
    return listed


def test_every_settings_field_appears_in_the_project_settings_file() -> None:
    listed = _listed_keys((ROOT / "litestar.toml").read_text(encoding="utf-8"))
    missing = [
        f"{field.name}.{key}"
        for field in msgspec.structs.fields(Settings)
        for key in field.type.__struct_fields__
        if f"{field.name}.{key}" not in listed
    ]
    assert not missing, f"settings not shown in litestar.toml: {missing}"


def test_the_docstring_meta_test_sees_a_missing_docstring() -> None:
    source = 'class X:\n    a: int = 1\n    """doc"""\n    b: int = 2\n    c: int = 3\n    """doc"""\n'
    tree = ast.parse(source)
    body = tree.body[0].body  # type: ignore[attr-defined]
    documented = [
        s.target.id
        for i, s in enumerate(body)
        if isinstance(s, ast.AnnAssign) and i + 1 < len(body) and isinstance(body[i + 1], ast.Expr)
    ]
    assert documented == ["a", "c"]


# --- a bad value names where it came from --------------------------------------------------------


def test_a_bad_environment_value_names_its_variable(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path), environ={"CK_DATABASE__POOL_MAX_SIZE": "abc"})
    message = str(info.value)
    assert "CK_DATABASE__POOL_MAX_SIZE" in message
    assert "$.database.pool_max_size" in message


def test_a_bad_file_value_names_the_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[quiz]\nchoices_per_question = 9\n", name="mine.toml")
    with pytest.raises(SettingsError) as info:
        load_settings(path, environ={})
    message = str(info.value)
    assert f"`quiz.choices_per_question` in {path}" in message
    assert "CK_" not in message


def test_the_environment_wins_over_the_file_in_the_message_too(tmp_path: Path) -> None:
    path = write(tmp_path, "[retry]\ncooldown_seconds = 10\n")
    with pytest.raises(SettingsError) as info:
        load_settings(path, environ={"CK_RETRY__COOLDOWN_SECONDS": "soon"})
    assert "environment variable CK_RETRY__COOLDOWN_SECONDS" in str(info.value)
    assert str(path) not in str(info.value)


def test_a_section_error_names_every_source_in_that_section(tmp_path: Path) -> None:
    path = write(tmp_path, "[database]\npool_max_size = 5\n")
    with pytest.raises(SettingsError) as info:
        load_settings(path, environ={"CK_DATABASE__POOL_MIN_SIZE": "20", "CK_QUIZ__LOCALE": "de"})
    message = str(info.value)
    assert "database.pool_min_size is larger" in message
    assert "CK_DATABASE__POOL_MIN_SIZE" in message
    assert f"`database.pool_max_size` in {path}" in message
    assert "CK_QUIZ__LOCALE" not in message


def test_a_bad_list_item_in_the_file_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[[scoring.experiments]]\nname = "a"\nkind = "ESSAY"\nvariants = []\n')
    with pytest.raises(SettingsError, match=re.escape(f"`scoring.experiments` in {path}")):
        load_settings(path, environ={})


def test_an_unknown_file_key_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[quiz]\ncolour = 1\n")
    with pytest.raises(SettingsError, match=re.escape(f"`quiz.colour` in {path}")):
        load_settings(path, environ={})


# --- CK_ variables that match no setting ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("CK_DATABASE_URL", "did you mean CK_DATABASE__URL?"),
        ("CK_DATABSE__URL", "did you mean CK_DATABASE__URL?"),
        ("CK_QUIZ__LOCAL", "did you mean CK_QUIZ__LOCALE?"),
        ("CK_QUIZ__COLOUR", "`quiz.colour` is no setting"),
        ("CK_TEST_SOMETHING_NEW", "names no setting"),
    ],
)
def test_a_ck_variable_that_matches_no_setting_stops_start_up(tmp_path: Path, name: str, hint: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path), environ={name: "x"})
    assert name in str(info.value)
    assert hint in str(info.value)


def test_every_unknown_variable_is_listed_at_once(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path), environ={"CK_DATABASE_URL": "x", "CK_REDIS_URL": "y"})
    assert "CK_DATABASE_URL" in str(info.value) and "CK_REDIS_URL" in str(info.value)


def test_variables_read_directly_are_allowed(tmp_path: Path) -> None:
    environ = {name: "1" for name in NON_SETTING_VARIABLES if name != "CK_SETTINGS_FILE"}
    assert load_settings(write(tmp_path), environ=environ) == Settings()


def test_a_variable_a_plugin_is_told_to_read_is_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, '[plugins.config.llm_rubric]\napi_key_env = "CK_OPENAI_KEY"\n')
    settings = load_settings(path, environ={"CK_OPENAI_KEY": "sk-x"})
    assert settings.plugins.config["llm_rubric"]["api_key_env"] == "CK_OPENAI_KEY"
    with pytest.raises(SettingsError, match="CK_OPENAI_KEY"):
        load_settings(write(tmp_path, name="plain.toml"), environ={"CK_OPENAI_KEY": "sk-x"})


_READ = re.compile(r"""(?:environ\.get|environ\[|getenv)\(?\s*["'](CK_[A-Z0-9_]+)["']""")


def test_the_allowed_names_are_exactly_those_the_code_reads() -> None:
    from scorers.llm_rubric.config import LlmRubricConfig

    read = {
        match
        for folder in ("app", "scorers", "notifiers", "plugins", "tests", "bench")
        for file in (ROOT / folder).rglob("*.py")
        for match in _READ.findall(file.read_text(encoding="utf-8"))
    }
    read |= {settings_module.SETTINGS_FILE_ENV, LlmRubricConfig().api_key_env}
    assert read == set(NON_SETTING_VARIABLES)
