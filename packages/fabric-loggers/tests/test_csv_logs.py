import csv
import io
import os
import pickle
import re
import uuid
from argparse import Namespace
from pathlib import Path

import fsspec
import pytest
import torch
import yaml
from fsspec.implementations.memory import MemoryFileSystem

from fabric_loggers import CSVLogger
from fabric_testing import run_processes
from fabric_utils import FabricWarning


def read_rows(path: str) -> tuple[list[str], list[dict[str, str]]]:
    with fsspec.open(path, "r", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def memory_url() -> str:
    return f"memory://csv-{uuid.uuid4().hex}"


def test_versioned_folders(tmp_path):
    first = CSVLogger(tmp_path, name="exp")
    assert first.name == "exp"
    assert first.root_dir == str(tmp_path / "exp")
    assert first.version == 0
    assert first.log_dir == str(tmp_path / "exp" / "version_0")
    assert not (tmp_path / "exp").exists()  # nothing is written before something is logged
    first.log_metrics({"a": 1})
    assert CSVLogger(tmp_path, name="exp").version == 1
    assert CSVLogger(tmp_path, name="other").version == 0
    assert CSVLogger(tmp_path, name="exp", version=5).log_dir == str(tmp_path / "exp" / "version_5")
    assert CSVLogger(tmp_path, name="exp", version="final").log_dir == str(tmp_path / "exp" / "final")
    assert CSVLogger(tmp_path, name=None, version=2).log_dir == str(tmp_path / "version_2")
    assert CSVLogger(tmp_path).name == "fabric_logs"


@pytest.mark.parametrize("what", ["name", "version"])
@pytest.mark.parametrize("folder", ["../x", "exp/../../x", "{tmp}/x"])
def test_names_and_versions_that_would_write_outside_the_root_are_refused(tmp_path, what, folder):
    folder = folder.format(tmp=tmp_path)  # an absolute path, but inside this test's folder
    shown = re.escape(f"{what}={folder!r}")
    with pytest.raises(ValueError, match=rf"{shown} would write outside root_dir: .* Use a relative"):
        _log_one_row(CSVLogger, tmp_path / "root", {what: folder})
    assert list(tmp_path.rglob("*")) == []


def _log_one_row(logger_class, root, kwargs):
    logger = logger_class(root, **kwargs)
    logger.log_metrics({"a": 1})  # before the check, this wrote beside (or far from) root
    logger.save()


def test_a_nested_name_stays_inside(tmp_path):
    logger = CSVLogger(tmp_path, name="exp/a", version="run/1")
    logger.log_metrics({"a": 1})
    logger.save()
    assert Path(logger.metrics_file_path) == tmp_path / "exp" / "a" / "run" / "1" / "metrics.csv"
    assert Path(logger.metrics_file_path).is_file()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"flush_logs_every_n_steps": 0}, ValueError, "flush_logs_every_n_steps must be >= 1, got 0"),
        ({"flush_logs_every_n_steps": 2.5}, TypeError, "flush_logs_every_n_steps must be an int >= 1, got 2.5"),
        ({"version": -3}, ValueError, "version must be >= 0, got -3"),
        ({"prefix": 1}, TypeError, "prefix must be a str, got int"),
        ({"name": 1}, TypeError, "name must be a str or None, got int"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        CSVLogger(tmp_path, **kwargs)


def test_rows_are_buffered_and_flushed_every_n_steps(tmp_path):
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=3)
    path = logger.metrics_file_path
    assert path == os.path.join(logger.log_dir, "metrics.csv")
    logger.log_metrics({"loss": 1.0})
    logger.log_metrics({"loss": 0.5})
    assert not os.path.exists(path)
    logger.log_metrics({"loss": 0.25})
    assert [row["loss"] for row in read_rows(path)[1]] == ["1.0", "0.5", "0.25"]
    logger.log_metrics({"loss": 0.125})
    assert len(read_rows(path)[1]) == 3
    logger.save()
    assert len(read_rows(path)[1]) == 4
    logger.log_metrics({"loss": 0.0625})
    logger.finalize("success")
    header, rows = read_rows(path)
    assert header == ["step", "loss"]
    assert [row["step"] for row in rows] == ["0", "1", "2", "3", "4"]
    assert [row["loss"] for row in rows] == ["1.0", "0.5", "0.25", "0.125", "0.0625"]


