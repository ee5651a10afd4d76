"""``MLflowLogger``: metrics, parameters, tags and artifacts of one MLflow run, on a tracking server or a file store."""

from __future__ import annotations

import os
import time
from argparse import Namespace
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from typing_extensions import override

from fabric_loggers._convert import add_prefix, check_step, convert_params, flatten_params, metric_scalar, yaml_value
from fabric_loggers.base import Logger, _NoOpExperiment
from fabric_utils import OptionalDependency, PathLike, rank_zero_only, rank_zero_warn

MLFLOW = OptionalDependency("mlflow", install="pip install 'fabric-loggers[mlflow]'")

#: ``finalize(status)`` -> the run status MLflow records
RUN_STATUS = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
# MLflow's limits: parameter values up to 6000 characters, at most 1000 metrics and 100 parameters per batch request
MAX_PARAM_LENGTH = 6000
METRICS_PER_BATCH = 1000
PARAMS_PER_BATCH = 100


def _local_folder(uri: str) -> str | None:
    """The local folder of a store URI: a ``file:`` store's folder (``file:/x``, ``file:///x``, ``file:x``) or the
    folder that holds a ``sqlite:///`` database file; ``None`` for servers and other databases."""
    if uri.startswith("file:"):
        path = uri[len("file:") :]
        return os.path.abspath(path[2:] if path.startswith("//") else path)
    if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        return os.path.dirname(os.path.abspath(uri[len("sqlite:///") :]))
    return None


