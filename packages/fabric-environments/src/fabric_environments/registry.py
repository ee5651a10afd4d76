"""The environment registry and ``detect_environment``: which cluster environment this process runs in."""

from __future__ import annotations

import logging
from typing import Any

from fabric_environments.base import ClusterEnvironment
from fabric_environments.kubeflow import KubeflowEnvironment
from fabric_environments.lightning import LightningEnvironment
from fabric_environments.lsf import LSFEnvironment
from fabric_environments.mpi import MPIEnvironment
from fabric_environments.slurm import SLURMEnvironment
from fabric_environments.torchelastic import TorchElasticEnvironment
from fabric_environments.xla import XLAEnvironment
from fabric_utils import Registry

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "fabric.environments"


def _build_registry() -> Registry[ClusterEnvironment]:
    """A registry of the built-in environments (a fresh one reads the installed entry points anew)."""
    registry: Registry[ClusterEnvironment] = Registry("cluster environment", entry_point_group=ENTRY_POINT_GROUP)
    registry.register("lightning", LightningEnvironment)
    registry.register("local", LightningEnvironment)
    registry.register("torchelastic", TorchElasticEnvironment)
    registry.register("slurm", SLURMEnvironment)
    registry.register("lsf", LSFEnvironment)
    registry.register("mpi", MPIEnvironment)
    registry.register("kubeflow", KubeflowEnvironment)
    registry.register("xla", XLAEnvironment)
    return registry


#: every known environment by name; third-party packages add theirs through the ``fabric.environments`` entry points
ENVIRONMENT_REGISTRY: Registry[ClusterEnvironment] = _build_registry()


def detection_order(registry: Registry[ClusterEnvironment] | None = None) -> list[str]:
    """The names ``detect_environment`` tries, first to last: by ``detection_priority``, highest first.

    A class registered under several names (``lightning``/``local``) is tried once, under its first name.
    Built in: torchelastic, slurm, lsf, mpi, xla, kubeflow (never detects itself), lightning (always detects itself).
    """
    registry = ENVIRONMENT_REGISTRY if registry is None else registry
    seen: set[int] = set()
    candidates: list[tuple[str, Any]] = []
    for name in registry:
        factory = registry.get(name)
        if id(factory) in seen or not callable(getattr(factory, "detect", None)):
            continue
        seen.add(id(factory))
        candidates.append((name, factory))
    candidates.sort(key=lambda item: -_priority(item[1]))
    return [name for name, _ in candidates]


def detect_environment(registry: Registry[ClusterEnvironment] | None = None) -> ClusterEnvironment:
    """A new instance of the first environment (in :func:`detection_order`) whose ``detect()`` says True.

    A ``detect()`` that raises (a broken plugin) counts as False. Falls back to :class:`LightningEnvironment`.
    """
    registry = ENVIRONMENT_REGISTRY if registry is None else registry
    for name in detection_order(registry):
        if _detects(name, registry.get(name)):
            return registry.create(name)
    return LightningEnvironment()


def _priority(factory: Any) -> int:
    priority = getattr(factory, "detection_priority", 0)
    return priority if isinstance(priority, int) else 0


def _detects(name: str, factory: Any) -> bool:
    try:
        return bool(factory.detect())
    except Exception as err:
        log.warning("The %r cluster environment's detect() raised %s: %s; skipping it", name, type(err).__name__, err)
        return False
