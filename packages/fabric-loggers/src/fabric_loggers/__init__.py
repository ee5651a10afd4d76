"""fabric-loggers: the ``Logger`` base, ``CSVLogger`` and ``TensorBoardLogger`` (local paths or fsspec URLs),
``MLflowLogger`` and ``WandbLogger`` (their libraries are imported only when a logger is created)."""

from fabric_loggers.base import Logger
from fabric_loggers.csv_logs import CSVLogger
from fabric_loggers.mlflow_logs import MLflowLogger
from fabric_loggers.tensorboard import TensorBoardLogger
from fabric_loggers.wandb_logs import WandbLogger

__version__ = "0.1.0"

__all__ = ["CSVLogger", "Logger", "MLflowLogger", "TensorBoardLogger", "WandbLogger"]
