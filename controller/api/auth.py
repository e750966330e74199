"""Bearer tokens with roles: ``viewer`` reads, ``operator`` starts and stops
rollouts, ``admin`` may do everything. Tokens come from the settings only."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import IntEnum

from controller.input_text import person_name_problem


class Role(IntEnum):
    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role


@dataclass(frozen=True)
class _Token:
    secret: str
    principal: Principal


def parse_tokens(text: str) -> list[_Token]:
    """Parse ``name:role:token,...``; errors never repeat a token. A name is who
    acts, recorded and matched with plans' owners exactly, so it must be a name an
    owner can have (``person_name_problem``)."""
    tokens = []
    for index, item in enumerate(part.strip() for part in text.split(",")):
        if not item:
            continue
        pieces = item.split(":", 2)
        if len(pieces) != 3 or not all(pieces):
            raise ValueError(f"entry {index + 1} is not name:role:token")
        name, role, secret = pieces
        problem = person_name_problem(name)
        if problem is not None:
            raise ValueError(f"entry {index + 1}: name {name!r} cannot be used: {problem}")
        if role.upper() not in Role.__members__:
            raise ValueError(
                f"entry {index + 1} ({name}): role {role!r} is not viewer, operator or admin"
            )
        if len(secret) < 16:
            raise ValueError(f"entry {index + 1} ({name}): token shorter than 16 characters")
        tokens.append(_Token(secret, Principal(name, Role[role.upper()])))
    return tokens


class TokenBook:
    """Looks a presented bearer token up in constant time per known token."""

    def __init__(self, tokens: list[_Token]):
        self._tokens = tokens

    @classmethod
    def from_setting(cls, text: str | None) -> TokenBook:
        return cls(parse_tokens(text) if text else [])

    def identify(self, presented: str | None) -> Principal | None:
        if not presented:
            return None
        found = None
        for token in self._tokens:
            if hmac.compare_digest(token.secret.encode(), presented.encode()):
                found = token.principal
        return found


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None
