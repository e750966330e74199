"""API tokens: parsing from the settings, and lookups that never leak a token."""

from __future__ import annotations

import pytest

from controller.api.auth import Role, TokenBook, bearer, parse_tokens

GOOD = "alice:operator:0123456789abcdef0,ci:viewer:fedcba98765432100,root:admin:aaaaaaaaaaaaaaaaaa"


def test_tokens_map_to_names_and_roles() -> None:
    book = TokenBook.from_setting(GOOD)
    assert book.identify("0123456789abcdef0").name == "alice"
    assert book.identify("fedcba98765432100").role == Role.VIEWER
    assert book.identify("aaaaaaaaaaaaaaaaaa").role == Role.ADMIN
    assert book.identify("nope") is None and book.identify(None) is None
    assert Role.VIEWER < Role.OPERATOR < Role.ADMIN


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice:operator", "entry 1 is not name:role:token"),
        ("alice:root:0123456789abcdef0", "role 'root'"),
        ("alice:viewer:short", "shorter than 16"),
        # A name an approval is recorded under must be one a plan's owner can have.
        ("alice :operator:0123456789abcdef0", "name 'alice ' cannot be used: it starts or ends"),
        ("al\u200bice:operator:0123456789abcdef0", "it holds the control or invisible character"),
    ],
)
def test_bad_token_settings_are_explained_without_the_token(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_tokens(text)
    assert "0123456789abcdef0" not in str(caught.value)


def test_bearer_header_parsing() -> None:
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None and bearer("Bearer ") is None and bearer(None) is None


def test_no_tokens_configured_means_nobody_gets_in() -> None:
    assert TokenBook.from_setting(None).identify("anything") is None
