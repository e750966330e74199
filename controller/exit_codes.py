"""The CLI's exit codes: one table, so scripts and CI jobs can branch on what
happened without parsing messages."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    REFUSED = 1  # the rollout's state refused it (a 409), or a plan check failed
    BAD_INPUT = 2  # a plan, an option or a setting is wrong; nothing was done
    NOT_FOUND = 3  # no such rollout, plan or incident
    UNAVAILABLE = 4  # the database, the API or a server it needs cannot be reached
    NOT_ALLOWED = 5  # the API token is missing, unknown or its role too small


MEANING = {
    ExitCode.OK: "done (start --wait: the rollout succeeded)",
    ExitCode.REFUSED: "refused by the rollout's state (start --wait: rolled back or "
    "aborted; plan validate --check-against: a query failed)",
    ExitCode.BAD_INPUT: "bad input (plan, option, setting); nothing was done",
    ExitCode.NOT_FOUND: "no such rollout, plan or incident",
    ExitCode.UNAVAILABLE: "the database, the API or a server it needs is unavailable",
    ExitCode.NOT_ALLOWED: "the API token is missing, unknown, or its role is too small",
}


def for_http_status(status: int) -> ExitCode:
    """The exit code of a command the API refused with ``status``."""
    if status == 404:
        return ExitCode.NOT_FOUND
    if status == 409:
        return ExitCode.REFUSED
    if status in (401, 403):
        return ExitCode.NOT_ALLOWED
    if status >= 500:
        return ExitCode.UNAVAILABLE
    return ExitCode.BAD_INPUT


def table() -> str:
    """The table for ``--help`` and the README."""
    return "\n".join(f"{int(code)}  {MEANING[code]}" for code in ExitCode)
