import os
import pickle
import re
import sys
import time
import uuid
import warnings
from argparse import Namespace
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from torch import nn

from fabric_loggers import TensorBoardLogger
from fabric_testing import TinyMLP
from fabric_utils import MissingDependencyError, PossibleUserWarning, module_available


@pytest.fixture(autouse=True, params=["tensorboard", "tensorboardX"])
def backend(request, monkeypatch):
    """Run each test with torch's SummaryWriter (``tensorboard`` installed, preferred) and with tensorboardX (what a
    user without ``tensorboard`` gets: the module is made unimportable for the test, as a missing install is)."""
    if request.param == "tensorboardX":
        monkeypatch.setitem(sys.modules, "tensorboard", None)
    module_available.cache_clear()
    yield request.param
    module_available.cache_clear()


def read_run(path: str | Path) -> EventAccumulator:
    """Everything TensorBoard itself reads from a run folder (all of its event files)."""
    accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def scalars(accumulator: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def hparams_of(accumulator: EventAccumulator) -> tuple[dict[str, object], list[str]]:
    """The hyperparameters and metric tags that TensorBoard's HParams tab shows for a run."""
    content = accumulator.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    values = {}
    for name, value in start.session_start_info.hparams.items():
        values[name] = getattr(value, value.WhichOneof("kind"))
    return values, [info.name.tag for info in experiment.experiment.metric_infos]


def event_files(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if "tfevents" in name)


@pytest.fixture
def memory_root():
    root = f"memory://tb-{uuid.uuid4().hex}"
    yield root
    fsspec.filesystem("memory").rm(root, recursive=True)


def test_folders_and_versions(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="exp")
    assert logger.name == "exp"
    assert logger.root_dir == str(tmp_path / "exp")
    assert logger.version == 0
    assert logger.log_dir == str(tmp_path / "exp" / "version_0")
    assert logger.sub_dir is None
    assert not (tmp_path / "exp").exists()  # nothing is written before something is logged
    logger.log_metrics({"a": 1.0})
    logger.finalize("success")
    assert TensorBoardLogger(tmp_path, name="exp").version == 1
    assert TensorBoardLogger(tmp_path, name="exp", version="best").log_dir == str(tmp_path / "exp" / "best")
    assert TensorBoardLogger(tmp_path, name="", version=3).log_dir == str(tmp_path / "version_3")
    assert TensorBoardLogger(tmp_path).name == "fabric_logs"


def test_scalars_are_read_back_by_tensorboard(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    for step in range(3):
        logger.log_metrics({"loss": 1.0 / (step + 1), "acc": torch.tensor(0.5 * step)}, step=step)
    logger.log_metrics({"lr": 0.01}, step=np.int64(10))
    logger.finalize("success")
    run = read_run(logger.log_dir)
    assert set(run.Tags()["scalars"]) == {"loss", "acc", "lr"}
    assert scalars(run, "loss") == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert scalars(run, "acc") == [(0, 0.0), (1, 0.5), (2, 1.0)]
    assert scalars(run, "lr") == [(10, pytest.approx(0.01))]


def chart_run(log_dir: str, main_tag: str, key: str, backend: str) -> Path:
    """The run folder that ``add_scalars(main_tag, {key: ...})`` writes: the backends name it differently."""
    return Path(log_dir, main_tag, key) if backend == "tensorboardX" else Path(log_dir, f"{main_tag}_{key}")


def test_prefix_and_dict_values(tmp_path, backend):
    logger = TensorBoardLogger(tmp_path, prefix="train")
    logger.log_metrics({"loss": 2.0, "losses": {"g": 1.0, "d": torch.tensor(3.0)}}, step=4)
    logger.finalize("success")
    run = read_run(logger.log_dir)
    assert scalars(run, "train-loss") == [(4, 2.0)]
    # add_scalars draws one chart: each key is a run folder below the main tag
    assert scalars(read_run(chart_run(logger.log_dir, "train-losses", "g", backend)), "train-losses") == [(4, 1.0)]
    assert scalars(read_run(chart_run(logger.log_dir, "train-losses", "d", backend)), "train-losses") == [(4, 3.0)]


def test_bad_values_name_the_metric(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    with pytest.raises(ValueError, match=r"metric 'w': a tensor of shape \(2, 2\)"):
        logger.log_metrics({"w": torch.ones(2, 2)})
    with pytest.raises(TypeError, match=r"metric 'group/x': 'text'"):
        logger.log_metrics({"group": {"x": "text"}})
    logger.finalize("success")
    assert not os.path.exists(logger.log_dir)


def test_hyperparams_with_the_default_hp_metric(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    logger.log_hyperparams(
        {"lr": 0.1, "optim": {"name": "adam", "betas": (0.9, 0.99)}, "amp": True, "act": nn.ReLU, "seed": None}
    )
    logger.log_metrics({"hp_metric": 0.75}, step=5)
    logger.finalize("success")
    run = read_run(logger.log_dir)
    values, metric_tags = hparams_of(run)
    assert values == {
        "lr": 0.1,
        "optim/name": "adam",
        "optim/betas": "[0.9, 0.99]",
        "amp": True,
        "act": "torch.nn.modules.activation.ReLU",
        "seed": "None",
    }
    assert metric_tags == ["hp_metric"]
    assert scalars(run, "hp_metric") == [(0, -1.0), (5, 0.75)]
    assert logger.hparams["optim/name"] == "adam"


def test_hyperparams_with_given_metrics_and_prefix(tmp_path):
    logger = TensorBoardLogger(tmp_path, prefix="val")
    logger.log_hyperparams(Namespace(depth=4), metrics={"acc": 0.0, "loss": torch.tensor(9.0)})
    logger.finalize("success")
    run = read_run(logger.log_dir)
    values, metric_tags = hparams_of(run)
    assert values == {"depth": 4.0}
    assert sorted(metric_tags) == ["val-acc", "val-loss"]
    assert scalars(run, "val-loss") == [(0, 9.0)]
    assert "hp_metric" not in run.Tags()["scalars"]


def test_hyperparams_with_a_single_number_and_a_second_call(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    logger.log_hyperparams({"lr": 0.1}, 0.5)
    logger.log_hyperparams({"batch": 32}, 0.25)
    logger.finalize("success")
    run = read_run(logger.log_dir)
    values, metric_tags = hparams_of(run)
    assert values == {"lr": 0.1}  # TensorBoard shows a run's first hyperparameter record
    assert metric_tags == ["hp_metric"]
    assert scalars(run, "hp_metric") == [(0, 0.5), (0, 0.25)]
    assert logger.hparams == {"lr": 0.1, "batch": 32}


def test_without_the_default_hp_metric(tmp_path):
    logger = TensorBoardLogger(tmp_path, default_hp_metric=False)
    logger.log_hyperparams({"lr": 0.1})
    logger.finalize("success")
    run = read_run(logger.log_dir)
    values, metric_tags = hparams_of(run)
    assert values == {"lr": 0.1}
    assert metric_tags == []
    assert run.Tags()["scalars"] == []


def test_log_hyperparams_rejects_extra_arguments(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    with pytest.raises(TypeError, match="takes `params` and `metrics`"):
        logger.log_hyperparams({"a": 1}, None, "extra")
    with pytest.raises(TypeError, match=r"dict or an argparse\.Namespace, got int"):
        logger.log_hyperparams(3)  # type: ignore[arg-type]
    logger.finalize("success")


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")  # tensorboardX traces with torch.jit
def test_graph_from_an_example_input(tmp_path, backend):
    if backend == "tensorboardX":
        with pytest.raises(MissingDependencyError, match="log_graph requires `tensorboard`"):
            TensorBoardLogger(tmp_path).log_graph(TinyMLP(in_features=4), torch.randn(2, 4))
        return
    logger = TensorBoardLogger(tmp_path)
    logger.log_graph(TinyMLP(in_features=4), torch.randn(2, 4))
    logger.finalize("success")
    graph = read_run(logger.log_dir).Graph()
    ops = {node.op for node in graph.node}
    assert "aten::linear" in ops
    assert "aten::relu" in ops


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")  # tensorboardX traces with torch.jit
def test_graph_from_the_models_example_input_array(tmp_path, backend):
    if backend == "tensorboardX":
        pytest.skip("graphs need the tensorboard package")
    model = TinyMLP(in_features=3)
    model.example_input_array = torch.randn(1, 3)
    logger = TensorBoardLogger(tmp_path)
    logger.log_graph(model)
    logger.finalize("success")
    assert any(node.op == "aten::linear" for node in read_run(logger.log_dir).Graph().node)


def test_graph_without_an_input_warns_and_writes_nothing(tmp_path, backend):
    if backend == "tensorboardX":
        pytest.skip("graphs need the tensorboard package")
    logger = TensorBoardLogger(tmp_path)
    with pytest.warns(PossibleUserWarning, match="pass `input_array`"):
        logger.log_graph(TinyMLP())
    logger.finalize("success")
    assert not os.path.exists(logger.log_dir)


def test_sub_dir_with_home_and_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RUN_KIND", "eval")
    logger = TensorBoardLogger(tmp_path, version=1, sub_dir=Path("$RUN_KIND", "plots"))
    assert logger.sub_dir == os.path.join("eval", "plots")
    assert logger.log_dir == str(tmp_path / "fabric_logs" / "version_1" / "eval" / "plots")
    logger.log_metrics({"x": 1.0}, step=0)
    logger.finalize("success")
    assert scalars(read_run(logger.log_dir), "x") == [(0, 1.0)]
    # `~` expands to an absolute path, which would leave the version folder: refused like any absolute sub_dir
    with pytest.raises(ValueError, match=r"sub_dir='.*home/tb' would write outside root_dir: it is an absolute path"):
        TensorBoardLogger(tmp_path, version=2, sub_dir="~/tb")
    assert sorted(os.listdir(tmp_path)) == ["fabric_logs"]


@pytest.mark.parametrize("sub_dir", ["../../../escaped", "plots/../../../../escaped", "$OUTSIDE/tb", "{tmp}/tb"])
def test_a_sub_dir_that_would_write_outside_is_refused(tmp_path, monkeypatch, sub_dir):
    """``name`` and ``version`` go through the same check as CSVLogger's (test_csv_logs); ``sub_dir`` is expanded."""
    monkeypatch.setenv("OUTSIDE", str(tmp_path / "outside"))
    sub_dir = sub_dir.format(tmp=tmp_path)
    with pytest.raises(ValueError, match=r"sub_dir='.*' would write outside root_dir"):
        TensorBoardLogger(tmp_path / "root", sub_dir=sub_dir)
    with pytest.raises(ValueError, match=re.escape("name='../escaped' would write outside root_dir")):
        TensorBoardLogger(tmp_path / "root", name="../escaped")
    assert os.listdir(tmp_path) == []  # nothing created, inside or outside


def test_a_nested_name_stays_inside(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="exp/a", sub_dir="plots/loss")
    logger.log_metrics({"x": 1.0}, step=0)
    logger.finalize("success")
    assert logger.log_dir == str(tmp_path / "exp" / "a" / "version_0" / "plots" / "loss")
    assert scalars(read_run(logger.log_dir), "x") == [(0, 1.0)]


def test_save_makes_everything_readable_and_logging_continues_in_a_new_file(tmp_path):
    logger = TensorBoardLogger(tmp_path, flush_secs=3600, max_queue=1000)
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.save()
    assert scalars(read_run(logger.log_dir), "loss") == [(0, 1.0)]
    logger.log_metrics({"loss": 0.5}, step=1)
    logger.save()
    logger.log_metrics({"loss": 0.25}, step=2)
    logger.finalize("success")
    assert len(event_files(Path(logger.log_dir))) == 3  # unique names even when written within one second
    assert scalars(read_run(logger.log_dir), "loss") == [(0, 1.0), (1, 0.5), (2, 0.25)]


def test_writer_arguments_pass_through(tmp_path):
    logger = TensorBoardLogger(tmp_path, filename_suffix=".fabric")
    assert logger.experiment.log_dir == logger.log_dir
    logger.log_metrics({"a": 1.0})
    logger.save()
    logger.log_metrics({"a": 2.0})
    logger.finalize("success")
    names = event_files(Path(logger.log_dir))
    assert len(names) == 2
    assert all(name.endswith(".fabric") for name in names)
    with pytest.raises(TypeError, match=r"drop \['logdir'\]"):
        TensorBoardLogger(tmp_path, logdir="elsewhere")


def test_remote_url_is_uploaded_at_save_and_finalize(memory_root, tmp_path, backend):
    fs = fsspec.filesystem("memory")
    logger = TensorBoardLogger(memory_root, name="exp", sub_dir="train")
    assert logger.log_dir == f"{memory_root}/exp/version_0/train"
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": 1.0}, step=1)
    assert TensorBoardLogger(memory_root, name="exp").version == 1  # the version is claimed on first write
    staging = logger.experiment.log_dir
    assert os.path.isdir(staging)
    logger.save()
    fs.get(logger.log_dir, str(tmp_path / "first"), recursive=True)
    assert scalars(read_run(tmp_path / "first"), "loss") == [(1, 1.0)]
    logger.log_metrics({"loss": 0.5, "group": {"a": 2.0}}, step=2)
    logger.finalize("success")
    assert not os.path.exists(staging)
    fs.get(logger.log_dir, str(tmp_path / "all"), recursive=True)
    run = read_run(tmp_path / "all")
    assert scalars(run, "loss") == [(1, 1.0), (2, 0.5)]
    assert scalars(run, "hp_metric") == [(0, -1.0)]
    assert hparams_of(run) == ({"lr": 0.1}, ["hp_metric"])
    assert scalars(read_run(chart_run(str(tmp_path / "all"), "group", "a", backend)), "group") == [(2, 2.0)]
    # logging after finalize continues the same run with a new file
    logger.log_metrics({"loss": 0.25}, step=3)
    logger.finalize("success")
    fs.get(logger.log_dir, str(tmp_path / "again"), recursive=True)
    assert scalars(read_run(tmp_path / "again"), "loss") == [(1, 1.0), (2, 0.5), (3, 0.25)]


def test_remote_upload_skips_unchanged_files(memory_root):
    fs = fsspec.filesystem("memory")
    logger = TensorBoardLogger(memory_root)
    logger.log_metrics({"loss": 1.0}, step=1)
    logger.save()
    [first] = fs.ls(logger.log_dir, detail=False)
    fs.pipe_file(first, b"replaced remotely")
    logger.log_metrics({"loss": 0.5}, step=2)
    logger.save()  # uploads only the new file
    assert fs.cat_file(first) == b"replaced remotely"
    assert len(fs.ls(logger.log_dir)) == 2
    logger.finalize("success")


def test_nothing_is_written_off_rank_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    logger = TensorBoardLogger(tmp_path)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"a": 1.0})
    logger.log_graph(TinyMLP(), torch.randn(1, 32))
    logger.experiment.add_text("note", "hello")
    with pytest.raises(AttributeError):
        logger.experiment.__deepcopy__  # noqa: B018
    logger.finalize("success")
    assert list(tmp_path.iterdir()) == []


def test_pickling_leaves_the_writer_behind(tmp_path):
    logger = TensorBoardLogger(tmp_path, version=0)
    logger.log_metrics({"a": 1.0}, step=0)
    copy = pickle.loads(pickle.dumps(logger))
    logger.finalize("success")
    copy.log_metrics({"a": 2.0}, step=1)
    copy.finalize("success")
    assert scalars(read_run(logger.log_dir), "a") == [(0, 1.0), (1, 2.0)]


@pytest.fixture
def tensorboard_missing(monkeypatch):
    """Make ``tensorboard`` and ``tensorboardX`` unimportable for one test, the way a missing install is."""
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    module_available.cache_clear()
    yield
    module_available.cache_clear()


def test_missing_writers_name_the_install_command(tmp_path, tensorboard_missing):
    assert not module_available("tensorboardX")
    assert not module_available("tensorboard")
    with pytest.raises(
        MissingDependencyError, match=r"`tensorboard`.*`tensorboardX`.*pip install 'fabric-loggers\[tensorboard\]'"
    ):
        TensorBoardLogger(tmp_path)


def test_logging_emits_no_warnings(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logger.log_metrics({"a": 1.0}, step=0)
        logger.log_hyperparams({"b": 2})
        logger.finalize("success")


def test_experiment_has_the_writer_api_users_call(tmp_path, backend):
    logger = TensorBoardLogger(tmp_path)
    writer = logger.experiment
    assert writer.log_dir == logger.log_dir
    writer.add_scalar("direct", 1.5, 2)
    writer.add_histogram("weights", torch.arange(10.0), 2)
    writer.add_image("picture", torch.rand(3, 4, 4), 2)
    writer.add_text("note", "hello", 2)
    writer.flush()
    # readable while the writer is open; tensorboardX's flush() does not wait for its writer thread's queue, so the
    # event reaches the file a moment later on a busy machine
    deadline = time.monotonic() + 30
    while "direct" not in read_run(logger.log_dir).Tags()["scalars"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scalars(read_run(logger.log_dir), "direct") == [(2, 1.5)]
    logger.finalize("success")
    run = read_run(logger.log_dir)
    assert [event.step for event in run.Histograms("weights")] == [2]
    assert [(event.width, event.height) for event in run.Images("picture")] == [(4, 4)]
    assert "note/text_summary" in run.Tags()["tensors"]
