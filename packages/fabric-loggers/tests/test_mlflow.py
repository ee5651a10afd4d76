"""``MLflowLogger`` against a real MLflow tracking server on 127.0.0.1 and a local file store, read back with
MLflow's own ``MlflowClient``."""

import gc
import os
import pickle
import re
import uuid
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from fabric_loggers import MLflowLogger
from fabric_loggers.mlflow_logs import MLFLOW
from fabric_testing import run_processes
from fabric_utils import MissingDependencyError

needs_mlflow = pytest.mark.skipif(
    not MLFLOW, reason="mlflow is not installed: pip install 'fabric-loggers[mlflow]' (the test extra has it)"
)


@pytest.fixture(autouse=True)
def quiet_mlflow(monkeypatch):
    """No usage data from the clients, no tracking URI from the caller's environment, and no download progress bars
    (each starts tqdm's monitor thread, which the hygiene check then reports as leaked)."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(autouse=True)
def release_artifact_pools():
    """MLflow keeps each run's artifact repository, with its upload thread pool, for the life of the process (a
    cache of up to 1024 runs), and a download's repository, in a reference cycle, until the garbage collector runs.
    The hygiene check would report those idle threads as leaked: end them after each test (before that check)."""
    yield
    if not MLFLOW:
        return
    from mlflow.tracking._tracking_service import utils

    while utils._artifact_repos_cache:
        _, repository = utils._artifact_repos_cache.popitem()
        repository.thread_pool.shutdown(wait=True)
    gc.collect()  # a collected pool's threads end by themselves


@pytest.fixture
def file_store(tmp_path, monkeypatch) -> str:
    """A ``file:`` tracking URI in tmp_path; MLflow 3.7+ refuses file stores without MLFLOW_ALLOW_FILE_STORE."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return f"file:{tmp_path / 'mlruns'}"


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def test_a_missing_mlflow_names_the_extra(hide_module):
    hide_module("mlflow")
    with pytest.raises(MissingDependencyError, match=re.escape("pip install 'fabric-loggers[mlflow]'")):
        MLflowLogger()


@needs_mlflow
def test_metrics_params_tags_and_a_checkpoint_on_a_server(mlflow_server, tmp_path):
    name = unique("exp")
    logger = MLflowLogger(
        experiment_name=name, run_name="first", tracking_uri=mlflow_server.url, tags={"team": "fabric", "seed": 3}
    )
    logger.log_hyperparams(
        {"lr": 0.1, "optim": {"name": "adam", "betas": (0.9, 0.99), "sched": {"warmup": 5}}, "args": Namespace(a=1)}
    )
    logger.log_metrics({"loss": torch.tensor(1.5), "acc": 0.5}, step=0)
    logger.log_metrics({"loss": 1.0}, step=1)
    logger.log_metrics({"loss": torch.tensor([0.5])}, step=2)
    checkpoint = tmp_path / "last.ckpt"
    torch.save({"w": torch.arange(3)}, checkpoint)
    logger.log_artifact(checkpoint, "checkpoints")
    logger.finalize("success")

    client = client_for(mlflow_server.url)
    run = client.get_run(logger.run_id)
    assert logger.version == run.info.run_id
    assert logger.name == run.info.experiment_id
    assert client.get_experiment(run.info.experiment_id).name == name
    assert run.info.status == "FINISHED"
    assert run.data.params == {
        "lr": "0.1",
        "optim/name": "adam",
        "optim/betas": "[0.9, 0.99]",
        "optim/sched/warmup": "5",
        "args/a": "1",
    }
    assert run.data.tags["team"] == "fabric"
    assert run.data.tags["seed"] == "3"
    assert run.data.tags["mlflow.runName"] == "first"
    assert "mlflow.user" in run.data.tags  # MLflow's own context tags are added
    assert history(client, logger.run_id, "loss") == [(0, 1.5), (1, 1.0), (2, 0.5)]
    assert history(client, logger.run_id, "acc") == [(0, 0.5)]
    assert [a.path for a in client.list_artifacts(logger.run_id, "checkpoints")] == ["checkpoints/last.ckpt"]
    downloaded = client.download_artifacts(logger.run_id, "checkpoints/last.ckpt", str(tmp_path / "down"))
    assert torch.equal(torch.load(downloaded)["w"], torch.arange(3))
    # the server stored the upload in its own artifact folder
    assert [p.name for p in mlflow_server.artifacts.rglob("last.ckpt")] == ["last.ckpt"]
    assert logger.root_dir is None
    assert logger.log_dir is None


