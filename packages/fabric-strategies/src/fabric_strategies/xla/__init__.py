"""XLA (TPU) strategies and their launcher; torch_xla is imported only when they run."""

from fabric_strategies.xla.fsdp import XLAFSDPStrategy
from fabric_strategies.xla.launcher import XLALauncher
from fabric_strategies.xla.single_device import SingleDeviceXLAStrategy
from fabric_strategies.xla.strategy import XLAStrategy

__all__ = ["SingleDeviceXLAStrategy", "XLAFSDPStrategy", "XLALauncher", "XLAStrategy"]
