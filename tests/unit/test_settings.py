"""Settings: defaults < TOML file < SHOAL_* environment < overrides, with type checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.settings import BY_NAME, SETTINGS, SettingsError, load


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "shoal.toml"
    path.write_text(text)
    return str(path)


def test_defaults() -> None:
    s = load(environ={})
    for setting in SETTINGS:
        assert getattr(s, setting.name) == setting.default
    assert s.port == 8080
    assert s.idle_timeout == 60.0
    assert s.max_open == 1000
    assert s.transaction_timeout == 10.0
    assert s.statement_timeout == 5.0
    assert s.max_response_bytes == 10_000_000
    assert s.synchronous == "full"
    assert s.admin_token is None


def test_every_setting_is_declared_once_with_help() -> None:
    assert len(BY_NAME) == len(SETTINGS)
    for setting in SETTINGS:
        assert setting.help.strip()
        assert setting.default is None or isinstance(setting.default, setting.type)


def test_precedence(tmp_path: Path) -> None:
    path = write(tmp_path, 'port = 9000\nidle_timeout = 30\nmax_open = 7\nhost = "0.0.0.0"\n')
    s = load(path, environ={})
    assert (s.port, s.idle_timeout, s.max_open, s.host) == (9000, 30.0, 7, "0.0.0.0")
    assert type(s.idle_timeout) is float
    env = {"SHOAL_PORT": "9100", "SHOAL_IDLE_TIMEOUT": "2.5"}
    s = load(path, environ=env)
    assert (s.port, s.idle_timeout, s.max_open) == (9100, 2.5, 7)
    s = load(path, overrides={"port": 9200, "max_open": None}, environ=env)
    assert (s.port, s.idle_timeout, s.max_open) == (9200, 2.5, 7)


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "readers = 9\n")
    assert load(environ={"SHOAL_CONFIG": path}).readers == 9
    # an explicit file wins over SHOAL_CONFIG
    other = tmp_path / "other.toml"
    other.write_text("readers = 2\n")
    assert load(str(other), environ={"SHOAL_CONFIG": path}).readers == 2


def test_empty_environment_values_are_ignored() -> None:
    assert load(environ={"SHOAL_PORT": "", "SHOAL_ADMIN_TOKEN": ""}).port == 8080


def test_unrelated_environment_is_ignored() -> None:
    s = load(environ={"SHOAL_URL": "http://x", "SHOAL_TOKEN": "t", "PORT": "1"})
    assert s.port == 8080


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("true", True), ("YES", True), (" on ", True),
     ("0", False), ("false", False), ("No", False), ("off", False)],
)
def test_bool_from_environment(raw: str, expected: bool) -> None:
    assert load(environ={"SHOAL_METRICS": raw}).metrics is expected


@pytest.mark.parametrize(
    "env",
    [
        {"SHOAL_PORT": "eighty"},
        {"SHOAL_PORT": "80.5"},
        {"SHOAL_IDLE_TIMEOUT": "soon"},
        {"SHOAL_METRICS": "maybe"},
        {"SHOAL_SYNCHRONOUS": "off"},
    ],
)
def test_type_errors_from_environment(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError) as info:
        load(environ=env)
    assert next(iter(env))[len("SHOAL_"):].lower() in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        'port = "eighty"',
        "port = true",  # a bool is not an int
        "port = 80.5",
        'metrics = "maybe"',
        "metrics = 1",
        "idle_timeout = [1]",
        "admin_token = 123",
        'synchronous = "extra"',
    ],
)
def test_type_errors_from_toml(tmp_path: Path, text: str) -> None:
    with pytest.raises(SettingsError):
        load(write(tmp_path, text + "\n"), environ={})


def test_toml_strings_are_coerced_like_environment_values(tmp_path: Path) -> None:
    s = load(write(tmp_path, 'port = "9001"\nmetrics = "off"\n'), environ={})
    assert (s.port, s.metrics) == (9001, False)


def test_unknown_key_in_toml(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load(write(tmp_path, "idle_timeot = 5\n"), environ={})
    assert "idle_timeot" in str(info.value)


def test_unknown_override_is_a_settings_error() -> None:
    with pytest.raises(SettingsError):
        load(overrides={"no_such_setting": 1}, environ={})


def test_type_error_in_override() -> None:
    with pytest.raises(SettingsError) as info:
        load(overrides={"port": "x"}, environ={})
    assert "--port" in str(info.value)


def test_unreadable_or_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError):
        load(str(tmp_path / "missing.toml"), environ={})
    with pytest.raises(SettingsError):
        load(write(tmp_path, "port = = 1\n"), environ={})


def test_attribute_access_and_public_view(tmp_path: Path) -> None:
    s = load(environ={"SHOAL_ADMIN_TOKEN": "hunter2", "SHOAL_DATA": str(tmp_path / "d")})
    assert s.admin_token == "hunter2"
    assert s.public()["admin_token"] == "***"
    assert "hunter2" not in repr(s.public())
    assert s.data_dir == (tmp_path / "d").resolve()
    assert load(environ={}).public()["admin_token"] is None
    with pytest.raises(AttributeError):
        _ = s.no_such_setting


def test_store_none_makes_a_local_only_node() -> None:
    assert load(environ={"SHOAL_STORE": "none"}).local_only
    assert load(environ={"SHOAL_STORE": "NONE"}).local_only
    assert not load(environ={}).local_only
    assert not load(environ={"SHOAL_STORE": "memory://"}).local_only


@pytest.mark.parametrize("env", [
    {"SHOAL_MAX_STREAMS_PER_TOKEN": "-1"},
    {"SHOAL_MAX_CONNECTIONS": "-5"},
    {"SHOAL_HEADER_TIMEOUT": "0"},
    {"SHOAL_HELLO_TIMEOUT": "-1"},
])
def test_limits_must_make_sense(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError) as info:
        load(environ=env)
    assert next(iter(env))[len("SHOAL_"):].lower() in str(info.value)


def test_a_cap_of_zero_is_no_cap() -> None:
    assert load(environ={"SHOAL_MAX_CONNECTIONS_PER_CLIENT": "0"}).max_connections_per_client == 0


@pytest.mark.parametrize(("name", "value"), [
    ("max_sql_bytes", "100"), ("max_value_bytes", "1023"),
    ("soft_heap_limit", "-1"), ("hard_heap_limit", "-5"),
])
def test_sqlite_limits_are_checked(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        load(environ={f"SHOAL_{name.upper()}": value})
    assert name in str(info.value)
    assert load(environ={"SHOAL_HARD_HEAP_LIMIT": "0"}).hard_heap_limit == 0  # 0: no limit


@pytest.mark.parametrize(("env", "said"), [
    ({"SHOAL_WORKERS": "0"}, "workers must be at least 1"),
    ({"SHOAL_WORKERS": "257"}, "workers must be at most 256"),
    ({"SHOAL_WORKERS": "2", "SHOAL_ADVERTISE_URL": "http://10.0.0.1:8080"}, "advertise_url"),
    ({"SHOAL_WORKERS": "2", "SHOAL_STORE": "none"}, "object store"),
    ({"SHOAL_WORKERS": "2", "SHOAL_HTTP_SERVER": "granian"}, "uvicorn"),
])
def test_workers_are_bounded_and_refuse_what_they_cannot_honour(
        env: dict[str, str], said: str) -> None:
    with pytest.raises(SettingsError, match=said):
        load(environ=env)
    assert load(environ={"SHOAL_WORKERS": "256"}).workers == 256
    assert load(environ={}).workers == 1
    # one worker is a plain node: it may join a cluster
    assert load(environ={"SHOAL_ADVERTISE_URL": "http://10.0.0.1:8080"}).workers == 1
