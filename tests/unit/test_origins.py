"""Allowed origins (shoal/origins.py): how they are written, normalised and matched, and the
cors_origins setting read from the environment, a TOML file and the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal import origins
from shoal.origins import Origins, normalize, parse, same_origin
from shoal.settings import Settings, SettingsError, load


@pytest.mark.parametrize(("written", "matched"), [
    ("https://app.example.com", "https://app.example.com"),
    ("  HTTPS://App.Example.COM/ ", "https://app.example.com"),
    ("https://app.example.com:443", "https://app.example.com"),
    ("http://app.example.com:80", "http://app.example.com"),
    ("http://app.example.com:443", "http://app.example.com:443"),
    ("http://localhost:5173", "http://localhost:5173"),
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
    ("http://[::1]:3000", "http://[::1]:3000"),
    ("capacitor://localhost", "capacitor://localhost"),
    ("tauri://localhost", "tauri://localhost"),
    ("https://xn--bcher-kva.example", "https://xn--bcher-kva.example"),
    ("https://*.example.com", "https://*.example.com"),
    ("https://*.example.com:8443", "https://*.example.com:8443"),
    ("*", "*"),
])
def test_origins_are_normalised_as_browsers_write_them(written: str, matched: str) -> None:
    assert normalize(written) == matched


@pytest.mark.parametrize("written", [
    "null", "NULL", "app.example.com", "https://", "https://app.example.com/path",
    "https://app.example.com/?q", "https://app.example.com#x", "https://user@app.example.com",
    "https://app.example.com:0", "https://app.example.com:70000", "https://*.com",
    "https://*.1.2.3.4", "https://*.[::1]", "https://a.*.example.com", "https://*example.com",
    "*.example.com", "https://**.example.com", "https://app.example.com//", "https://a b.com",
    "x" * 400,
])
def test_what_is_not_an_origin_is_refused(written: str) -> None:
    with pytest.raises(ValueError):
        normalize(written)


def test_null_is_refused_with_its_reason() -> None:
    with pytest.raises(ValueError, match="sandboxed iframes"):
        normalize("null")


def test_lists_split_on_commas_and_spaces_without_duplicates() -> None:
    assert parse("") == ()
    assert parse("https://a.example, https://b.example  https://A.example/,") == (
        "https://a.example", "https://b.example")
    assert parse(["https://a.example", " ", "https://a.example:443"]) == ("https://a.example",)
    with pytest.raises(ValueError, match="at most 2"):
        parse(["https://a.example", "https://b.example", "https://c.example"], limit=2)
    with pytest.raises(ValueError, match="a string"):
        parse([1])  # type: ignore[list-item]


def test_matching() -> None:
    allowed = Origins(["https://app.example.com", "https://*.preview.example.com",
                       "http://localhost:5173", "https://*.example.org:8443"])
    for origin in ("https://app.example.com", "https://APP.example.com",
                   "https://pr-1.preview.example.com", "https://a.b.preview.example.com",
                   "http://localhost:5173", "https://x.example.org:8443"):
        assert allowed.allows(origin), origin
    for origin in ("https://app.example.com:8443", "http://app.example.com",
                   "https://preview.example.com", "https://evilpreview.example.com",
                   "https://x.preview.example.com.evil.example",
                   "https://x.preview.example.com:444", "http://x.preview.example.com",
                   "https://evil.example/.preview.example.com", "http://localhost:5174",
                   "https://x.example.org", "null", "", "https://x_y.preview.example.com.",
                   "https://a..preview.example.com"):
        assert not allowed.allows(origin), origin
    assert Origins(["*"]).allows("https://anything.example")
    assert Origins(["*"]).allows("null")  # '*' is any origin: a sandboxed page's too
    assert not Origins().allows("https://app.example.com")
    assert not Origins() and Origins(["*"])


def test_same_origin() -> None:
    assert same_origin("http://localhost:8080", "localhost:8080")
    assert same_origin("https://DB.example.com", "db.example.com")
    assert not same_origin("https://db.example.com", "db.example.com:8443")
    assert not same_origin("https://evil.example", "db.example.com")
    assert not same_origin("null", "null")
    assert not same_origin("https://db.example.com", None)


# -- the setting -------------------------------------------------------------------------------
def test_the_setting_from_environment_toml_and_flags(tmp_path: Path) -> None:
    assert load(environ={}).cors_origins == ""
    env = {"SHOAL_CORS_ORIGINS": "https://a.example,https://*.b.example"}
    assert parse(load(environ=env).cors_origins) == ("https://a.example", "https://*.b.example")
    toml = tmp_path / "shoal.toml"
    toml.write_text('cors_origins = ["https://a.example", "http://localhost:5173"]\n')
    assert parse(load(str(toml), environ={}).cors_origins) == (
        "https://a.example", "http://localhost:5173")
    toml.write_text('cors_origins = "https://a.example"\n')
    assert load(str(toml), environ={}).cors_origins == "https://a.example"
    flags = load(overrides={"cors_origins": "*"}, environ={})
    assert flags.cors_origins == "*"
    assert load(environ={"SHOAL_CORS_MAX_AGE": "0"}).cors_max_age == 0


@pytest.mark.parametrize("value", ["null", "https://a.example/app", "https://*.com", "a.example",
                                   "https://a.example, ftp:/x"])
def test_a_bad_setting_stops_the_start(value: str) -> None:
    with pytest.raises(SettingsError, match="cors_origins"):
        Settings(cors_origins=value)
    with pytest.raises(SettingsError, match="cors_origins"):
        load(environ={"SHOAL_CORS_ORIGINS": value})


def test_bad_toml_values_and_max_age_are_refused(tmp_path: Path) -> None:
    toml = tmp_path / "shoal.toml"
    toml.write_text("cors_origins = [1, 2]\n")
    with pytest.raises(SettingsError, match="cors_origins must be str"):
        load(str(toml), environ={})
    toml.write_text("workers = [\"2\"]\n")  # only a list setting takes an array
    with pytest.raises(SettingsError, match="workers must be int"):
        load(str(toml), environ={})
    for age in (-1, 86401):
        with pytest.raises(SettingsError, match="cors_max_age"):
            Settings(cors_max_age=age)


def test_a_database_list_is_capped() -> None:
    assert origins.MAX_ORIGINS == 100
