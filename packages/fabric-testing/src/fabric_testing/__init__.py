"""fabric-testing (dev only): pytest markers, hygiene fixtures, a real multi-process launcher and tiny models."""

from fabric_testing.disk import small_filesystem
from fabric_testing.hygiene import Snapshot, check_and_restore, child_pids
from fabric_testing.launcher import (
    DistributedTestError,
    destroy_process_group_cleanly,
    find_free_port,
    preload_in_fork_server,
    run_processes,
)
from fabric_testing.mlflow_server import MlflowServer, start_mlflow_server
from fabric_testing.models import RandomDataset, RandomLabelledDataset, TinyConvNet, TinyMLP
from fabric_testing.payload import PicklePayload
from fabric_testing.runif import STANDALONE_ENV, RunIf
from fabric_testing.slurm import SlurmCluster, start_slurm_cluster

__version__ = "0.1.0"

__all__ = [
    "STANDALONE_ENV",
    "DistributedTestError",
    "MlflowServer",
    "PicklePayload",
    "RandomDataset",
    "RandomLabelledDataset",
    "RunIf",
    "SlurmCluster",
    "Snapshot",
    "TinyConvNet",
    "TinyMLP",
    "check_and_restore",
    "child_pids",
    "destroy_process_group_cleanly",
    "find_free_port",
    "preload_in_fork_server",
    "run_processes",
    "small_filesystem",
    "start_mlflow_server",
    "start_slurm_cluster",
]
