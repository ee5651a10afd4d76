"""``CSVLogger``: metrics to ``metrics.csv`` and hyperparameters to ``hparams.yaml``, locally or on any fsspec URL."""

from __future__ import annotations

import csv
import io
from argparse import Namespace
from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from fsspec import AbstractFileSystem
from typing_extensions import override

from fabric_loggers._convert import add_prefix, check_step, convert_params, metric_scalar, yaml_value
from fabric_loggers._paths import FolderLogger, VersionedDirectory
from fabric_utils import PathLike, rank_zero_only, rank_zero_warn

STEP_COLUMN = "step"


def _csv_text(columns: list[str], rows: Sequence[Mapping[str, Any]], *, header: bool) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, restval="", lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


class MetricsFile:
    """Buffers metric rows and writes them to one CSV file, widening its header when new metric names appear."""

    def __init__(self, fs: AbstractFileSystem, path: str) -> None:
        self.fs = fs
        self.path = path
        self.columns: list[str] = [STEP_COLUMN]
        self.rows: list[dict[str, Any]] = []
        self._file_columns: list[str] | None = None  # the header on storage; None until this writer creates the file

    def add(self, row: dict[str, Any]) -> None:
        for name in row:
            if name not in self.columns:
                self.columns.append(name)
        self.rows.append(row)

    def flush(self) -> None:
        if not self.rows:
            return
        if self._file_columns is None:
            self.fs.pipe_file(self.path, _csv_text(self.columns, self.rows, header=True).encode())
        elif self._file_columns != self.columns:
            self._rewrite_with_columns()
        else:
            self._append(_csv_text(self.columns, self.rows, header=False).encode())
        self._file_columns = list(self.columns)
        self.rows = []

    def _rewrite_with_columns(self) -> None:
        """Rewrite the file under the wider header: earlier rows keep their values, new columns stay empty there."""
        earlier = list(csv.DictReader(io.StringIO(self.fs.cat_file(self.path).decode())))
        text = _csv_text(self.columns, [*earlier, *self.rows], header=True)
        staged = self.path + ".tmp"
        self.fs.pipe_file(staged, text.encode())
        self.fs.mv(staged, self.path)

    def _append(self, data: bytes) -> None:
        try:
            with self.fs.open(self.path, "ab") as f:
                f.write(data)
        except (NotImplementedError, ValueError):  # storage without append: write the whole file again
            self.fs.pipe_file(self.path, self.fs.cat_file(self.path) + data)


class CSVExperiment:
    """What ``CSVLogger.experiment`` returns: Lightning's CSV experiment-writer API over the logger's files.

    Metric names are written as given (the logger's ``prefix`` is not added); the writing happens on global rank
    zero only, like the logger's own methods.
    """

    def __init__(self, logger: CSVLogger) -> None:
        self._logger = logger

    @property
    def log_dir(self) -> str:
        return self._logger.log_dir

    @property
    def metrics_file_path(self) -> str:
        return self._logger.metrics_file_path

    @property
    def hparams(self) -> dict[str, Any]:
        return self._logger.hparams

    def log_metrics(self, metrics_dict: Mapping[str, Any], step: int | None = None) -> None:
        """Buffer one row of metrics (written by :meth:`save`, or every ``flush_logs_every_n_steps`` rows)."""
        self._logger._log_row(metrics_dict, step)

    def log_hparams(self, params: dict[str, Any] | Namespace) -> None:
        """Merge ``params`` into the hyperparameters and write ``hparams.yaml``."""
        self._logger.log_hyperparams(params)

    def save(self) -> None:
        """Write the buffered rows to ``metrics.csv``."""
        self._logger.save()


