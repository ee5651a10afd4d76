"""``STRATEGY_REGISTRY``: every strategy name, with its configuration and a one-line description."""

from __future__ import annotations

from fabric_strategies.base import Strategy
from fabric_strategies.catalog import register_listed
from fabric_utils import Registry, rank_zero_warn

#: third-party packages add strategies through the ``fabric.strategies`` entry-point group: the entry point loads
#: to a callable that receives this registry (e.g. ``MyStrategy.register_strategies``)
STRATEGY_REGISTRY: Registry[Strategy] = Registry("strategy", entry_point_group="fabric.strategies")
#: every built-in name of ``catalog.LISTED_STRATEGIES``; a class is imported when one of its names is first looked up
register_listed(STRATEGY_REGISTRY)


def resolve_strategy_name(name: str, device_type: str, registry: Registry[Strategy] | None = None) -> str:
    """The strategy name to use for ``name`` on devices of ``device_type`` ("cpu", "cuda", ...).

    A strategy that does not run on that device type is replaced by its ``fallback_strategy`` with a warning
    (``"dp"`` off CUDA becomes ``"ddp"``); without a fallback, ``ValueError`` names the device types it supports.
    Unknown names raise ``UnknownNameError`` listing every registered name.
    """
    registry = STRATEGY_REGISTRY if registry is None else registry
    factory = registry.get(name)
    supported = getattr(factory, "supported_device_types", None)
    if supported is None or device_type in supported:
        return name
    fallback = getattr(factory, "fallback_strategy", None)
    if fallback is None:
        raise ValueError(
            f"strategy={name!r} does not run on {device_type!r} devices. It needs one of: {', '.join(supported)}"
        )
    rank_zero_warn(f"strategy={name!r} does not run on {device_type!r} devices; using strategy={fallback!r} instead.")
    return fallback
