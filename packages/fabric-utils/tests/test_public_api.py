"""Freezes the public surface of fabric_utils: a change here is a deliberate API change (update the CHANGELOG)."""

from __future__ import annotations

import fabric_utils

EXPECTED = [
    "BITSANDBYTES",
    "DEEPSPEED",
    "FSSPEC",
    "INFINITY_NORM_NAMES",
    "MPI4PY",
    "NUMPY",
    "REDUCE_OP_NAMES",
    "S3FS",
    "TENSORBOARD",
    "TENSORBOARDX",
    "TORCH_XLA",
    "TRANSFORMER_ENGINE",
    "AttributeDict",
    "CollectibleGroup",
    "FabricDeprecationWarning",
    "FabricWarning",
    "Logger",
    "MissingDependencyError",
    "Optimizable",
    "OptionalDependency",
    "PathLike",
    "PossibleUserWarning",
    "RedOpType",
    "ReduceOp",
    "ReduceOpName",
    "Registry",
    "RegistryEntry",
    "Stateful",
    "Steppable",
    "UnknownNameError",
    "WarningCache",
    "apply_to_collection",
    "apply_to_collections",
    "capture_rng_state",
    "check_clip_threshold",
    "check_norm_type",
    "check_num_nodes",
    "check_reduce_op",
    "convert_tensors_to_scalars",
    "cpu_count",
    "cuda_available",
    "cuda_device_count",
    "disable_possible_user_warnings",
    "max_seed_value",
    "min_seed_value",
    "module_available",
    "names_on_access",
    "move_data_to_device",
    "mps_available",
    "override_hardware",
    "package_version",
    "rank_from_environment",
    "rank_zero_debug",
    "rank_zero_deprecation",
    "rank_zero_info",
    "rank_zero_only",
    "rank_zero_print",
    "rank_zero_warn",
    "reset_seed",
    "restore_rng_state",
    "seed_everything",
    "seed_worker",
    "suggested_max_num_workers",
    "worker_seed",
    "xla_available",
    "xla_device_count",
]


def test_all_is_frozen() -> None:
    assert sorted(fabric_utils.__all__) == sorted(EXPECTED)
    assert len(set(fabric_utils.__all__)) == len(fabric_utils.__all__), "no duplicates"


def test_every_public_name_exists_and_no_private_name_is_exported() -> None:
    for name in fabric_utils.__all__:
        assert hasattr(fabric_utils, name), name
        assert not name.startswith("_"), name


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from fabric_utils import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(EXPECTED)


def test_version() -> None:
    from importlib.metadata import version

    assert fabric_utils.__version__ == version("fabric-utils")