@needs_mlflow
def test_resume_by_run_id(mlflow_server):
    name = unique("resume")
    first = MLflowLogger(experiment_name=name, tracking_uri=mlflow_server.url)
    first.log_hyperparams({"lr": 0.1})
    first.log_metrics({"loss": 3.0}, step=0)
    first.log_metrics({"loss": 2.0}, step=1)
    first.finalize("failed")
    client = client_for(mlflow_server.url)
    assert client.get_run(first.run_id).info.status == "FAILED"

    second = MLflowLogger(tracking_uri=mlflow_server.url, run_id=first.run_id)
    second.log_hyperparams({"lr": 0.1, "epochs": 4})  # the same value again is fine; new names are added
    second.log_metrics({"loss": 1.0}, step=2)
    assert client.get_run(first.run_id).info.status == "RUNNING"
    second.finalize("success")

    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.1", "epochs": "4"}
    assert history(client, first.run_id, "loss") == [(0, 3.0), (1, 2.0), (2, 1.0)]
    assert second.name == first.name
    assert len(client.search_runs([first.experiment_id])) == 1


@needs_mlflow
def test_a_changed_parameter_value_raises_mlflows_error(mlflow_server):
    from mlflow.exceptions import MlflowException

    logger = MLflowLogger(experiment_name=unique("params"), tracking_uri=mlflow_server.url)
    logger.log_hyperparams({"lr": 0.1})
    with pytest.raises(MlflowException, match="lr"):
        logger.log_hyperparams({"lr": 0.2})
    logger.finalize("failed")


def log_from_each_rank(rank: int, world_size: int, uri: str, name: str) -> str | None:
    logger = MLflowLogger(experiment_name=name, tracking_uri=uri)
    logger.log_hyperparams({"rank": rank})
    for step in range(3):
        logger.log_metrics({"rank": rank, "value": step}, step=step)
    logger.finalize("success")
    torch.distributed.barrier()
    return logger.run_id


@needs_mlflow
def test_only_rank_zero_logs_in_a_two_process_run(mlflow_server):
    name = unique("ddp")
    run_ids = run_processes(log_from_each_rank, mlflow_server.url, name, world_size=2)
    assert run_ids[1] is None
    client = client_for(mlflow_server.url)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    assert [run.info.run_id for run in runs] == [run_ids[0]]
    assert runs[0].data.params == {"rank": "0"}
    assert history(client, run_ids[0], "rank") == [(0, 0.0), (1, 0.0), (2, 0.0)]
    assert history(client, run_ids[0], "value") == [(0, 0.0), (1, 1.0), (2, 2.0)]


@needs_mlflow
def test_file_store_without_a_server(file_store, tmp_path):
    logger = MLflowLogger(experiment_name="local", tracking_uri=file_store, prefix="train")
    store = tmp_path / "mlruns"
    assert logger.root_dir == str(store)
    assert not store.exists()  # nothing is written before the first use
    logger.log_hyperparams({"model": {"width": 8}})
    logger.log_metrics({"loss": 0.25}, step=7)
    folder = tmp_path / "sharded.ckpt"
    folder.mkdir()
    (folder / "rank0.pt").write_bytes(b"zero")
    (folder / "meta.json").write_text("{}")
    logger.log_artifact(folder, "checkpoints")
    logger.log_artifact(folder)
    logger.finalize("success")

    client = client_for(file_store)
    run = client.get_run(logger.run_id)
    assert run.data.params == {"model/width": "8"}
    assert history(client, logger.run_id, "train-loss") == [(7, 0.25)]
    assert run.info.status == "FINISHED"
    listed = sorted(a.path for a in client.list_artifacts(logger.run_id, "checkpoints/sharded.ckpt"))
    assert listed == ["checkpoints/sharded.ckpt/meta.json", "checkpoints/sharded.ckpt/rank0.pt"]
    assert [a.path for a in client.list_artifacts(logger.run_id) if a.is_dir] == ["checkpoints", "sharded.ckpt"]
    # the store's own layout: <root>/<experiment id>/<run id>/artifacts
    assert logger.log_dir == str(store / logger.name / logger.version / "artifacts")
    assert (Path(logger.log_dir) / "checkpoints" / "sharded.ckpt" / "rank0.pt").read_bytes() == b"zero"


