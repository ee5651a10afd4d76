"""Slurm's compact host lists (``node[01-03,7],gpu5``) and task counts (``2(x3),1``), expanded."""

from __future__ import annotations

import itertools
import re

_TASK_COUNT = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")


def expand_hostlist(hostlist: str) -> list[str]:
    """Every host named by a Slurm host list, in order.

    ``"node[01-03,7],gpu5"`` gives ``["node01", "node02", "node03", "node7", "gpu5"]``: a range keeps the width of
    its lower bound (``01-03`` pads to two digits), several bracket groups in one name combine
    (``r[1-2]n[1-2]`` gives four hosts) and hosts may be separated by commas or whitespace.
    Raises ``ValueError`` naming the host list when it is malformed.
    """
    hosts: list[str] = []
    for token in _split_top_level(hostlist):
        hosts.extend(_expand_token(token, hostlist))
    return hosts


def _split_top_level(hostlist: str) -> list[str]:
    """Split at commas and whitespace that are outside brackets."""
    tokens: list[str] = []
    current: list[str] = []
    depth = 0
    for char in hostlist:
        if char == "[":
            depth += 1
            if depth > 1:
                raise ValueError(f"Malformed host list {hostlist!r}: nested brackets are not allowed.")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"Malformed host list {hostlist!r}: ']' without a matching '['.")
        if depth == 0 and (char == "," or char.isspace()):
            if current:
                tokens.append("".join(current))
            current = []
            continue
        current.append(char)
    if depth != 0:
        raise ValueError(f"Malformed host list {hostlist!r}: '[' without a matching ']'.")
    if current:
        tokens.append("".join(current))
    return tokens


def _expand_token(token: str, hostlist: str) -> list[str]:
    """One host pattern such as ``rack[1-2]-node[01-03,7]``: the product of its bracket groups."""
    if "[]" in token:
        raise ValueError(f"Malformed host list {hostlist!r}: empty brackets in {token!r}.")
    parts: list[list[str]] = []
    for literal, group in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", token):
        if literal:
            parts.append([literal])
        if group:
            parts.append(_expand_group(group, hostlist))
    return ["".join(combination) for combination in itertools.product(*parts)]


def _expand_group(group: str, hostlist: str) -> list[str]:
    """The inside of one bracket group: ``01-03,7`` gives ``01 02 03 7``."""
    values: list[str] = []
    for item in group.split(","):
        low, sep, high = item.strip().partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise ValueError(f"Malformed host list {hostlist!r}: {item!r} is neither a number nor a range a-b.")
        if not sep:
            values.append(low)
            continue
        if int(high) < int(low):
            raise ValueError(f"Malformed host list {hostlist!r}: the range {item!r} runs backwards.")
        width = len(low)
        values.extend(str(number).zfill(width) for number in range(int(low), int(high) + 1))
    return values


def expand_task_counts(counts: str) -> list[int]:
    """Slurm's per-node task counts: ``"2(x3),1"`` gives ``[2, 2, 2, 1]``; raises ``ValueError`` when malformed."""
    expanded: list[int] = []
    for item in counts.split(","):
        match = _TASK_COUNT.match(item.strip())
        if match is None:
            raise ValueError(f"Malformed task count {counts!r}: expected items such as '4' or '4(x2)'.")
        count, repeat = int(match.group(1)), int(match.group(2) or 1)
        expanded.extend([count] * repeat)
    return expanded