def test_new_metric_names_add_columns_without_losing_rows(tmp_path):
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=2)
    logger.log_metrics({"loss": 3.0}, step=10)
    logger.log_metrics({"loss": 2.0}, step=20)  # flushed: header step,loss
    logger.log_metrics({"val_acc": 0.5}, step=25)
    logger.log_metrics({"loss": 1.0, "lr": 0.1}, step=30)  # flushed: two new columns, file rewritten
    logger.log_metrics({"loss": 0.5}, step=40)
    logger.log_metrics({"grad_norm": 7}, step=50)  # flushed: one more column
    logger.log_metrics({"loss": 0.25}, step=60)
    logger.finalize("success")  # appended under the same header
    header, rows = read_rows(logger.metrics_file_path)
    assert header == ["step", "loss", "val_acc", "lr", "grad_norm"]
    assert rows == [
        {"step": "10", "loss": "3.0", "val_acc": "", "lr": "", "grad_norm": ""},
        {"step": "20", "loss": "2.0", "val_acc": "", "lr": "", "grad_norm": ""},
        {"step": "25", "loss": "", "val_acc": "0.5", "lr": "", "grad_norm": ""},
        {"step": "30", "loss": "1.0", "val_acc": "", "lr": "0.1", "grad_norm": ""},
        {"step": "40", "loss": "0.5", "val_acc": "", "lr": "", "grad_norm": ""},
        {"step": "50", "loss": "", "val_acc": "", "lr": "", "grad_norm": "7"},
        {"step": "60", "loss": "0.25", "val_acc": "", "lr": "", "grad_norm": ""},
    ]
    assert not os.path.exists(logger.metrics_file_path + ".tmp")


def test_values_prefix_and_default_steps(tmp_path):
    logger = CSVLogger(tmp_path, prefix="train", flush_logs_every_n_steps=1)
    logger.log_metrics({"loss": torch.tensor(0.5), "correct": torch.tensor([3]), "done": True})
    logger.log_metrics({"loss": 0.25}, step=torch.tensor(7))
    logger.log_metrics({"loss": 0.125})
    header, rows = read_rows(logger.metrics_file_path)
    assert header == ["step", "train-loss", "train-correct", "train-done"]
    assert rows[0] == {"step": "0", "train-loss": "0.5", "train-correct": "3", "train-done": "1"}
    assert [row["step"] for row in rows] == ["0", "7", "2"]


def test_bad_metric_values_are_rejected_before_anything_is_buffered(tmp_path):
    logger = CSVLogger(tmp_path)
    with pytest.raises(ValueError, match=r"metric 'loss': a tensor of shape \(2,\)"):
        logger.log_metrics({"loss": torch.ones(2)})
    with pytest.raises(TypeError, match=r"metric 'tag': 'abc'"):
        logger.log_metrics({"ok": 1, "tag": "abc"})
    with pytest.raises(ValueError, match="'step' is reserved"):
        logger.log_metrics({"step": 3})
    with pytest.raises(TypeError, match="step must be an int or None, got str: 'last'"):
        logger.log_metrics({"a": 1}, step="last")
    logger.save()
    assert not os.path.exists(logger.metrics_file_path)


def test_hyperparameters_go_to_yaml_and_merge(tmp_path):
    logger = CSVLogger(tmp_path)
    logger.log_hyperparams({"lr": 0.1, "optim": {"name": "sgd", "betas": (0.9, 0.99)}, "path": Path("/data")})
    path = logger.hparams_file_path
    assert path == os.path.join(logger.log_dir, "hparams.yaml")
    with open(path) as f:
        assert yaml.safe_load(f) == {"lr": 0.1, "optim": {"name": "sgd", "betas": [0.9, 0.99]}, "path": "/data"}
    logger.log_hyperparams(Namespace(lr=0.2, batch=torch.tensor(16)))
    with open(path) as f:
        assert yaml.safe_load(f) == {
            "lr": 0.2,
            "optim": {"name": "sgd", "betas": [0.9, 0.99]},
            "path": "/data",
            "batch": 16,
        }
    assert logger.hparams["lr"] == 0.2
    with pytest.raises(TypeError, match="takes only `params`"):
        logger.log_hyperparams({"a": 1}, {"metric": 1})
    with pytest.raises(TypeError, match="got str"):
        logger.log_hyperparams("lr=0.1")  # type: ignore[arg-type]


def test_reusing_a_version_replaces_its_metrics_file_with_a_warning(tmp_path):
    first = CSVLogger(tmp_path, version=0, flush_logs_every_n_steps=1)
    first.log_metrics({"old": 1})
    second = CSVLogger(tmp_path, version=0, flush_logs_every_n_steps=1)
    with pytest.warns(FabricWarning, match="already exists; this run replaces it"):
        second.log_metrics({"new": 2})
    header, rows = read_rows(second.metrics_file_path)
    assert header == ["step", "new"]
    assert rows == [{"step": "0", "new": "2"}]


def test_log_graph_is_not_supported(tmp_path):
    with pytest.warns(FabricWarning, match="CSVLogger cannot record a model graph"):
        CSVLogger(tmp_path).log_graph(torch.nn.Linear(1, 1))


