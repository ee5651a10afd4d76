"""Parsing of the ``devices`` request, shared by every accelerator.

A request is ``"auto"``, an int (a count, ``-1`` meaning all), a list/tuple of device indices, or a string holding
one of those (``"2"``, ``"-1"``, ``"0,1"``, ``"1,"``). Every error names the value the user gave and what exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Union

import torch

DevicesFlag = Union[int, str, Sequence[int]]
"""What a user may pass as ``devices``."""

NormalizedDevices = Union[int, list[int], Literal["auto"]]
"""A request after type checks and string parsing: ``"auto"``, an int, or a list of ints."""

VALID_FORMS = (
    '"auto", a positive int, -1 (all devices), a list of indices such as [0, 1], or a string such as "2", "-1" or "0,1"'
)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_devices_type(devices: object) -> None:
    """Raise ``TypeError`` unless ``devices`` is an int, a str, or a list/tuple of ints."""
    if not (_is_int(devices) or isinstance(devices, (str, list, tuple))):
        raise TypeError(f"`devices` must be {VALID_FORMS}; got {devices!r} of type {type(devices).__name__}.")
    if isinstance(devices, (list, tuple)):
        wrong = [index for index in devices if not _is_int(index)]
        if wrong:
            raise TypeError(
                f"Device indices must be ints; `devices={devices!r}` holds {wrong[0]!r} "
                f"of type {type(wrong[0]).__name__}."
            )


def parse_devices_string(text: str) -> NormalizedDevices:
    """Turn ``"auto"``, ``"2"``, ``"-1"``, ``"0,1"`` or ``"1,"`` into ``"auto"``, an int or a list of indices.

    A comma makes the string a list of indices (so ``"1,"`` is device 1, while ``"1"`` is one device).
    """
    stripped = text.strip()
    if stripped.lower() == "auto":
        return "auto"
    try:
        if "," in stripped:
            parts = [part.strip() for part in stripped.split(",") if part.strip()]
            if parts:
                return [int(part) for part in parts]
        else:
            return int(stripped)
    except ValueError:
        pass
    raise ValueError(f"Could not parse `devices={text!r}`. Use {VALID_FORMS}.")


def normalize_devices(devices: object) -> NormalizedDevices:
    """Check the type of a request and parse strings; tuples become lists. Values are checked by the callers."""
    check_devices_type(devices)
    if isinstance(devices, str):
        return parse_devices_string(devices)
    if isinstance(devices, (list, tuple)):
        return list(devices)
    assert isinstance(devices, int)
    return devices


def describe_available(kind: str, available: int) -> str:
    """``"this machine has 2 CUDA devices (indices 0, 1)"`` and the like, for error messages."""
    if available <= 0:
        return f"this machine has no {kind} devices"
    if available == 1:
        return f"this machine has 1 {kind} device (index 0)"
    indices = ", ".join(str(index) for index in range(available))
    return f"this machine has {available} {kind} devices (indices {indices})"


def parse_process_count(devices: object, *, kind: str = "CPU") -> int:
    """A request for ``kind`` devices that have no indices (CPU): the number of processes to run, at least 1.

    ``"auto"`` means 1. Lists of indices and ``-1`` ("all") have no meaning here.
    """
    normalized = normalize_devices(devices)
    if normalized == "auto":
        return 1
    if isinstance(normalized, list):
        raise TypeError(
            f"`devices={devices!r}`: {kind} devices have no indices; pass the number of processes instead, "
            "e.g. devices=2."
        )
    assert isinstance(normalized, int)
    if normalized == -1:
        raise ValueError(
            f"`devices={devices!r}` (all devices) has no meaning for {kind}; pass the number of processes, "
            'e.g. devices=2, or "auto" for one.'
        )
    if normalized <= 0:
        raise ValueError(
            f"`devices={devices!r}` is not a valid number of {kind} processes; pass a positive int "
            '(e.g. devices=2) or "auto".'
        )
    return normalized


def parse_device_indices(devices: object, *, available: int, kind: str) -> list[int]:
    """A request for indexed devices (CUDA, MPS): the list of device indices it selects.

    ``"auto"`` and ``-1`` select every device; an int ``n`` selects the first ``n``; a list selects those indices.
    Zero, other negative values, empty lists, duplicates and indices or counts beyond ``available`` are errors.
    """
    normalized = normalize_devices(devices)
    if normalized == "auto" or normalized == -1:
        if available <= 0:
            raise ValueError(f"`devices={devices!r}` asks for all {kind} devices, but {describe_available(kind, 0)}.")
        return list(range(available))
    if isinstance(normalized, list):
        return _check_indices(normalized, devices, available=available, kind=kind)
    assert isinstance(normalized, int)
    exists = describe_available(kind, available)
    if normalized == 0:
        raise ValueError(
            f"`devices={devices!r}` asks for no {kind} devices; ask for at least one (e.g. devices=1). "
            f'To pick the device with index 0, pass devices=[0] or "0,"; {exists}.'
        )
    if normalized < 0:
        raise ValueError(
            f"`devices={devices!r}` is negative; the only negative value allowed is -1 (all devices); {exists}."
        )
    if normalized > available:
        raise ValueError(f"`devices={devices!r}` asks for {normalized} {kind} devices, but {exists}.")
    return list(range(normalized))


def _check_indices(indices: list[int], original: object, *, available: int, kind: str) -> list[int]:
    exists = describe_available(kind, available)
    if not indices:
        raise ValueError(f"`devices={original!r}` selects no {kind} devices; give at least one index; {exists}.")
    negative = [index for index in indices if index < 0]
    if negative:
        raise ValueError(
            f"`devices={original!r}` holds negative device indices {negative}; indices start at 0; {exists}."
        )
    duplicates = sorted({index for index in indices if indices.count(index) > 1})
    if duplicates:
        raise ValueError(
            f"`devices={original!r}` repeats the device indices {duplicates}; each index may appear once; {exists}."
        )
    missing = [index for index in indices if index >= available]
    if missing:
        raise ValueError(f"`devices={original!r}` selects {kind} device indices {missing} that do not exist: {exists}.")
    return indices


def check_device_type(device: torch.device, expected: str, accelerator: str) -> None:
    """Raise ``ValueError`` unless ``device`` is of type ``expected`` (a CPU accelerator cannot set up ``cuda:0``)."""
    if not isinstance(device, torch.device):
        raise TypeError(f"{accelerator} expects a torch.device, got {device!r} of type {type(device).__name__}.")
    if device.type != expected:
        raise ValueError(f"{accelerator} sets up {expected!r} devices, got {device}.")
