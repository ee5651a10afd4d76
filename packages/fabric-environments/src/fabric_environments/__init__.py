"""fabric-environments: where the processes of a run come from and how they find each other."""

from fabric_environments.base import ClusterEnvironment
from fabric_environments.kubeflow import KubeflowEnvironment
from fabric_environments.lightning import LightningEnvironment
from fabric_environments.lsf import LSFEnvironment
from fabric_environments.mpi import MPIEnvironment
from fabric_environments.registry import ENVIRONMENT_REGISTRY, detect_environment, detection_order
from fabric_environments.slurm import SLURMEnvironment
from fabric_environments.torchelastic import TorchElasticEnvironment
from fabric_environments.xla import XLAEnvironment

__version__ = "0.1.0"

__all__ = [
    "ENVIRONMENT_REGISTRY",
    "ClusterEnvironment",
    "KubeflowEnvironment",
    "LSFEnvironment",
    "LightningEnvironment",
    "MPIEnvironment",
    "SLURMEnvironment",
    "TorchElasticEnvironment",
    "XLAEnvironment",
    "detect_environment",
    "detection_order",
]
