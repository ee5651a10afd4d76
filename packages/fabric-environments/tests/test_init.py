from __future__ import annotations

import json
import subprocess
import sys

import fabric_environments

PUBLIC_SURFACE = [
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


def test_public_surface_is_frozen() -> None:
    """Adding or removing a public name is a deliberate change: update this list and the changelog together."""
    assert fabric_environments.__all__ == PUBLIC_SURFACE
    for name in PUBLIC_SURFACE:
        assert getattr(fabric_environments, name) is not None


def test_every_environment_is_a_cluster_environment_with_a_name() -> None:
    classes = [getattr(fabric_environments, name) for name in PUBLIC_SURFACE if name.endswith("Environment")]
    for cls in classes:
        assert issubclass(cls, fabric_environments.ClusterEnvironment)
        if cls is not fabric_environments.ClusterEnvironment:
            assert cls.name in fabric_environments.ENVIRONMENT_REGISTRY
            assert fabric_environments.ENVIRONMENT_REGISTRY.get(cls.name) is cls


def test_import_has_no_side_effects() -> None:
    """Importing the package writes no environment variable and imports neither mpi4py nor torch_xla."""
    code = (
        "import json, os, sys\n"
        "before = dict(os.environ)\n"
        "import fabric_environments\n"
        "print(json.dumps({'env_changed': dict(os.environ) != before,"
        " 'heavy': sorted(m for m in sys.modules if m.split('.')[0] in ('mpi4py', 'torch_xla'))}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"env_changed": False, "heavy": []}