class MLflowLogger(Logger):
    """Log to one MLflow run: metrics with their steps, hyperparameters as parameters, tags, and artifacts.

    Args:
        experiment_name: The MLflow experiment; created on first use when it does not exist.
        run_name: The run's display name (MLflow picks one when ``None``).
        tracking_uri: Where runs are tracked: a server (``http://127.0.0.1:5000``), a database
            (``sqlite:///runs/mlflow.db``), or a file store (``file:./mlruns``; recent MLflow 3 releases refuse it
            unless ``MLFLOW_ALLOW_FILE_STORE=true``). Default: the ``MLFLOW_TRACKING_URI`` environment variable, else a
            sqlite database in ``save_dir``.
        tags: Tags set on a new run (values become text), besides MLflow's own (user, source, git commit).
        save_dir: The folder used when neither ``tracking_uri`` nor ``MLFLOW_TRACKING_URI`` is set: the runs go to
            ``save_dir/mlflow.db`` and the artifacts of new experiments to ``save_dir/artifacts``.
        prefix: Prepended to every metric name, joined with ``LOGGER_JOIN_CHAR`` (``"-"``).
        artifact_location: Where a new experiment stores its artifacts (the tracking store's default when ``None``).
        run_id: Resume this existing run: it is set back to ``RUNNING``, and metrics, parameters and artifacts are
            added to it (``experiment_name``, ``run_name`` and ``tags`` are then not used).

    Nothing is contacted before the first use; then the run is created (or resumed) on global rank zero, and every
    call is sent at once (nothing is buffered). Other ranks log nothing and see ``experiment`` as a stand-in whose
    methods do nothing. As in Lightning, :attr:`name` is the experiment id and :attr:`version` the run id.
    """

    def __init__(
        self,
        experiment_name: str = "fabric_logs",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: Mapping[str, Any] | None = None,
        save_dir: PathLike | None = "./mlruns",
        prefix: str = "",
        artifact_location: str | None = None,
        run_id: str | None = None,
    ) -> None:
        MLFLOW.require("MLflowLogger")  # a missing library is reported here, not at the first log call
        for what, value in (("experiment_name", experiment_name), ("prefix", prefix)):
            if not isinstance(value, str):
                raise TypeError(f"{what} must be a str, got {type(value).__name__}: {value!r}")
        if not experiment_name:
            raise ValueError("experiment_name must not be empty")
        for what, optional in (("run_name", run_name), ("run_id", run_id), ("artifact_location", artifact_location)):
            if optional is not None and not isinstance(optional, str):
                raise TypeError(f"{what} must be a str or None, got {type(optional).__name__}: {optional!r}")
        if tracking_uri is None:
            tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
        if tracking_uri is None:
            if save_dir is None:
                raise ValueError("Pass `tracking_uri` or `save_dir` (or set MLFLOW_TRACKING_URI): both are None.")
            folder = os.path.abspath(os.path.expanduser(os.fspath(save_dir)))
            tracking_uri = f"sqlite:///{folder}/mlflow.db"
            if artifact_location is None:
                artifact_location = os.path.join(folder, "artifacts")
        self._tracking_uri = tracking_uri
        self._experiment_name = experiment_name
        self._run_name = run_name
        self._tags = {str(key): str(yaml_value(value)) for key, value in (tags or {}).items()}
        self._prefix = prefix
        self._artifact_location = artifact_location
        self._run_id = run_id
        self._experiment_id: str | None = None
        self._artifact_uri: str | None = None
        self._client: Any | None = None
        self._started = False  # the run exists and is RUNNING (this process created or resumed it)

    @property
    def tracking_uri(self) -> str:
        return self._tracking_uri

    @property
    def experiment(self) -> Any:
        """The ``mlflow.tracking.MlflowClient`` of the run (created or resumed on first use); a stand-in whose
        methods do nothing on other ranks. Its methods take :attr:`run_id` as their first argument."""
        if rank_zero_only.rank != 0:
            return _NoOpExperiment()
        if self._client is None:
            folder = _local_folder(self._tracking_uri)
            if folder is not None and self._tracking_uri.startswith("sqlite:"):
                os.makedirs(folder, exist_ok=True)  # sqlite creates the database file, not its folder
            self._client = MLFLOW.require("MLflowLogger").tracking.MlflowClient(self._tracking_uri)
        if not self._started:
            self._start_run(self._client)
            self._started = True
        return self._client

    def _start_run(self, client: Any) -> None:
        if self._run_id is not None:
            run = client.get_run(self._run_id)
            self._experiment_id = run.info.experiment_id
            self._artifact_uri = run.info.artifact_uri
            if run.info.status != "RUNNING":
                client.update_run(self._run_id, status="RUNNING")
            return
        experiment = client.get_experiment_by_name(self._experiment_name)
        if experiment is not None:
            self._experiment_id = experiment.experiment_id
        else:
            self._experiment_id = self._create_experiment(client)
        from mlflow.tracking.context.registry import resolve_tags

        tags = resolve_tags(self._tags)
        run = client.create_run(self._experiment_id, run_name=self._run_name, tags=tags)
        self._run_id = run.info.run_id
        self._artifact_uri = run.info.artifact_uri

    def _create_experiment(self, client: Any) -> str:
        from mlflow.exceptions import MlflowException

        try:
            return str(client.create_experiment(self._experiment_name, artifact_location=self._artifact_location))
        except MlflowException:  # another process created it meanwhile
            experiment = client.get_experiment_by_name(self._experiment_name)
            if experiment is None:
                raise
            return str(experiment.experiment_id)

    @property
    def run_id(self) -> str | None:
        """The run's id (the run is created on first access); ``None`` on other ranks."""
        if self._run_id is None:
            self.experiment  # noqa: B018 (creates the run)
        return self._run_id

    @property
    def experiment_id(self) -> str | None:
        """The experiment's id (the run is created, or looked up, on first access); ``None`` on other ranks."""
        if self._experiment_id is None:
            self.experiment  # noqa: B018 (creates the run)
        return self._experiment_id

    @property
    @override
    def name(self) -> str | None:
        """The experiment id, as Lightning's ``MLFlowLogger`` gives (a file store keeps runs in that folder)."""
        return self.experiment_id

    @property
    @override
    def version(self) -> str | None:
        """The run id."""
        return self.run_id

    @property
    @override
    def root_dir(self) -> str | None:
        """The local folder of the store (``save_dir`` by default, a ``file:`` store's folder, the folder of a
        ``sqlite:///`` database); ``None`` for a server or another database."""
        return _local_folder(self._tracking_uri)

    @property
    @override
    def log_dir(self) -> str | None:
        """The local folder of the run's artifacts (what :meth:`log_artifact` fills) when they are stored on this
        machine; ``None`` when a server or a remote store keeps them, and on other ranks."""
        if self._artifact_uri is None:
            self.experiment  # noqa: B018 (creates the run)
        uri = self._artifact_uri
        if uri is None:
            return None
        if uri.startswith("file:"):
            return _local_folder(uri)
        scheme = urlparse(uri).scheme
        # a scheme (s3://, mlflow-artifacts:/) means remote; a one-letter one is a Windows drive
        return None if len(scheme) > 1 else os.path.abspath(uri)

    @override
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Send the metrics in one batch request, at ``step`` (0 when ``None``) and the current time."""
        from mlflow.entities import Metric

        step = check_step(step)
        prefixed = add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        values = {name: float(metric_scalar(name, value)) for name, value in prefixed.items()}
        timestamp = int(time.time() * 1000)
        entries = [Metric(name, value, timestamp, step or 0) for name, value in values.items()]
        client = self.experiment
        for start in range(0, len(entries), METRICS_PER_BATCH):
            client.log_batch(self._run_id, metrics=entries[start : start + METRICS_PER_BATCH])

    @override
    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace | None, *args: Any, **kwargs: Any) -> None:
        """Record ``params`` as MLflow parameters: nested dicts flattened with ``/`` (``optim/lr``), values as text.

        MLflow keeps a parameter's first value: logging the same name again with another value raises its error.
        Values longer than MLflow's 6000 characters are cut, with a warning.
        """
        if args or kwargs:
            raise TypeError(f"MLflowLogger.log_hyperparams takes only `params`, got extra {args or ''}{kwargs or ''}")
        from mlflow.entities import Param

        entries = []
        for name, value in flatten_params(convert_params(params)).items():
            text = str(yaml_value(value))
            if len(text) > MAX_PARAM_LENGTH:
                rank_zero_warn(f"Parameter {name!r} is cut to MLflow's limit of {MAX_PARAM_LENGTH} characters.")
                text = text[:MAX_PARAM_LENGTH]
            entries.append(Param(name, text))
        client = self.experiment
        for start in range(0, len(entries), PARAMS_PER_BATCH):
            client.log_batch(self._run_id, params=entries[start : start + PARAMS_PER_BATCH])

    @rank_zero_only
    def log_artifact(self, local_path: PathLike, artifact_path: str | None = None) -> None:
        """Upload a file, or a folder with everything in it (a sharded checkpoint), to the run's artifacts: under
        ``artifact_path`` when given, else at the top. A folder keeps its name (``ckpt/`` becomes ``ckpt/...``)."""
        path = os.fspath(local_path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"log_artifact: {path!r} does not exist")
        client = self.experiment
        if os.path.isdir(path):
            name = os.path.basename(os.path.normpath(path))
            target = f"{artifact_path.rstrip('/')}/{name}" if artifact_path else name
            client.log_artifacts(self._run_id, path, target)
        else:
            client.log_artifact(self._run_id, path, artifact_path)

    @override
    @rank_zero_only
    def finalize(self, status: str) -> None:
        """End the run with MLflow's status for ``status``: ``"success"``/``"finished"`` -> ``FINISHED``,
        ``"failed"`` -> ``FAILED``, ``"killed"`` -> ``KILLED``. A logger that never logged creates no run."""
        if status not in RUN_STATUS:
            raise ValueError(f"Unknown status {status!r}; expected one of {sorted(RUN_STATUS)}")
        if not self._started or self._client is None:
            return
        self._client.set_terminated(self._run_id, status=RUN_STATUS[status])
        self._started = False  # a later call resumes the run

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the client; a copy on rank zero resumes the same run when it logs."""
        state = self.__dict__.copy()
        state.update(_client=None, _started=False)
        return state
