"""Numbers as plans write them, taken strictly.

Pydantic's default (lax) mode turns ``weight: true`` into 1 % and ``"5"`` into 5; in
a rollout plan either is a typo that must be refused, not guessed. ``Number`` also
refuses ``.inf`` and ``.nan``, which no limit or factor can mean.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AllowInfNan, Strict

Count = Annotated[int, Strict()]
Number = Annotated[float, Strict(), AllowInfNan(False)]