@needs_mlflow
def test_by_default_a_sqlite_database_and_artifacts_in_save_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    logger = MLflowLogger()
    save_dir = tmp_path / "mlruns"
    assert logger.tracking_uri == f"sqlite:///{save_dir}/mlflow.db"
    assert logger.root_dir == str(save_dir)
    assert not save_dir.exists()  # nothing is written before the first use
    logger.log_metrics({"loss": 0.5}, step=1)
    logger.log_artifact(__file__)
    logger.finalize("success")
    assert (save_dir / "mlflow.db").is_file()
    assert logger.log_dir.startswith(str(save_dir / "artifacts"))
    assert os.listdir(logger.log_dir) == [os.path.basename(__file__)]
    client = client_for(logger.tracking_uri)
    assert client.get_experiment(logger.name).name == "fabric_logs"
    assert history(client, logger.run_id, "loss") == [(1, 0.5)]


@needs_mlflow
def test_the_tracking_uri_comes_from_the_environment(file_store, tmp_path, monkeypatch):
    uri = file_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    logger = MLflowLogger(save_dir=tmp_path / "unused")
    assert logger.tracking_uri == uri
    logger.log_metrics({"a": 1.0})
    logger.finalize("success")
    assert history(client_for(uri), logger.run_id, "a") == [(0, 1.0)]
    assert not (tmp_path / "unused").exists()


@needs_mlflow
def test_a_pickled_logger_keeps_logging_to_the_same_run(file_store):
    logger = MLflowLogger(tracking_uri=file_store)
    logger.log_metrics({"a": 1.0}, step=0)
    copy = pickle.loads(pickle.dumps(logger))
    copy.log_metrics({"a": 2.0}, step=1)
    copy.finalize("success")
    assert copy.run_id == logger.run_id
    assert history(client_for(file_store), logger.run_id, "a") == [(0, 1.0), (1, 2.0)]


@needs_mlflow
def test_nothing_is_logged_off_rank_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    logger = MLflowLogger(save_dir=tmp_path / "mlruns")
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"a": 1.0})
    logger.log_artifact(__file__)
    logger.experiment.set_tag("anything", "x")  # the stand-in accepts every call
    logger.finalize("success")
    assert logger.run_id is None
    assert logger.name is None
    assert list(tmp_path.iterdir()) == []


@needs_mlflow
def test_bad_inputs(file_store, tmp_path):
    logger = MLflowLogger(tracking_uri=file_store)
    with pytest.raises(TypeError, match="'loss'"):
        logger.log_metrics({"loss": "low"})
    with pytest.raises(TypeError, match="step must be an int"):
        logger.log_metrics({"loss": 1.0}, step=1.5)
    with pytest.raises(TypeError, match="takes only `params`"):
        logger.log_hyperparams({"a": 1}, {"metric": 1})
    with pytest.raises(FileNotFoundError, match=r"nowhere\.ckpt"):
        logger.log_artifact(tmp_path / "nowhere.ckpt")
    with pytest.raises(ValueError, match=r"Unknown status 'done'; expected one of \['failed', 'finished'"):
        logger.finalize("done")
    with pytest.raises(TypeError, match="experiment_name must be a str"):
        MLflowLogger(experiment_name=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Pass `tracking_uri` or `save_dir`"):
        MLflowLogger(save_dir=None)


@needs_mlflow
def test_a_long_parameter_is_cut_with_a_warning(file_store):
    from fabric_utils import FabricWarning

    logger = MLflowLogger(tracking_uri=file_store)
    with pytest.warns(FabricWarning, match="'text' is cut to MLflow's limit of 6000"):
        logger.log_hyperparams({"text": "x" * 7000})
    logger.finalize("success")
    assert client_for(file_store).get_run(logger.run_id).data.params["text"] == "x" * 6000


@needs_mlflow
def test_a_logger_that_never_logged_creates_no_run(tmp_path):
    logger = MLflowLogger(save_dir=tmp_path / "mlruns")
    logger.save()
    logger.finalize("success")
    assert not Path(tmp_path / "mlruns").exists()
