"""The contract every traffic router implements.

The rollout engine only ever speaks in "percent of traffic to the canary" so
that HAProxy, a service mesh or a cloud load balancer can be swapped without
touching rollout logic.
"""

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

Role = Literal["stable", "canary"]


@dataclass(frozen=True)
class Serving:
    """Whether a side would take traffic sent to it now, as the router sees it."""

    problem: str | None  # why not (down, starting, maintenance, draining); None: it would
    unchanged_for: float | None = None  # seconds since the router last changed its state


class RouterError(Exception):
    """The router could not be reached, refused a command, or is in a state we cannot read."""


@runtime_checkable
class TrafficRouter(Protocol):
    """Moves real traffic between the stable and the canary version.

    Every call is absolute and idempotent: ``set_canary_weight(25)`` means
    "25% to the canary" no matter what was set before, so a retried or
    duplicated task can never compound a shift. A step counts as done only
    when ``get_canary_weight()`` reads back from the router what was set;
    callers must not trust their own memory of the weight, because a crash,
    a restart or an operator may have changed it since.
    """

    def set_canary_weight(self, weight: int) -> None:
        """Send ``weight`` percent (0..100) of traffic to the canary.

        Raises:
            ValueError: ``weight`` is not an integer in 0..100.
            RouterError: the router could not apply it.
        """
        ...

    def get_canary_weight(self) -> int:
        """Read the canary's current share of traffic (0..100) from the router itself.

        Raises:
            RouterError: the router could not be read or routes nowhere.
        """
        ...

    def serving(self, role: Role) -> Serving:
        """Whether the ``stable`` or ``canary`` side would take traffic sent to it right
        now (its health check passes, it is not in maintenance or draining), and for
        how long the router has held it in that state.

        A weight is only a share among the servers the router considers able to
        serve: moving traffic onto a side that is down sends users nowhere, so the
        engine asks this before every move onto a side, never before a rollback.

        Raises:
            RouterError: the router could not be read.
        """
        ...


def serving_or_problem(router: TrafficRouter, role: str) -> Serving:
    """``router.serving(role)``, with a router that cannot answer as the problem: a
    side the router cannot vouch for is not taken as ready."""
    try:
        return router.serving(role)
    except RouterError as exc:
        return Serving(str(exc))
