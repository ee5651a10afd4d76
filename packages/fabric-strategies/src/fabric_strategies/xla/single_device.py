"""``SingleDeviceXLAStrategy``: one process on one XLA device."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from typing_extensions import override

from fabric_strategies.base import Strategy
from fabric_strategies.inherited_parameters import takes_parameters_of
from fabric_strategies.single_device import SingleDeviceStrategy
from fabric_strategies.xla import runtime
from fabric_strategies.xla.parts import XLAParts


def _as_xla_device(device: torch.device | str | int | None) -> torch.device | None:
    if device is None:
        return None
    if isinstance(device, bool) or not isinstance(device, (torch.device, str, int)):
        raise TypeError(f"device must be an XLA torch.device, a string such as 'xla:0' or an index, got {device!r}")
    resolved = torch.device("xla", device) if isinstance(device, int) else torch.device(device)
    if resolved.type != "xla":
        raise ValueError(f"SingleDeviceXLAStrategy runs on an 'xla' device, got {resolved}. Use e.g. 'xla:0' or 0.")
    return resolved


class SingleDeviceXLAStrategy(XLAParts, SingleDeviceStrategy):
    """One process on one XLA device (the first unless a device or index is given).

    The device is resolved through torch_xla when the environment is set up; the optimizer step goes through
    ``XLAPrecision`` (``xm.optimizer_step``), and checkpoints are written by ``XLACheckpointIO`` after the pending
    graph has run.
    """

    name: ClassVar[str] = "single_xla"

    @takes_parameters_of(Strategy, after=1)
    def __init__(self, inherited: dict[str, Any], /, device: torch.device | str | int | None = None) -> None:
        runtime.require_xla(type(self).__name__)
        requested = _as_xla_device(device)
        super().__init__(requested, **inherited)
        self._resolved_device: torch.device | None = None
        self._use_xla_defaults()

    @property
    @override
    def root_device(self) -> torch.device:
        """The device torch_xla gave this process once set up; before, the requested device (an identifier)."""
        if self._resolved_device is not None:
            return self._resolved_device
        return self._device if self._device is not None else torch.device("xla", 0)

    @property
    @override
    def _xla_started(self) -> bool:
        return self._resolved_device is not None

    @override
    def setup_environment(self) -> None:
        self._resolved_device = runtime.xla_device(self.root_device.index)
        super().setup_environment()

    @override
    def teardown(self) -> None:
        super().teardown()
        self._resolved_device = None