class CSVLogger(FolderLogger):
    """Log metrics to ``root_dir/name/version_N/metrics.csv`` and hyperparameters to ``hparams.yaml`` beside it.

    Args:
        root_dir: Local folder or fsspec URL (``s3://bucket/runs``, ``memory://runs``) under which runs are kept.
        name: Experiment name, a folder under ``root_dir`` (nested ones such as ``"exp/a"`` too); ``None`` or ``""``
            puts the versions in ``root_dir``. An absolute path, a URL or a ``..`` component raises ``ValueError``.
        version: ``None`` picks the next free ``version_N``; an int ``N`` means ``version_N``; a str is the folder
            (the same rule as ``name``: it stays inside).
        prefix: Prepended to every metric name, joined with ``LOGGER_JOIN_CHAR`` (``"-"``).
        flush_logs_every_n_steps: Rows are kept in memory and written once this many have been logged, at
            :meth:`save` and at :meth:`finalize`.
        storage_options: Passed to the fsspec filesystem of ``root_dir`` (credentials, endpoint, ...).

    A ``step`` column holds each row's step (by default the number of rows logged before it). A metric name seen
    for the first time adds a column: the file is rewritten once with the wider header, earlier rows keep their
    values. Reusing a version folder that already holds a ``metrics.csv`` replaces that file (with a warning).
    """

    METRICS_FILE = "metrics.csv"
    HPARAMS_FILE = "hparams.yaml"

    def __init__(
        self,
        root_dir: PathLike,
        name: str | None = "fabric_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
        *,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(flush_logs_every_n_steps, bool) or not isinstance(flush_logs_every_n_steps, int):
            raise TypeError(f"flush_logs_every_n_steps must be an int >= 1, got {flush_logs_every_n_steps!r}")
        if flush_logs_every_n_steps < 1:
            raise ValueError(f"flush_logs_every_n_steps must be >= 1, got {flush_logs_every_n_steps}")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}: {prefix!r}")
        self._dir = VersionedDirectory(root_dir, name, version, storage_options)
        self._prefix = prefix
        self._flush_every = flush_logs_every_n_steps
        self._metrics: MetricsFile | None = None
        self._rows_logged = 0
        self.hparams: dict[str, Any] = {}

    @property
    def flush_logs_every_n_steps(self) -> int:
        return self._flush_every

    @property
    def metrics_file_path(self) -> str:
        return self._dir.join(self.log_dir, self.METRICS_FILE)

    @property
    def hparams_file_path(self) -> str:
        return self._dir.join(self.log_dir, self.HPARAMS_FILE)

    @property
    def experiment(self) -> CSVExperiment:
        """The experiment writer (``log_metrics``, ``log_hparams``, ``save``, ``log_dir``, ``metrics_file_path``)."""
        return CSVExperiment(self)

    def _metrics_file(self) -> MetricsFile:
        if self._metrics is None:
            fs, path = self._dir.fs, self.metrics_file_path
            fs.makedirs(self.log_dir, exist_ok=True)
            if fs.isfile(path):
                rank_zero_warn(f"{path} already exists; this run replaces it. Pass a new `version` to keep it.")
                fs.rm_file(path)
            self._metrics = MetricsFile(fs, path)
        return self._metrics

    @override
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self._log_row(add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR), step)

    @rank_zero_only
    def _log_row(self, metrics: Mapping[str, Any], step: int | None) -> None:
        step = check_step(step)
        row = {name: metric_scalar(name, value) for name, value in metrics.items()}
        if STEP_COLUMN in row:
            raise ValueError(f"The metric name {STEP_COLUMN!r} is reserved for the step column; pass `step=` instead.")
        metrics_file = self._metrics_file()
        metrics_file.add({STEP_COLUMN: self._rows_logged if step is None else step, **row})
        self._rows_logged += 1
        if len(metrics_file.rows) >= self._flush_every:
            metrics_file.flush()

    @override
    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace | None, *args: Any, **kwargs: Any) -> None:
        """Merge ``params`` into :attr:`hparams` and write them all to ``hparams.yaml`` (nesting is kept)."""
        if args or kwargs:
            raise TypeError(f"CSVLogger.log_hyperparams takes only `params`, got extra {args or ''}{kwargs or ''}")
        self.hparams.update(convert_params(params))
        fs = self._dir.fs
        fs.makedirs(self.log_dir, exist_ok=True)
        text = yaml.safe_dump(yaml_value(self.hparams), sort_keys=False)
        fs.pipe_file(self.hparams_file_path, text.encode())

    @override
    @rank_zero_only
    def save(self) -> None:
        """Write the buffered rows to ``metrics.csv``."""
        if self._metrics is not None:
            self._metrics.flush()
