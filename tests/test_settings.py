"""Settings: every value checked with the variable named in one line, contradictions
refused, booleans and lists parsed, environment over file over default (and `clearmark
config` says which), secrets masked, and the README's table generated from the same
definitions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from clearmark.settings import Settings, SettingsError, mask_secret, set_settings, settings_table_markdown
from clearmark.workers.cli import cli
from clearmark.workers.commands.config import README_END, README_START, REFRESH_COMMAND, readme_with_table

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(monkeypatch, tmp_path):
    """No CLEARMARK_* variable from outside (the test sets its own), settings re-read."""
    for name in list(os.environ):
        if name.startswith("CLEARMARK_") and not name.startswith("CLEARMARK_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CLEARMARK_DATA_DIR", str(tmp_path / "data"))
    set_settings(None)
    yield monkeypatch
    set_settings(None)


def refused(env, **variables: str) -> str:
    for name, value in variables.items():
        env.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        Settings()
    for name in variables:  # one refusal at a time
        env.delenv(name)
    message = str(caught.value)
    assert "\n" not in message and "pydantic" not in message.lower()
    return message


def test_defaults_unchanged(env, tmp_path):
    s = Settings()
    data = (tmp_path / "data").resolve()
    assert s.data_dir == data
    assert s.database_url == f"sqlite:///{data / 'clearmark.db'}"
    assert s.storage_uri == (data / "storage").as_uri()
    assert s.engine_dir == str(data / "engines")
    assert (s.soft_time_limit_s, s.hard_time_limit_s, s.visibility_timeout_s) == (240, 300, 3900)
    assert (s.max_bytes, s.max_pixels, s.min_side) == (50 * 1024 * 1024, 40_000_000, 16)
    assert s.broker_url == "redis://127.0.0.1:6379/0" and s.webhook_allow_hosts == ()
    assert s.detect_flip is True and s.rate_limit == "30/second;600/minute"
    assert (s.max_attempts, s.max_resends) == (3, 5)


def test_negative_size_is_refused_with_its_variable(env):
    assert refused(env, CLEARMARK_MAX_BYTES="-5") == "CLEARMARK_MAX_BYTES=-5: must be at least 1"
    assert refused(env, CLEARMARK_MAX_PIXELS="lots") == "CLEARMARK_MAX_PIXELS=lots: must be a whole number"
    assert refused(env, CLEARMARK_MASK_THRESHOLD="1.5") == "CLEARMARK_MASK_THRESHOLD=1.5: must be at most 1"


@pytest.mark.parametrize(
    "variables, named",
    [
        (
            {"CLEARMARK_SOFT_TIME_LIMIT_S": "300"},
            ["CLEARMARK_SOFT_TIME_LIMIT_S=300 must be below CLEARMARK_HARD_TIME_LIMIT_S=300"],
        ),
        (
            {"CLEARMARK_VISIBILITY_TIMEOUT_S": "120"},
            ["CLEARMARK_VISIBILITY_TIMEOUT_S=120 must be above CLEARMARK_HARD_TIME_LIMIT_S=300"],
        ),
        (
            {
                "CLEARMARK_SOFT_TIME_LIMIT_S": "5",
                "CLEARMARK_HARD_TIME_LIMIT_S": "10",
                "CLEARMARK_VISIBILITY_TIMEOUT_S": "20",
            },
            [
                "CLEARMARK_VISIBILITY_TIMEOUT_S=20 must be above CLEARMARK_RETRY_BACKOFF_MAX_S=30",
                "must be above the longest webhook retry delay, 60 s",
            ],
        ),
        (
            {"CLEARMARK_RETRY_BACKOFF_MAX_S": "700"},
            ["CLEARMARK_RETRY_BACKOFF_MAX_S=700 must be at most CLEARMARK_TRANSIENT_RETRY_S=600"],
        ),
        (
            {"CLEARMARK_MIN_SIDE": "10000"},
            ["CLEARMARK_MIN_SIDE=10000 and CLEARMARK_MAX_PIXELS=40000000 refuse every image"],
        ),
        (
            {"CLEARMARK_REMOVE_CROP_MARGIN": "512"},
            ["CLEARMARK_REMOVE_CROP_MARGIN=512 must be under half of CLEARMARK_REMOVE_MAX_CROP=1024"],
        ),
    ],
)
def test_each_contradiction_is_refused_naming_its_variables(env, variables, named):
    message = refused(env, **variables)
    assert all(part in message for part in named), message


def test_contradictions_are_refused_in_code_too(env):
    with pytest.raises(SettingsError, match="CLEARMARK_SOFT_TIME_LIMIT_S=400"):
        Settings(soft_time_limit_s=400)
    with pytest.raises(SettingsError, match="CLEARMARK_VISIBILITY_TIMEOUT_S=100"):
        Settings().replace(visibility_timeout_s=100)
    # a value worked out from others is worked out again: not left behind by a change
    s = Settings().replace(hard_time_limit_s=5000, soft_time_limit_s=4000)
    assert s.visibility_timeout_s == 8600


def test_other_values_are_checked(env):
    assert "CLEARMARK_BACKEND=tensorflow: expected one of auto" in refused(
        env, CLEARMARK_BACKEND="tensorflow"
    )
    assert "CLEARMARK_DEVICE=gpu" in refused(env, CLEARMARK_DEVICE="gpu")
    assert "CLEARMARK_RATE_LIMIT=fast" in refused(env, CLEARMARK_RATE_LIMIT="fast")
    assert "CLEARMARK_PUBLIC_URL=example.com" in refused(env, CLEARMARK_PUBLIC_URL="example.com")
    assert "CLEARMARK_MAX_RESENDS=0: " in refused(env, CLEARMARK_MAX_RESENDS="0")


@pytest.mark.parametrize(
    "word, value",
    [(w, True) for w in ("1", "true", "yes", "on", " ON ", "True")]
    + [(w, False) for w in ("0", "false", "no", "off", "OFF")],
)
def test_booleans_parse(env, word, value):
    env.setenv("CLEARMARK_REMOVE_FLIP", word)
    assert Settings().remove_flip is value


def test_a_bad_boolean_is_refused(env):
    message = refused(env, CLEARMARK_GATE="maybe")
    assert message == "CLEARMARK_GATE=maybe: expected 1/0, true/false, yes/no or on/off"


def test_lists_parse(env):
    env.setenv("CLEARMARK_WEBHOOK_ALLOW_HOSTS", " 10.0.0.0/8, receiver,,")
    assert Settings().webhook_allow_hosts == ("10.0.0.0/8", "receiver")
    env.setenv("CLEARMARK_WEBHOOK_ALLOW_HOSTS", "")  # empty: unset
    assert Settings().webhook_allow_hosts == ()
    assert Settings(webhook_allow_hosts=("a",)).webhook_allow_hosts == ("a",)


def _config(env) -> dict[str, dict[str, str]]:
    set_settings(None)
    result = CliRunner().invoke(cli, ["config", "--json"], env=dict(os.environ))
    assert result.exit_code == 0, result.output
    return {row["variable"]: row for row in json.loads(result.output)}


def test_environment_beats_file_beats_default(env, tmp_path):
    settings_file = tmp_path / "clearmark.env"
    settings_file.write_text(
        "# a settings file\nCLEARMARK_MAX_BYTES=1000\nCLEARMARK_MAX_ATTEMPTS=5\nCLEARMARK_DETECT_FLIP=off\n"
    )
    env.setenv("CLEARMARK_ENV_FILE", str(settings_file))
    env.setenv("CLEARMARK_MAX_ATTEMPTS", "7")
    s = Settings()
    assert (s.max_bytes, s.max_attempts, s.detect_flip, s.min_side) == (1000, 7, False, 16)
    assert [s.source(n) for n in ("max_bytes", "max_attempts", "min_side")] == [
        "file",
        "environment",
        "default",
    ]

    rows = _config(env)
    assert rows["CLEARMARK_MAX_BYTES"] == {
        "variable": "CLEARMARK_MAX_BYTES",
        "value": "1000",
        "source": "file",
    }
    assert rows["CLEARMARK_MAX_ATTEMPTS"]["value"] == "7"
    assert rows["CLEARMARK_MAX_ATTEMPTS"]["source"] == "environment"
    assert rows["CLEARMARK_DETECT_FLIP"] == {
        "variable": "CLEARMARK_DETECT_FLIP",
        "value": "0",
        "source": "file",
    }
    assert rows["CLEARMARK_MIN_SIDE"]["source"] == "default"

    text = CliRunner().invoke(cli, ["config"], env=dict(os.environ)).output
    assert f"settings file: {settings_file}" in text
    assert any(
        line.startswith("CLEARMARK_MAX_BYTES=1000 ") and line.endswith("# file") for line in text.splitlines()
    )


def test_the_embedded_mode_is_no_broker_set(env):
    assert Settings().embedded and Settings().replace(database_url="sqlite:///other.db").embedded
    assert not Settings(broker_url="redis://127.0.0.1:6379/3").embedded
    env.setenv("CLEARMARK_BROKER_URL", Settings().broker_url)  # set, though to the default
    assert not Settings().embedded


def test_a_bad_value_in_the_file_names_the_file(env, tmp_path):
    settings_file = tmp_path / "clearmark.env"
    settings_file.write_text("CLEARMARK_MIN_SIDE=0\n")
    env.setenv("CLEARMARK_ENV_FILE", str(settings_file))
    assert refused(env) == f"CLEARMARK_MIN_SIDE=0 (in {settings_file}): must be at least 1"
    settings_file.write_text("CLEARMARK_MAX_BYTE=10\n")  # a typo is not ignored
    assert refused(env) == f"CLEARMARK_MAX_BYTE=10 (in {settings_file}): not a clearmark setting"
    env.setenv("CLEARMARK_ENV_FILE", str(tmp_path / "missing.env"))
    assert refused(env) == f"CLEARMARK_ENV_FILE={tmp_path / 'missing.env'}: no such file"


def test_secrets_are_masked(env):
    assert mask_secret("postgresql://user:pw@host/db") == "postgresql://user:***@host/db"
    assert mask_secret("redis://:pw@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert (
        mask_secret("postgresql+psycopg://postgres@127.0.0.1/test")
        == "postgresql+psycopg://postgres@127.0.0.1/test"
    )
    env.setenv("CLEARMARK_DATABASE_URL", "postgresql://user:hunter2@host/db")
    env.setenv("CLEARMARK_BROKER_URL", "redis://:hunter2@broker:6379/0")
    env.setenv("CLEARMARK_RATE_LIMIT_STORAGE", "redis://:hunter2@broker:6379/1")
    rows = _config(env)
    assert rows["CLEARMARK_DATABASE_URL"]["value"] == "postgresql://user:***@host/db"
    assert rows["CLEARMARK_DATABASE_URL"]["source"] == "environment"
    result = CliRunner().invoke(cli, ["config"], env=dict(os.environ))
    assert "hunter2" not in result.output and "redis://:***@broker:6379/0" in result.output
    # ... and in an error message
    message = refused(env, CLEARMARK_DATABASE_URL="user:hunter2@host/db")
    assert message == "CLEARMARK_DATABASE_URL=user:***@host/db: expected a URL (scheme://...)"


def test_cli_prints_one_error_line_and_exits_2(env, tmp_path):
    bad = dict(os.environ, CLEARMARK_MAX_BYTES="-5")
    for argv in (["config"], ["status"], ["worker"], ["api"]):
        result = subprocess.run(
            [sys.executable, "-m", "clearmark", *argv], env=bad, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, (argv, result.stderr)
        assert result.stderr == "Error: CLEARMARK_MAX_BYTES=-5: must be at least 1\n", (argv, result.stderr)
        assert result.stdout == ""
    result = CliRunner().invoke(cli, ["config"], env={"CLEARMARK_SOFT_TIME_LIMIT_S": "301"})
    assert result.exit_code == 2
    assert result.output.startswith("Error: CLEARMARK_SOFT_TIME_LIMIT_S=301 must be below")


def test_readme_settings_table_is_in_step():
    readme = (ROOT / "README.md").read_text()
    assert README_START in readme and README_END in readme
    assert readme_with_table(readme) == readme, (
        f"README.md's settings table is out of date: run `{REFRESH_COMMAND}`"
    )
    table = settings_table_markdown()
    for name in Settings.model_fields:
        assert f"`CLEARMARK_{name.upper()}`" in table
        assert Settings.model_fields[name].description, f"{name} has no description"


def test_environment_gives_a_subprocess_the_same_values(monkeypatch):
    s = Settings(webhook_allow_hosts=("a.example", "b.example"), webhook_backoff_s=0.25, gate=False)
    env = s.environment("webhook_allow_hosts", "webhook_backoff_s", "gate", "data_dir")
    assert env["CLEARMARK_WEBHOOK_ALLOW_HOSTS"] == "a.example,b.example"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    again = Settings()
    for name in ("webhook_allow_hosts", "webhook_backoff_s", "gate", "data_dir"):
        assert getattr(again, name) == getattr(s, name)
