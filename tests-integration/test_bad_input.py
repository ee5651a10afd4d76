"""Bad input ends in a clear error that names the bad value: the ``Fabric`` constructor, its methods, the CLI.

Each row of the tables below is one mistake a user can make, the exception it must raise (``ValueError`` or
``TypeError``; ``FileNotFoundError`` for a path that does not exist) and a fragment of the message that names the
bad value (for an object of the wrong type: its type). CLI mistakes exit with code 2 and one line on stderr.
Then a property-based test: any combination of constructor flags either builds a ``Fabric`` or raises
``ValueError``/``TypeError``, never anything else (and nothing is launched).
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader

from fabric_core import Fabric
from fabric_core.cli import main as fabric_cli
from fabric_environments import KubeflowEnvironment
from fabric_loggers import CSVLogger, TensorBoardLogger
from fabric_strategies import STRATEGY_REGISTRY
from fabric_utils import DEEPSPEED, TENSORBOARDX, MissingDependencyError


# -- the constructor ------------------------------------------------------------------------------------------------
class _Callback:
    def on_train_start(self) -> None: ...


_LOGGER = CSVLogger("never-written")  # a logger writes nothing until it logs

CONSTRUCTOR_CASES: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"accelerator": "cpuu"}, ValueError, "'cpuu'"),
    ({"accelerator": "CUDA!"}, ValueError, "'CUDA!'"),
    ({"accelerator": 123}, TypeError, "123"),
    ({"accelerator": "cuda"}, ValueError, "'cuda'"),  # not available on this machine
    ({"accelerator": "mps"}, ValueError, "'mps'"),
    ({"accelerator": "tpu"}, ValueError, "'tpu'"),
    ({"strategy": "ddpp"}, ValueError, "'ddpp'"),
    ({"strategy": "deepspeed_stage_9"}, ValueError, "'deepspeed_stage_9'"),
    ({"strategy": 3.5}, TypeError, "3.5"),
    ({"strategy": "xla"}, ValueError, "'xla'"),  # an XLA strategy on CPU devices
    ({"devices": 0}, ValueError, "devices=0"),
    ({"devices": -2}, ValueError, "devices=-2"),
    ({"devices": "abc"}, ValueError, "'abc'"),
    ({"devices": "3x"}, ValueError, "'3x'"),
    ({"devices": 1.5}, TypeError, "1.5"),
    ({"devices": True}, TypeError, "devices=True"),
    ({"accelerator": "cpu", "devices": [0, 1]}, TypeError, "[0, 1]"),  # CPU devices have no indices
    ({"accelerator": "cpu", "devices": "-1"}, ValueError, "'-1'"),
    ({"num_nodes": 0}, ValueError, "num_nodes=0"),
    ({"num_nodes": -1}, ValueError, "num_nodes=-1"),
    ({"num_nodes": 1.0}, TypeError, "num_nodes=1.0"),
    ({"num_nodes": "2"}, TypeError, "num_nodes='2' must be an int"),
    ({"num_nodes": True}, TypeError, "num_nodes=True must be an int"),
    ({"devices": {0, 1}}, TypeError, "{0, 1} of type set"),
    ({"devices": b"2"}, TypeError, "b'2' of type bytes"),
    ({"devices": None}, TypeError, "devices=None"),
    ({"accelerator": "CPUU"}, ValueError, "'CPUU'"),
    ({"accelerator": "Cuda"}, ValueError, "'Cuda'"),
    ({"strategy": "DDPP"}, ValueError, "'DDPP'"),
    ({"strategy": "XLA"}, ValueError, "'XLA'"),
    ({"precision": "BF16-Mixed"}, ValueError, "'BF16-Mixed' (did you mean 'bf16-mixed'?)"),
    ({"precision": "17"}, ValueError, "'17'"),
    ({"precision": "bf17-mixed"}, ValueError, "'bf17-mixed'"),
    ({"precision": 8}, ValueError, "precision 8"),
    ({"precision": 16.5}, ValueError, "16.5"),
    ({"precision": "transformer-engine"}, ValueError, "TransformerEngine"),  # needs a CUDA GPU
    ({"strategy": "fsdp", "precision": "64-true"}, ValueError, "'64-true'"),
    ({"plugins": "precision"}, TypeError, "'precision'"),
    ({"plugins": [object()]}, TypeError, "object"),
    ({"loggers": 1}, TypeError, "1 is not a logger"),
    # callbacks= and loggers= (issue #14): data is never a callback; a class is not an instance
    ({"callbacks": 5}, TypeError, "callbacks=5 (int) is not a callback"),
    ({"callbacks": "abc"}, TypeError, "callbacks='abc' (str) is not a callback"),
    ({"callbacks": b"abc"}, TypeError, "callbacks=b'abc' (bytes)"),
    ({"callbacks": 1.5}, TypeError, "callbacks=1.5 (float)"),
    ({"callbacks": {"early_stop": 3}}, TypeError, "callbacks={'early_stop': 3} (dict)"),
    ({"callbacks": [None]}, TypeError, "callbacks[0]=None (NoneType)"),
    ({"callbacks": [_Callback(), 7]}, TypeError, "callbacks[1]=7 (int)"),
    ({"callbacks": _Callback}, TypeError, "callbacks=_Callback is a class"),
    ({"loggers": CSVLogger}, TypeError, "loggers=CSVLogger is a class"),
    ({"loggers": "csv"}, TypeError, "'csv' is not a logger"),
    ({"loggers": [_LOGGER, _LOGGER]}, ValueError, "holds the same logger twice"),
]


@pytest.mark.parametrize(("kwargs", "error", "names"), CONSTRUCTOR_CASES, ids=lambda v: repr(v)[:40])
def test_bad_constructor_argument(kwargs: dict[str, Any], error: type[Exception], names: str) -> None:
    with pytest.raises(error) as info:
        Fabric(**kwargs)
    # the message names the value exactly as the user wrote it (registry names are looked up case-insensitively)
    assert names in str(info.value), f"{kwargs}: the message does not name {names}: {info.value}"


# -- the methods ----------------------------------------------------------------------------------------------------
class Context:
    """A single-device Fabric with a set-up model and optimizer, and files to load."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.fabric = Fabric(accelerator="cpu", devices=1)
        self.raw_model = nn.Linear(4, 2)
        self.model, self.optimizer = self.fabric.setup(
            self.raw_model, torch.optim.SGD(self.raw_model.parameters(), lr=0.1)
        )
        self.fabric.backward(self.model(torch.ones(3, 4)).sum())
        self.checkpoint = str(directory / "good.ckpt")
        self.fabric.save(self.checkpoint, {"model": self.model, "step": 3})
        content = Path(self.checkpoint).read_bytes()
        (directory / "truncated.ckpt").write_bytes(content[: len(content) // 2])
        (directory / "garbage.ckpt").write_bytes(b"these bytes are no torch checkpoint")
        (directory / "short-pickle.ckpt").write_bytes(b"\x80\x02}q\x00(X")
        (directory / "a-directory").mkdir()


def _raise_if_returns(value: Any) -> None:
    raise AssertionError(f"no error; returned {value!r}")


METHOD_CASES: list[tuple[str, Callable[[Context], Any], type[Exception], str]] = [
    ("setup a str", lambda c: c.fabric.setup("not a module"), TypeError, "str"),
    ("setup twice", lambda c: c.fabric.setup(c.raw_model), ValueError, "Linear"),
    ("setup a wrapper", lambda c: c.fabric.setup_module(c.model), ValueError, "already set up"),
    ("setup an optimizer str", lambda c: c.fabric.setup(nn.Linear(1, 1), "sgd"), TypeError, "str"),
    ("setup_optimizers str", lambda c: c.fabric.setup_optimizers("adam"), TypeError, "str"),
    ("setup_dataloaders list", lambda c: c.fabric.setup_dataloaders([1, 2, 3]), TypeError, "list"),
    ("all_reduce op", lambda c: c.fabric.all_reduce(torch.ones(1), reduce_op="avgg"), ValueError, "'avgg'"),
    ("all_reduce op int", lambda c: c.fabric.all_reduce(torch.ones(1), reduce_op=7), ValueError, "reduce_op 7"),
    ("broadcast src", lambda c: c.fabric.broadcast(1, src=5), ValueError, "src=5"),
    ("clip neither", lambda c: c.fabric.clip_gradients(c.model, c.optimizer), ValueError, "clip_val=None"),
    (
        "clip both",
        lambda c: c.fabric.clip_gradients(c.model, c.optimizer, clip_val=1.0, max_norm=2.5),
        ValueError,
        "max_norm=2.5",
    ),
    (
        "clip norm type",
        lambda c: c.fabric.clip_gradients(c.model, c.optimizer, max_norm=1.0, norm_type="fro2"),
        ValueError,
        "'fro2'",
    ),
    (
        "clip negative max_norm",
        lambda c: _raise_if_returns(c.fabric.clip_gradients(c.model, c.optimizer, max_norm=-1.0)),
        ValueError,
        "max_norm=-1.0",
    ),
    (
        "clip zero max_norm",
        lambda c: c.fabric.clip_gradients(c.model, c.optimizer, max_norm=0),
        ValueError,
        "(max_norm=0)",
    ),
    (
        "clip infinite max_norm",
        lambda c: c.fabric.clip_gradients(c.model, c.optimizer, max_norm=float("inf")),
        ValueError,
        "max_norm=inf",
    ),
    ("clip str max_norm", lambda c: c.fabric.clip_gradients(c.model, c.optimizer, max_norm="1"), TypeError, "'1'"),
    (
        "clip negative clip_val",
        lambda c: _raise_if_returns(c.fabric.clip_gradients(c.model, c.optimizer, clip_val=-0.5)),
        ValueError,
        "clip_val=-0.5",
    ),
    (
        "clip negative norm_type",
        lambda c: c.fabric.clip_gradients(c.model, c.optimizer, max_norm=1.0, norm_type=-2),
        ValueError,
        "norm_type=-2",
    ),
    (
        "clip error_if_nonfinite",
        lambda c: c.fabric.clip_gradients(c.model, c.optimizer, max_norm=1.0, error_if_nonfinite="yes"),
        TypeError,
        "error_if_nonfinite='yes'",
    ),
    ("setup move_to_device", lambda c: c.fabric.setup(nn.Linear(1, 1), move_to_device="yes"), TypeError, "'yes'"),
    (
        "setup_dataloaders sampler flag",
        lambda c: c.fabric.setup_dataloaders(DataLoader(range(4)), use_distributed_sampler="yes"),
        TypeError,
        "use_distributed_sampler='yes'",
    ),
    ("init_module empty_init", lambda c: c.fabric.init_module(empty_init="yes"), TypeError, "empty_init='yes'"),
    ("load strict", lambda c: c.fabric.load(c.checkpoint, {"model": c.model}, strict="yes"), TypeError, "strict='yes'"),
    ("load weights_only", lambda c: c.fabric.load(c.checkpoint, weights_only="no"), TypeError, "weights_only='no'"),
    ("load_raw strict", lambda c: c.fabric.load_raw(c.checkpoint, c.model, strict=1), TypeError, "strict=1"),
    ("no_backward_sync enabled", lambda c: c.fabric.no_backward_sync(c.model, enabled="no"), TypeError, "'no'"),
    ("all_gather sync_grads", lambda c: c.fabric.all_gather(torch.ones(1), sync_grads=1), TypeError, "sync_grads=1"),
    ("rank_zero_first local", lambda c: c.fabric.rank_zero_first(local="yes"), TypeError, "local='yes'"),
    ("load missing path", lambda c: c.fabric.load(str(c.dir / "missing.ckpt")), FileNotFoundError, "missing.ckpt"),
    ("load truncated file", lambda c: c.fabric.load(str(c.dir / "truncated.ckpt")), ValueError, "truncated.ckpt"),
    ("load garbage bytes", lambda c: c.fabric.load(str(c.dir / "garbage.ckpt")), ValueError, "garbage.ckpt"),
    ("load short pickle", lambda c: c.fabric.load(str(c.dir / "short-pickle.ckpt")), ValueError, "short-pickle.ckpt"),
    ("load a directory", lambda c: c.fabric.load(str(c.dir / "a-directory")), ValueError, "a-directory"),
    (
        "load strict missing key",
        lambda c: c.fabric.load(c.checkpoint, {"model": c.model, "scheduler": {}}),
        ValueError,
        "'scheduler'",
    ),
    ("load state list", lambda c: c.fabric.load(c.checkpoint, [c.model]), TypeError, "list"),
    ("load_raw str", lambda c: c.fabric.load_raw(c.checkpoint, "model"), TypeError, "str"),
    ("load_raw missing", lambda c: c.fabric.load_raw(str(c.dir / "nope.pt"), c.model), FileNotFoundError, "nope.pt"),
    ("save state list", lambda c: c.fabric.save(str(c.dir / "x.ckpt"), [c.model]), TypeError, "list"),
    (
        "save filter key",
        lambda c: c.fabric.save(str(c.dir / "x.ckpt"), {"model": c.model}, filter={"nope": lambda k, v: True}),
        ValueError,
        "'nope'",
    ),
    (
        "save filter value",
        lambda c: c.fabric.save(str(c.dir / "x.ckpt"), {"model": c.model}, filter={"model": 3}),
        TypeError,
        "3",
    ),
    ("launch non-callable", lambda c: c.fabric.launch("not callable"), TypeError, "'not callable'"),
    ("backward model", lambda c: c.fabric.backward(torch.ones(1), model=nn.Linear(1, 1)), TypeError, "Linear"),
    ("no_backward_sync", lambda c: c.fabric.no_backward_sync(nn.Linear(1, 1)), TypeError, "Linear"),
    ("seed str", lambda c: c.fabric.seed_everything("abc"), TypeError, "'abc'"),
    ("seed out of range", lambda c: c.fabric.seed_everything(2**40), ValueError, str(2**40)),
    ("mark_forward_method", lambda c: c.fabric.mark_forward_method(c.model, "nonexistent"), ValueError, "nonexistent"),
    # an optimizer over parameters that are not the model's (issue #14): refused before anything is wrapped
    (
        "setup optimizer of another model",
        lambda c: c.fabric.setup(nn.Linear(4, 2), torch.optim.SGD(nn.Linear(4, 2).parameters(), lr=0.1)),
        ValueError,
        "optimizer 0 (SGD) updates 2 of its 2 parameters that are not parameters of the Linear",
    ),
    (
        "setup second optimizer partly foreign",
        lambda c: _setup_with_extra(c.fabric, nn.Linear(4, 2)),
        ValueError,
        "optimizer 1 (Adam) updates 1 of its 3 parameters",
    ),
    (
        "setup the same optimizer twice",
        lambda c: (lambda m: c.fabric.setup(m, *[torch.optim.SGD(m.parameters(), lr=1)] * 2))(nn.Linear(4, 2)),
        ValueError,
        "The SGD optimizer is passed twice",
    ),
    (
        "setup_optimizers the same optimizer twice",
        lambda c: c.fabric.setup_optimizers(*[torch.optim.SGD(c.raw_model.parameters(), lr=1)] * 2),
        ValueError,
        "The SGD optimizer is passed twice",
    ),
    ("call a hook by number", lambda c: c.fabric.call(5), TypeError, "got 5 of type int"),
    ("call a hook by sentence", lambda c: c.fabric.call("on train end"), ValueError, "got 'on train end'"),
    ("log a number as name", lambda c: c.fabric.log(5, 1.0), TypeError, "got 5 of type int"),
    ("log_dict a list", lambda c: c.fabric.log_dict([("loss", 1.0)]), TypeError, "got list"),
    ("log_dict step str", lambda c: c.fabric.log_dict({"loss": 1.0}, step="3"), TypeError, "got '3' of type str"),
]


def _setup_with_extra(fabric: Fabric, model: nn.Module) -> Any:
    """A second optimizer over the model's parameters and one more that no module holds (a learned temperature)."""
    extra = nn.Parameter(torch.zeros(1))
    return fabric.setup(
        model, torch.optim.SGD(model.parameters(), lr=1), torch.optim.Adam([*model.parameters(), extra])
    )


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Context:
    return Context(tmp_path_factory.mktemp("bad-input"))


@pytest.mark.parametrize(
    ("call", "error", "names"), [pytest.param(call, error, names, id=name) for name, call, error, names in METHOD_CASES]
)
def test_bad_method_argument(context: Context, call: Callable[[Context], Any], error: type, names: str) -> None:
    with pytest.raises(error) as info:
        call(context)
    assert names in str(info.value), f"the message does not name the bad value ({names}): {info.value}"


# -- the CLI --------------------------------------------------------------------------------------------------------
CLI_CASES: list[tuple[list[str], str]] = [
    (["run", "--accelerator", "cpuu", "{script}"], "'cpuu'"),
    (["run", "--accelerator", "cuda", "{script}"], "'cuda'"),
    (["run", "--strategy", "ddpp", "{script}"], "'ddpp'"),
    (["run", "--strategy", "xla", "{script}"], "'xla'"),
    (["run", "--devices", "abc", "{script}"], "'abc'"),
    (["run", "--devices", "0", "{script}"], "'0'"),
    (["run", "--devices", "-3", "{script}"], "'-3'"),
    (["run", "--num-nodes", "0", "{script}"], "0 is not in the range"),
    (["run", "--num-nodes", "two", "{script}"], "'two'"),
    (["run", "--precision", "33", "{script}"], "'33'"),
    (["run", "--strategy", "fsdp", "--precision", "64-true", "{script}"], "'64-true'"),
    (["run", "--node-rank", "3", "--num-nodes", "2", "{script}"], "3 is out of range"),
    (["run", "--main-port", "70000", "{script}"], "70000"),
    (["run", "--max-restarts", "-1", "{script}"], "-1"),
    (["run", "--bogus-option", "x", "{script}"], "--bogus-option"),
    (["run", "-m", "", "x"], "''"),
    (["run", "{dir}/missing_script.py"], "missing_script.py"),
    (["consolidate", "{dir}/no-such-dir"], "no-such-dir"),
    (["consolidate", "{script}"], "script.py"),
    (["consolidate", "{dir}/empty-dir"], "empty-dir"),
    (["runn", "{script}"], "'runn'"),
]


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("cli")
    script = directory / "script.py"
    script.write_text("raise SystemExit('this script must never run')\n")
    (directory / "empty-dir").mkdir()
    return {"script": str(script), "dir": str(directory)}


@pytest.mark.parametrize(("args", "names"), CLI_CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_bad_cli_argument(cli_files: dict[str, str], args: list[str], names: str) -> None:
    argv = [arg.format(**cli_files) for arg in args]
    stderr, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout), pytest.raises(SystemExit) as info:
        fabric_cli(argv)
    message = stderr.getvalue().strip()
    assert info.value.code == 2, (info.value.code, message)
    assert "\n" not in message, f"more than one line: {message}"
    assert names in message, f"the message does not name the bad value ({names}): {message}"
    assert "must never run" not in stdout.getvalue() + message


def test_bad_cli_argument_in_a_real_process(cli_files: dict[str, str], helpers: Any) -> None:
    """The installed entry point behaves the same: exit code 2, one line naming the value, nothing started."""
    command = [sys.executable, "-m", "fabric_core.cli", "run", "--strategy", "ddpp", cli_files["script"]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=helpers.command_environment())
    assert result.returncode == 2, result
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "'ddpp'" in result.stderr, result.stderr
    assert "must never run" not in result.stdout + result.stderr


# -- logger folders: a name, version or sub_dir never leads outside root_dir (issue #14) -----------------------------
LOGGER_CASES: list[tuple[type, dict[str, Any], str]] = [
    (CSVLogger, {"name": "../x"}, "name='../x' would write outside root_dir: it has a '..' component"),
    (CSVLogger, {"name": "exp/../../x"}, "name='exp/../../x'"),
    (CSVLogger, {"name": "{outside}"}, "name='{outside}' would write outside root_dir: it is an absolute path"),
    (CSVLogger, {"version": "../v"}, "version='../v'"),
    (CSVLogger, {"version": "{outside}"}, "version='{outside}'"),
    (CSVLogger, {"name": "s3://bucket/x"}, "name='s3://bucket/x' would write outside root_dir: it is a URL"),
    (TensorBoardLogger, {"name": "../x"}, "name='../x'"),
    (TensorBoardLogger, {"version": "../../v"}, "version='../../v'"),
    (TensorBoardLogger, {"sub_dir": "../../../x"}, "sub_dir='../../../x'"),
    (TensorBoardLogger, {"sub_dir": "{outside}"}, "sub_dir='{outside}'"),
]


@pytest.mark.parametrize(
    ("logger", "kwargs", "names"), LOGGER_CASES, ids=[f"{c.__name__}-{k}" for c, k, _ in LOGGER_CASES]
)
def test_bad_logger_folder(tmp_path: Path, logger: type, kwargs: dict[str, Any], names: str) -> None:
    if logger is TensorBoardLogger and not TENSORBOARDX.available:
        pytest.skip("TensorBoardLogger needs tensorboardX")
    outside = str(tmp_path / "outside")
    kwargs = {key: value.format(outside=outside) for key, value in kwargs.items()}
    with pytest.raises(ValueError) as info:
        logger(tmp_path / "root", **kwargs)
    assert names.format(outside=outside) in str(info.value), info.value
    assert "Use a relative folder such as 'exp' or 'exp/run_1'" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing was created, inside root_dir or outside


# -- launcher variables that contradict each other (issue #14): refused before any rendezvous ----------------------
_TORCHRUN = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "WORLD_SIZE": "2", "RANK": "1"}
_TORCHRUN.update({"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0"})
_SRUN = {"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURM_NODEID": "0", "SLURM_NNODES": "1"}
_SRUN.update({"SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_ID": "42", "SLURM_JOB_NAME": "train.py"})
_KUBEFLOW = {"MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456", "WORLD_SIZE": "2", "RANK": "1"}

ENVIRONMENT_CASES: list[tuple[str, dict[str, str], dict[str, Any], str]] = [
    ("torchrun rank past the world", {**_TORCHRUN, "RANK": "7"}, {}, "RANK=7 must satisfy 0 <= RANK < WORLD_SIZE=2"),
    ("torchrun negative rank", {**_TORCHRUN, "RANK": "-1"}, {}, "RANK=-1 must satisfy"),
    ("torchrun local rank", {**_TORCHRUN, "LOCAL_RANK": "2"}, {}, "LOCAL_RANK=2 must satisfy 0 <= LOCAL_RANK < LOCAL"),
    ("torchrun node rank", {**_TORCHRUN, "GROUP_WORLD_SIZE": "1", "GROUP_RANK": "1"}, {}, "GROUP_RANK=1 must"),
    ("torchrun world of 0", {**_TORCHRUN, "WORLD_SIZE": "0"}, {}, "WORLD_SIZE=0 must be at least 1"),
    ("torchrun rank not a number", {**_TORCHRUN, "RANK": "one"}, {}, "RANK='one' must be an integer"),
    (
        "slurm rank",
        {**_SRUN, "SLURM_PROCID": "2"},
        {},
        "SLURM_PROCID=2 must satisfy 0 <= SLURM_PROCID < SLURM_NTASKS=2",
    ),
    (
        "slurm node",
        {**_SRUN, "SLURM_NODEID": "1"},
        {},
        "SLURM_NODEID=1 must satisfy 0 <= SLURM_NODEID < SLURM_NNODES=1",
    ),
    ("slurm local", {**_SRUN, "SLURM_LOCALID": "3"}, {}, "SLURM_LOCALID=3 must satisfy"),
    (
        "kubeflow",
        {**_KUBEFLOW, "RANK": "2"},
        {"plugins": KubeflowEnvironment()},
        "RANK=2 must satisfy 0 <= RANK < WORLD",
    ),
    (
        "local node rank",
        {"NODE_RANK": "2"},
        {"devices": 1, "num_nodes": 2},
        "NODE_RANK=2 must satisfy 0 <= NODE_RANK <",
    ),
    ("local rank past the world", {"LOCAL_RANK": "0", "RANK": "3", "WORLD_SIZE": "2"}, {}, "RANK=3 must satisfy 0 <="),
]


@pytest.mark.parametrize(
    ("variables", "kwargs", "names"), [pytest.param(v, k, n, id=i) for i, v, k, n in ENVIRONMENT_CASES]
)
def test_inconsistent_launcher_variables(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], kwargs: dict[str, Any], names: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as info:
        Fabric(**{"accelerator": "cpu", "devices": 2, "strategy": "ddp", **kwargs})
    assert names in str(info.value), info.value
    if "must be an integer" not in names:  # a value that is no number is named as it is, with the rule
        assert "Fix the launcher's environment variables" in str(info.value)


def test_the_tables_hold_at_least_sixty_bad_inputs() -> None:
    tables = (CONSTRUCTOR_CASES, METHOD_CASES, CLI_CASES, LOGGER_CASES, ENVIRONMENT_CASES)
    assert sum(len(table) for table in tables) >= 60


# -- any combination of constructor flags -------------------------------------------------------------------------
ACCELERATORS = ["auto", "cpu", "gpu", "cuda", "mps", "tpu", "xla", "cpuu", "", "CPU", 0, None, 1.5]
STRATEGIES = ["auto", *STRATEGY_REGISTRY, "ddpp", "", "DDP", None, 3]
DEVICES = st.one_of(
    st.integers(-3, 4), st.sampled_from(["auto", "1", "2", "-1", "0,1", "abc", "", [0], [0, 1], [], None, 1.5, True])
)
NUM_NODES = st.one_of(st.integers(-1, 3), st.sampled_from([1.0, None, True, "x", "2"]))
PRECISIONS = [
    *("64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed", "transformer-engine"),
    *(64, 32, 16, "16", "bf16", "17", "", "bf16-mix", None, 16.5),
]


def _needs_missing_dependency(strategy: Any) -> bool:
    return isinstance(strategy, str) and strategy.startswith("deepspeed") and not DEEPSPEED.available


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    accelerator=st.sampled_from(ACCELERATORS),
    strategy=st.sampled_from(STRATEGIES),
    devices=DEVICES,
    num_nodes=NUM_NODES,
    precision=st.sampled_from(PRECISIONS),
)
def test_any_flag_combination_builds_or_raises_value_or_type_error(
    accelerator: Any, strategy: Any, devices: Any, num_nodes: Any, precision: Any
) -> None:
    flags = {"accelerator": accelerator, "strategy": strategy, "devices": devices, "num_nodes": num_nodes}
    flags["precision"] = precision
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fabric = Fabric(**{name: value for name, value in flags.items() if value is not None})
    except (ValueError, TypeError):
        return
    except MissingDependencyError:
        # an optional package this environment lacks (DeepSpeed in the `integration` nox session)
        assert _needs_missing_dependency(strategy), flags
        return
    # it built: the parts agree with each other, and nothing was started
    assert fabric.world_size >= 1, flags
    assert fabric.global_rank == 0, flags
    assert fabric.device.type == "cpu", flags


def test_fabric_still_works_after_the_bad_calls(context: Context) -> None:
    """A mistake raises before anything changes: the Fabric of the method table still trains and loads data."""
    loader = context.fabric.setup_dataloaders(DataLoader(torch.arange(6.0), batch_size=2))
    assert [batch.tolist() for batch in loader] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
