"""What every XLA strategy shares: the precisions it accepts, its default plugins and a checkpoint after a sync."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from typing_extensions import override

from fabric_io import XLACheckpointIO
from fabric_precision import Precision, XLAPrecision
from fabric_strategies.base import Strategy
from fabric_strategies.checkpoint import StateFilter
from fabric_strategies.xla import runtime
from fabric_utils import PathLike

XLA_PRECISIONS: tuple[str, ...] = ("32-true", "16-true", "bf16-true")


def check_xla_precision(owner: str, precision: Precision | None) -> None:
    if precision is not None and not isinstance(precision, XLAPrecision):
        raise TypeError(
            f"{owner} needs an XLAPrecision plugin (its optimizer step goes through torch_xla), got {precision!r}."
            f" Pass XLAPrecision(...) or a precision name: {', '.join(XLA_PRECISIONS)}"
        )


class XLAParts(Strategy, ABC):
    """Mixed in before the strategy an XLA strategy extends: ``XLAPrecision`` only (its optimizer step goes through
    torch_xla), ``XLACheckpointIO`` and 32-true by default, and pending XLA work run before a checkpoint is saved."""

    supported_precisions: ClassVar[tuple[str, ...] | None] = XLA_PRECISIONS
    supported_device_types: ClassVar[tuple[str, ...] | None] = ("xla",)

    def _use_xla_defaults(self) -> None:
        """The checkpoint IO and precision used when nobody gives one."""
        self._fallback_checkpoint_io = XLACheckpointIO()
        self._fallback_precision = XLAPrecision("32-true")

    @property
    @abstractmethod
    def _xla_started(self) -> bool:
        """Whether this process has set up its XLA device (so pending XLA work may exist)."""

    @override
    def _check_precision_plugin(self, precision: Precision | None) -> None:
        check_xla_precision(type(self).__name__, precision)

    @override
    def default_precision(self, name: str) -> XLAPrecision:
        self._check_precision_supported(name)
        return XLAPrecision(name)  # type: ignore[arg-type]

    @override
    def save_checkpoint(
        self,
        path: PathLike,
        state: Mapping[str, Any],
        storage_options: Any | None = None,
        filter: StateFilter | None = None,
    ) -> None:
        """Execute pending work on every process (so no collective is left waiting), then save as rank 0."""
        if self._xla_started:
            runtime.sync()
        super().save_checkpoint(path, state, storage_options=storage_options, filter=filter)
