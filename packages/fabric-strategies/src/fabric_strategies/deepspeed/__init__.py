"""DeepSpeed: ``DeepSpeedStrategy`` and its keyword-only options, ``DeepSpeedConfig``. deepspeed is imported lazily."""

from fabric_strategies.deepspeed.config import DeepSpeedConfig
from fabric_strategies.deepspeed.strategy import DeepSpeedStrategy

__all__ = ["DeepSpeedConfig", "DeepSpeedStrategy"]
