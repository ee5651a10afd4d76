"""Collectives: communication primitives that return their results."""

from fabric_strategies.collectives.base import Collective
from fabric_strategies.collectives.single_device_collective import SingleDeviceCollective
from fabric_strategies.collectives.torch_collective import TorchCollective

__all__ = ["Collective", "SingleDeviceCollective", "TorchCollective"]
