"""fabric-loggers: the ``Logger`` base, ``CSVLogger`` and ``TensorBoardLogger``, on local paths or fsspec URLs."""

from fabric_loggers.base import Logger
from fabric_loggers.csv_logs import CSVLogger
from fabric_loggers.tensorboard import TensorBoardLogger

__version__ = "0.1.0"

__all__ = ["CSVLogger", "Logger", "TensorBoardLogger"]
