"""Database and branch names: one rule, [a-z0-9][a-z0-9_-]{0,62}, checked before any path."""

from __future__ import annotations

import string
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.errors import ShoalError
from shoal.names import NAME_RE, check, is_valid

FIRST = string.ascii_lowercase + string.digits
REST = FIRST + "_-"


def follows_rule(name: str) -> bool:
    """The rule written out by hand, independent of the regular expression."""
    return 1 <= len(name) <= 63 and name[0] in FIRST and all(c in REST for c in name[1:])


valid_names = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(FIRST),
    st.text(alphabet=REST, max_size=62),
)


@given(name=valid_names)
def test_every_name_following_the_rule_is_accepted(name: str) -> None:
    assert is_valid(name)
    assert check(name) == name


@given(name=st.from_regex(NAME_RE, fullmatch=True))
def test_every_string_matching_the_pattern_is_accepted(name: str) -> None:
    assert follows_rule(name)
    assert check(name) == name


@given(name=st.text(max_size=80))
def test_acceptance_is_exactly_the_rule(name: str) -> None:
    assert is_valid(name) == follows_rule(name)


@given(name=st.text(alphabet=REST + "./\\:\x00 AZ\n", max_size=70))
def test_acceptance_is_exactly_the_rule_near_the_alphabet(name: str) -> None:
    assert is_valid(name) == follows_rule(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "../x",
        "..\\x",
        "a/b",
        "/abs",
        "a\\b",
        "x/../../etc",
        "Orders",
        "ORDERS",
        "a" * 64,
        "_leading",
        "-leading",
        "with space",
        "tab\t",
        "trailing\n",
        "nul\x00",
        "\x00",
        "a.db",
        "\uff4frders",  # fullwidth o
        "\u043erders",  # Cyrillic o
        "order\u017f",  # long s (upper-cases to S)
        "\u0131",  # dotless i
        "k\u212a",  # Kelvin sign
        "١٢٣",  # Arabic-Indic digits
        "é",
        "a\u200bb",  # zero-width space
    ],
)
def test_invalid_names_are_refused(name: str) -> None:
    assert not is_valid(name)
    with pytest.raises(ShoalError) as info:
        check(name)
    assert info.value.code == "INVALID_NAME"
    assert info.value.status == 400


@pytest.mark.parametrize("name", ["a", "0", "a" * 63, "orders", "my-db_2", "9-9", "a-", "b_"])
def test_valid_names(name: str) -> None:
    assert check(name, "branch") == name


@pytest.mark.parametrize("value", [None, 1, b"orders", ["orders"], {"name": "orders"}])
def test_non_strings_are_refused(value: Any) -> None:
    assert not is_valid(value)
    with pytest.raises(ShoalError) as info:
        check(value)
    assert info.value.code == "INVALID_NAME"


def test_message_names_the_kind_and_hides_long_input() -> None:
    with pytest.raises(ShoalError) as info:
        check("Bad", "branch")
    assert "branch" in info.value.message
    assert "'Bad'" in info.value.message
    with pytest.raises(ShoalError) as info:
        check("x" * 500)
    assert "x" * 81 not in info.value.message
    assert "<invalid>" in info.value.message
