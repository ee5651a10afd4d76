import subprocess
import sys

import fabric_loggers
import fabric_utils
from fabric_loggers import CSVLogger, Logger, TensorBoardLogger


def test_public_surface_is_frozen():
    assert fabric_loggers.__all__ == ["CSVLogger", "Logger", "MLflowLogger", "TensorBoardLogger", "WandbLogger"]
    for name in fabric_loggers.__all__:
        assert getattr(fabric_loggers, name) is not None
    public = {name for name in vars(fabric_loggers) if not name.startswith("_")}
    modules = {"base", "csv_logs", "mlflow_logs", "tensorboard", "wandb_logs"}
    assert public - modules == set(fabric_loggers.__all__)


def test_loggers_subclass_the_base_and_satisfy_the_utils_protocol(tmp_path):
    for logger in (CSVLogger(tmp_path), TensorBoardLogger(tmp_path)):
        assert isinstance(logger, Logger)
        assert isinstance(logger, fabric_utils.Logger)


def test_import_has_no_heavy_imports_and_writes_nothing(tmp_path):
    code = (
        "import sys, os; import fabric_loggers; "
        "assert 'tensorboardX' not in sys.modules, 'tensorboardX imported'; "
        "assert 'tensorboard' not in sys.modules, 'tensorboard imported'; "
        "assert 'mlflow' not in sys.modules, 'mlflow imported'; "
        "assert 'wandb' not in sys.modules, 'wandb imported'; "
        "assert os.listdir('.') == [], os.listdir('.')"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
