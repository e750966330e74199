"""Errors raised by the local lab.

They are separate from the controller's own errors so that a broken test
environment (a binary missing, a server that never came up) reads as an
environment problem and never as a failed rollout.
"""


class LabError(Exception):
    """A lab server could not be started, became unhealthy, or was misused."""


class MissingBinaryError(LabError):
    """A server binary the lab needs is not installed.

    The message always carries the install command, because the person who
    sees it is usually setting up a fresh machine and needs the fix, not a
    stack trace.
    """
