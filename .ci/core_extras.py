"""What each extra of fabric-core promises: the checks the `wheel_imports` nox session runs after installing it.

Kept apart from noxfile.py (which imports this module) because it is data: one small script per library.
"""

from __future__ import annotations

# What `pip install fabric-core[extra]` promises, run by `wheel_imports` after installing that extra from the fresh
# wheels: a real use of the library the extra adds, through fabric's own classes where there is one.
EXTRA_CHECKS: dict[str, str] = {
    "csv": """
import tempfile
from fabric_loggers import CSVLogger
logger = CSVLogger(tempfile.mkdtemp())
logger.log_metrics({"loss": 1.0}, step=0)
logger.finalize("success")
""",
    "tensorboard": """
import tempfile
from torch.utils.tensorboard import SummaryWriter
from fabric_loggers import TensorBoardLogger
logger = TensorBoardLogger(tempfile.mkdtemp())
assert isinstance(logger.experiment, SummaryWriter), type(logger.experiment)
logger.log_metrics({"loss": 1.0}, step=0)
logger.finalize("success")
""",
    "mlflow": """
import tempfile
from fabric_loggers import MLflowLogger
logger = MLflowLogger(tracking_uri="sqlite:///" + tempfile.mkdtemp() + "/mlflow.db")
logger.log_metrics({"loss": 1.0}, step=0)
history = logger.experiment.get_metric_history(logger.run_id, "loss")
assert [m.value for m in history] == [1.0], history
logger.finalize("success")
""",
    "wandb": """
import tempfile
from fabric_loggers import WandbLogger
logger = WandbLogger(save_dir=tempfile.mkdtemp(), offline=True, project="wheel-imports")
logger.log_metrics({"loss": 1.0}, step=0)
assert logger.experiment.id == logger.version, (logger.experiment.id, logger.version)
logger.finalize("success")
""",
    "deepspeed": """
import torch
from fabric_core import Fabric
fabric = Fabric(accelerator="cpu", devices=1, strategy="deepspeed")
fabric.launch()
model = torch.nn.Linear(4, 2)
model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
fabric.backward(model(torch.randn(8, 4)).sum())
optimizer.step()
engines = fabric.strategy.engines
assert [type(engine).__name__ for engine in engines] == ["DeepSpeedEngine"], engines
""",
    "s3": """
import fsspec
import s3fs
assert isinstance(fsspec.filesystem("s3", anon=True), s3fs.S3FileSystem)
""",
    "migrate": """
import pathlib, subprocess, sys, tempfile
script = pathlib.Path(tempfile.mkdtemp()) / "train.py"
script.write_text("from lightning.fabric import Fabric\\n")
subprocess.run([sys.executable, "-m", "fabric_core", "migrate", "--write", str(script)], check=True)
assert "from fabric_core import Fabric" in script.read_text(), script.read_text()
""",
}
# fabric-core's extras ("" is the plain install) and the checks each must pass; `dag`-like: every extra in its
# pyproject.toml (but `test`) must be listed here
CORE_EXTRAS: dict[str, list[str]] = {
    "": ["csv"],
    "loggers": ["csv"],
    "tensorboard": ["tensorboard"],
    "mlflow": ["mlflow"],
    "wandb": ["wandb"],
    "deepspeed": ["deepspeed"],
    "s3": ["s3"],
    "migrate": ["migrate"],
    "all": [],  # checked by what it installs: everything each other extra installed (see check_core_extras)
}