def test_fsspec_url():
    root = memory_url()
    logger = CSVLogger(root, name="exp", flush_logs_every_n_steps=2)
    assert logger.log_dir == f"{root}/exp/version_0"
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"a": 1})
    logger.log_metrics({"a": 2})
    logger.log_metrics({"a": 3})
    logger.log_metrics({"a": 4})  # appended
    logger.log_metrics({"b": 5})
    logger.finalize("success")  # widened
    header, rows = read_rows(f"{root}/exp/version_0/metrics.csv")
    assert header == ["step", "a", "b"]
    assert [(row["a"], row["b"]) for row in rows] == [("1", ""), ("2", ""), ("3", ""), ("4", ""), ("", "5")]
    with fsspec.open(f"{root}/exp/version_0/hparams.yaml", "r") as f:
        assert yaml.safe_load(f) == {"lr": 0.1}
    assert CSVLogger(root, name="exp").version == 1


class NoAppendFileSystem(MemoryFileSystem):
    """An in-memory store that, like some object stores, cannot open a file for appending."""

    protocol = "noappend"
    store: dict = {}
    pseudo_dirs = [""]

    def _open(self, path, mode="rb", **kwargs):
        if "a" in mode:
            raise NotImplementedError("append is not supported")
        return super()._open(path, mode, **kwargs)


def test_storage_without_append_gets_whole_file_rewrites():
    # registered by import path, as a third-party backend is (fsspec then lists it among its known protocols)
    fsspec.register_implementation("noappend", f"{__name__}.NoAppendFileSystem", clobber=True)
    root = f"noappend://csv-{uuid.uuid4().hex}"
    logger = CSVLogger(root, flush_logs_every_n_steps=1)
    with pytest.raises(NotImplementedError):
        fsspec.open(f"{root}/probe", "ab").open()
    for value in range(3):
        logger.log_metrics({"a": value})
    _, rows = read_rows(logger.metrics_file_path)
    assert [row["a"] for row in rows] == ["0", "1", "2"]


def test_nothing_is_written_off_rank_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=1)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"a": 1})
    logger.finalize("success")
    assert list(tmp_path.iterdir()) == []


def test_pickled_logger_keeps_logging(tmp_path):
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=10)
    logger.log_metrics({"a": 1})
    copy = pickle.loads(pickle.dumps(logger))
    copy.log_metrics({"a": 2})
    copy.save()
    _, rows = read_rows(copy.metrics_file_path)
    assert [row["a"] for row in rows] == ["1", "2"]


def log_from_each_rank(rank: int, world_size: int, root: str) -> None:
    logger = CSVLogger(root, version=0, flush_logs_every_n_steps=1)
    logger.log_hyperparams({"rank": rank})
    for step in range(3):
        logger.log_metrics({"rank": rank, "value": step}, step=step)
    logger.finalize("success")
    torch.distributed.barrier()


def test_only_rank_zero_writes_in_a_two_process_run(tmp_path):
    run_processes(log_from_each_rank, str(tmp_path), world_size=2)
    log_dir = tmp_path / "fabric_logs" / "version_0"
    assert sorted(p.name for p in log_dir.iterdir()) == ["hparams.yaml", "metrics.csv"]
    _, rows = read_rows(str(log_dir / "metrics.csv"))
    assert rows == [{"step": str(s), "rank": "0", "value": str(s)} for s in range(3)]
    assert yaml.safe_load((log_dir / "hparams.yaml").read_text()) == {"rank": 0}


def test_csv_text_is_plain_utf8(tmp_path):
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=1)
    logger.log_metrics({"höhe": 1.5})
    text = Path(logger.metrics_file_path).read_bytes().decode("utf-8")
    assert list(csv.reader(io.StringIO(text))) == [["step", "höhe"], ["0", "1.5"]]


def test_experiment_has_lightnings_csv_writer_api(tmp_path, monkeypatch):
    logger = CSVLogger(tmp_path, prefix="train", flush_logs_every_n_steps=100)
    experiment = logger.experiment
    assert experiment.log_dir == logger.log_dir
    assert experiment.metrics_file_path == logger.metrics_file_path
    logger.log_metrics({"loss": 1.0}, step=0)
    experiment.log_metrics({"direct": torch.tensor(2.0)}, step=1)  # names as given: no prefix
    experiment.log_hparams({"lr": 0.1})
    assert experiment.hparams == {"lr": 0.1}
    experiment.save()
    columns, rows = read_rows(experiment.metrics_file_path)
    assert columns == ["step", "train-loss", "direct"]
    assert rows == [{"step": "0", "train-loss": "1.0", "direct": ""}, {"step": "1", "train-loss": "", "direct": "2.0"}]
    assert yaml.safe_load(Path(logger.hparams_file_path).read_text()) == {"lr": 0.1}
    monkeypatch.setenv("RANK", "1")
    other = CSVLogger(tmp_path / "other", flush_logs_every_n_steps=1)
    other.experiment.log_metrics({"a": 1.0})
    other.experiment.log_hparams({"b": 2})
    other.experiment.save()
    assert not (tmp_path / "other").exists()  # other ranks write nothing
