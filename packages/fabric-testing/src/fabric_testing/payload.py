"""A stand-in for the code a hostile checkpoint would run, for tests of loaders that must never unpickle it."""

from __future__ import annotations

import os
from typing import Any


class PicklePayload:
    """An object whose unpickling creates the file ``marker`` (``open(marker, "w")``), as a crafted pickle could run
    any command. Save it in a checkpoint; a restricted load must refuse it and leave ``marker`` absent, and a load
    with ``weights_only=False`` creates ``marker`` (proof that the payload is real)."""

    def __init__(self, marker: str | os.PathLike[str]) -> None:
        self.marker = os.fspath(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))
