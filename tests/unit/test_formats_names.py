"""Names, pinned: every boundary of ``[a-z0-9][a-z0-9_-]{0,62}`` written out by hand, and
the exact refusal (the rule is not imported: a changed rule fails here)."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.errors import ShoalError
from shoal.names import check, is_valid


@pytest.mark.parametrize("name", [
    "a", "z", "0", "9",                     # every end of the first character's ranges
    "a" * 63, "9" + "_" * 62,              # the longest
    "a_", "a-", "az09_-", "0a", "q-_-_", "abcdefghijklmnopqrstuvwxyz0123456789",
])
def test_valid(name: str) -> None:
    assert is_valid(name) is True
    assert check(name) == name
    assert check(name, "branch") == name


@pytest.mark.parametrize("name", [
    "",
    "a" * 64, "9" + "_" * 63,               # one past the longest
    "_a", "-a",                             # allowed later, not first
    "A", "Z", "aZ", "aA", "Orders",         # upper case, first or later
    "`", "{", "/", ":", "a`", "a{", "a/", "a:",  # just outside a-z and 0-9
    "a.", "a,", "a ", "a\n", "a\x00", "a+", "a=", "a^", "a~", "a\\", "a'",
    ".", "..", "main\n",
])
def test_invalid(name: str) -> None:
    assert is_valid(name) is False
    with pytest.raises(ShoalError) as err:
        check(name)
    assert err.value.code == "INVALID_NAME" and err.value.status == 400


@pytest.mark.parametrize(("value", "kind", "message"), [
    ("Bad", "database", "invalid database name 'Bad'"),
    ("Bad", "branch", "invalid branch name 'Bad'"),
    ("B" * 80, "database", "invalid database name '" + "B" * 80 + "'"),  # shown up to 80
    ("B" * 81, "database", "invalid database name '<invalid>'"),
    (5, "branch", "invalid branch name '<invalid>'"),
    (None, "database", "invalid database name '<invalid>'"),
    ("a\n", "database", "invalid database name 'a\\n'"),  # repr: no raw control characters
])
def test_the_refusal_message(value: Any, kind: str, message: str) -> None:
    with pytest.raises(ShoalError) as err:
        check(value, kind)
    assert err.value.message == message


def test_the_default_kind_is_database() -> None:
    with pytest.raises(ShoalError) as err:
        check("-")
    assert err.value.message == "invalid database name '-'"


@pytest.mark.parametrize("value", [None, 1, 1.5, b"orders", ["orders"], ("orders",), object()])
def test_non_strings(value: Any) -> None:
    assert is_valid(value) is False
