"""Small helpers shared by the environments: reading integers from the environment, ports, rank and size checks."""

from __future__ import annotations

import logging
import os
import socket
import warnings
from collections.abc import Iterable

from fabric_utils import FabricWarning

log = logging.getLogger(__name__)

MAX_PORT = 65535


def env_int(name: str, default: int | None = None, *, owner: str = "This environment") -> int:
    """The integer in the environment variable ``name``.

    Falls back to ``default`` when the variable is unset; raises ``ValueError`` naming the variable when it is unset
    without a default, or when it holds something that is not an integer.
    """
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        if default is None:
            raise unset_variable_error(name, owner=owner)
        return default
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError(f"The environment variable {name}={raw!r} must be an integer.") from None


def unset_variable_error(name: str, *, owner: str) -> ValueError:
    """The error for a required environment variable that is not set (or blank)."""
    return ValueError(f"{owner} needs the environment variable {name}, which is not set.")


def first_set(names: tuple[str, ...]) -> str | None:
    """The first of the environment variables ``names`` that is set (and not blank), or ``None``."""
    return next((name for name in names if os.environ.get(name, "").strip()), None)


def first_env_int(names: tuple[str, ...], default: int) -> int:
    """The integer in the first of ``names`` that is set, or ``default`` when none is."""
    name = first_set(names)
    return default if name is None else env_int(name)


def env_port(name: str = "MASTER_PORT") -> int | None:
    """The port in the environment variable ``name``, validated, or ``None`` when it is unset."""
    if not os.environ.get(name, "").strip():
        return None
    return check_port(env_int(name), source=name)


def check_port(port: int, *, source: str) -> int:
    if not 1 <= port <= MAX_PORT:
        raise ValueError(f"{source}={port} is not a valid port: choose one between 1 and {MAX_PORT}.")
    return port


def find_free_port() -> int:
    """A TCP port that is free on every interface of this machine right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def check_world_size(owner: str, world_size: int, num_devices: int, num_nodes: int, hint: str = "") -> None:
    """Raise when ``devices * num_nodes`` disagrees with the number of processes the launcher started."""
    if num_devices * num_nodes != world_size:
        message = (
            f"You set devices={num_devices} and num_nodes={num_nodes}, so fabric expects"
            f" {num_devices} * {num_nodes} = {num_devices * num_nodes} processes, but the {owner} started"
            f" {world_size}."
        )
        raise ValueError(f"{message} {hint}".strip())


#: one rank bound: (the rank's name, its value, the size's name, its value or None where no size is known)
RankBound = tuple[str, int, str, int | None]


def check_ranks(owner: str, bounds: Iterable[RankBound]) -> None:
    """Raise one ``ValueError`` naming every inconsistent value: each rank must be ``0 <= rank < size``, each size
    at least 1. Called before any rendezvous: a rank outside the world would otherwise wait there for ever."""
    problems: list[str] = []
    for rank_name, rank, size_name, size in bounds:
        if size is not None and size < 1:
            problems.append(f"{size_name}={size} must be at least 1")
        elif rank < 0 or (size is not None and rank >= size):
            upper = f" < {size_name}={size}" if size is not None else ""
            problems.append(f"{rank_name}={rank} must satisfy 0 <= {rank_name}{upper}")
    if problems:
        raise ValueError(
            f"{owner} reads inconsistent ranks from the environment: {'; '.join(problems)}. Fix the launcher's"
            " environment variables (or unset them to let fabric start the processes itself)."
        )


def ignore_setter(owner: str, what: str, requested: int, actual: int) -> None:
    """Environments whose launcher fixes ranks and sizes ignore the setters; a different value earns a warning."""
    if requested != actual:
        warnings.warn(
            f"{owner}.set_{what}({requested}) was ignored:"
            f" the launcher fixed the {what.replace('_', ' ')} to {actual}.",
            FabricWarning,
            stacklevel=3,
        )
    else:
        log.debug("%s.set_%s(%d) matches the launcher's value", owner, what, requested)
