"""``TensorBoardLogger``: TensorBoard event files written with torch's ``SummaryWriter`` (needs ``tensorboard``) or
``tensorboardX``, locally or on any fsspec URL."""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from argparse import Namespace
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from torch import nn
from typing_extensions import override

from fabric_loggers._convert import (
    add_prefix,
    check_step,
    convert_params,
    flatten_params,
    metric_scalar,
    tensorboard_value,
)
from fabric_loggers._paths import FolderLogger, VersionedDirectory, check_folder
from fabric_loggers.base import _NoOpExperiment
from fabric_utils import (
    TENSORBOARD,
    TENSORBOARDX,
    MissingDependencyError,
    PathLike,
    PossibleUserWarning,
    move_data_to_device,
    rank_zero_only,
    rank_zero_warn,
)

HP_METRIC = "hp_metric"
_RESERVED_WRITER_ARGS = ("logdir", "log_dir")


def _check_sub_dir(sub_dir: PathLike | None) -> str | None:
    """``sub_dir`` with ``~`` and ``$VARS`` expanded; it must stay inside the version folder."""
    if not sub_dir:
        return None
    if not isinstance(sub_dir, (str, os.PathLike)):
        raise TypeError(f"sub_dir must be a str, an os.PathLike or None, got {type(sub_dir).__name__}: {sub_dir!r}")
    return check_folder("sub_dir", os.path.expandvars(os.path.expanduser(os.fspath(sub_dir))))


def _writer_backend() -> SimpleNamespace:
    """The writer class and ``hparams`` summary function: torch's (``torch.utils.tensorboard``) when the
    ``tensorboard`` package is installed, else tensorboardX's, else an error naming both."""
    if TENSORBOARD:
        from torch.utils import tensorboard

        return SimpleNamespace(writer=tensorboard.SummaryWriter, hparams=tensorboard.summary.hparams)
    if TENSORBOARDX:
        tensorboardx = TENSORBOARDX.require("TensorBoardLogger")
        return SimpleNamespace(writer=_tensorboardx_writer(tensorboardx), hparams=tensorboardx.summary.hparams)
    raise MissingDependencyError(
        "TensorBoardLogger requires `tensorboard` (preferred: torch's SummaryWriter) or `tensorboardX`, but neither"
        f" is installed. Run: {TENSORBOARDX.install}"
    )


_TENSORBOARDX_WRITERS: dict[type, type] = {}


def _tensorboardx_writer(tensorboardx: Any) -> type:
    """tensorboardX's ``SummaryWriter`` with torch's ``log_dir`` attribute as well (it has only ``logdir``)."""
    base = tensorboardx.SummaryWriter
    if base not in _TENSORBOARDX_WRITERS:
        _TENSORBOARDX_WRITERS[base] = type("SummaryWriter", (base,), {"log_dir": property(lambda self: self.logdir)})
    return _TENSORBOARDX_WRITERS[base]


class TensorBoardLogger(FolderLogger):
    """Log to TensorBoard event files in ``root_dir/name/version_N[/sub_dir]``.

    The writer is torch's ``torch.utils.tensorboard.SummaryWriter`` when the ``tensorboard`` package is installed
    (as in Lightning), else ``tensorboardX.SummaryWriter``; TensorBoard reads the files of either.

    Args:
        root_dir, name, version: where the run's folder ``root_dir/name/version_N`` is, as for :class:`CSVLogger`:
            ``root_dir`` a local folder or an fsspec URL, ``name`` and a str ``version`` folders that stay inside it,
            ``version=None`` the next free ``version_N``.
        default_hp_metric: :meth:`log_hyperparams` without ``metrics`` records ``hp_metric = -1`` so TensorBoard's
            HParams tab shows the run (log the real ``hp_metric`` later to fill it in).
        prefix: Prepended to every metric name, joined with ``LOGGER_JOIN_CHAR`` (``"-"``).
        sub_dir: A folder inside the version folder to write to (``~`` and ``$VARS`` are expanded; the result must
            stay inside the version folder).
        storage_options: Passed to the fsspec filesystem of a remote ``root_dir``.
        **kwargs: Passed to the ``SummaryWriter`` (``max_queue``, ``flush_secs``, ``filename_suffix``...).

    Remote URLs: the writer writes into a local staging folder, and :meth:`save` and :meth:`finalize` upload the
    event files to ``log_dir`` (only files that changed since the last upload). :meth:`save` closes the current
    event file so that everything logged so far is on storage; the next log call starts a new file in the same
    folder, which TensorBoard reads as one run.
    """

    def __init__(
        self,
        root_dir: PathLike,
        name: str | None = "fabric_logs",
        version: int | str | None = None,
        default_hp_metric: bool = True,
        prefix: str = "",
        sub_dir: PathLike | None = None,
        *,
        storage_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        _writer_backend()  # a missing library is reported here, not at the first log call
        reserved = [key for key in _RESERVED_WRITER_ARGS if key in kwargs]
        if reserved:
            raise TypeError(f"TensorBoardLogger sets the writer's folder itself; drop {reserved} and use root_dir.")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}: {prefix!r}")
        self._dir = VersionedDirectory(root_dir, name, version, storage_options)
        self._sub_dir = _check_sub_dir(sub_dir)
        self._default_hp_metric = bool(default_hp_metric)
        self._prefix = prefix
        self._writer_kwargs = kwargs
        self._experiment: Any | None = None
        self._writers_opened = 0
        self._staging: str | None = None  # local folder mirrored to a remote log_dir
        self._uploaded: dict[str, tuple[int, int]] = {}  # staged file -> (size, mtime) at its last upload
        self.hparams: dict[str, Any] = {}

    @property
    @override
    def log_dir(self) -> str:
        log_dir = self._dir.log_dir
        return self._dir.join(log_dir, self._sub_dir) if self._sub_dir else log_dir

    @property
    def sub_dir(self) -> str | None:
        return self._sub_dir

    @property
    def experiment(self) -> Any:
        """The ``SummaryWriter`` (created on first use); a do-nothing stand-in on other ranks.

        Both backends offer ``log_dir``, ``add_scalar``, ``add_scalars``, ``add_histogram``, ``add_image``,
        ``add_text``, ``add_graph``, ``flush`` and ``close``. With a remote ``root_dir``, ``log_dir`` is the local
        staging folder that :meth:`save` uploads.

        :meth:`save` and :meth:`finalize` close the writer and the next use opens a new one: read this property
        each time rather than keeping the writer across a save.
        """
        if rank_zero_only.rank != 0:
            return _NoOpExperiment()
        if self._experiment is None:
            writer_class = _writer_backend().writer
            kwargs = dict(self._writer_kwargs)
            suffix = str(kwargs.pop("filename_suffix", ""))
            if self._writers_opened:  # another file in a folder that has one from this logger (or its pickled copy)
                suffix = f".{os.getpid()}-{self._writers_opened}{suffix}"
            self._experiment = writer_class(self._writer_dir(), filename_suffix=suffix, **kwargs)
            self._writers_opened += 1
        return self._experiment

    def _writer_dir(self) -> str:
        if not self._dir.remote:
            return self.log_dir
        if self._staging is None:
            self._dir.fs.makedirs(self.log_dir, exist_ok=True)  # claims the version for loggers created later
            self._staging = tempfile.mkdtemp(prefix="fabric-tensorboard-")
        return self._staging

    @override
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Scalars with ``add_scalar``; a dict value (name -> scalar) is drawn as one chart with ``add_scalars``."""
        self._write_scalars(add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR), check_step(step))

    def _write_scalars(self, metrics: Mapping[str, Any], step: int | None) -> None:
        scalars: dict[str, Any] = {}
        for name, value in metrics.items():
            if isinstance(value, Mapping):
                scalars[name] = {str(k): metric_scalar(f"{name}/{k}", v) for k, v in value.items()}
            else:
                scalars[name] = metric_scalar(name, value)
        writer = self.experiment
        for name, value in scalars.items():
            if isinstance(value, dict):
                writer.add_scalars(name, value, step)
            else:
                writer.add_scalar(name, value, step)

    @override
    @rank_zero_only
    def log_hyperparams(
        self,
        params: dict[str, Any] | Namespace | None,
        metrics: Mapping[str, Any] | float | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        """Record hyperparameters for TensorBoard's HParams tab, linked to ``metrics`` (logged at step 0).

        Nested params are flattened with ``/``; values TensorBoard cannot show become text. ``metrics`` may be a
        dict or a single number (recorded as ``hp_metric``); without it, ``hp_metric = -1`` is recorded when
        ``default_hp_metric`` is set. TensorBoard shows the first hyperparameter record of a run, so log them all
        in one call (:attr:`hparams` keeps the union of every call).
        """
        if args or kwargs:
            raise TypeError(f"log_hyperparams takes `params` and `metrics`, got extra {args or ''}{kwargs or ''}")
        self.hparams.update(flatten_params(convert_params(params)))
        if metrics is None:
            metrics = {HP_METRIC: -1} if self._default_hp_metric else {}
        elif not isinstance(metrics, Mapping):
            metrics = {HP_METRIC: metrics}
        prefixed = add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        scalars = {name: metric_scalar(name, value) for name, value in prefixed.items()}
        hparam_dict = {name: tensorboard_value(value) for name, value in self.hparams.items()}
        experiment, session_start, session_end = _writer_backend().hparams(hparam_dict, scalars)
        self._write_scalars(scalars, 0)
        writer = self.experiment
        for proto in (experiment, session_start, session_end):
            writer.file_writer.add_summary(proto)

    @override
    @rank_zero_only
    def log_graph(self, model: nn.Module, input_array: Any | None = None) -> None:
        """Trace ``model`` on ``input_array`` (default: ``model.example_input_array``) and record its graph.

        Needs the ``tensorboard`` package (both writers draw graphs with torch's TensorBoard support).
        """
        TENSORBOARD.require("TensorBoardLogger.log_graph")
        example = input_array if input_array is not None else getattr(model, "example_input_array", None)
        if example is None:
            rank_zero_warn(
                "Could not log the computational graph: pass `input_array` to `log_graph` or set "
                "`model.example_input_array`.",
                category=PossibleUserWarning,
            )
            return
        parameter = next(iter(model.parameters()), None)
        if parameter is not None:
            example = move_data_to_device(example, parameter.device)
        self.experiment.add_graph(model, example)

    @override
    @rank_zero_only
    def save(self) -> None:
        """Close the current event file (everything logged so far is then on storage) and upload it if remote."""
        if self._experiment is not None:
            self._experiment.close()
            self._experiment = None
        if self._staging is not None:
            self._upload()

    @override
    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
            self._uploaded.clear()

    def _upload(self) -> None:
        assert self._staging is not None
        fs, log_dir = self._dir.fs, self.log_dir
        for folder, _, files in os.walk(self._staging):
            for file in files:
                local = os.path.join(folder, file)
                relative = os.path.relpath(local, self._staging)
                stat = os.stat(local)
                if self._uploaded.get(relative) == (stat.st_size, stat.st_mtime_ns):
                    continue
                remote = posixpath.join(log_dir, *relative.split(os.sep))
                fs.makedirs(posixpath.dirname(remote), exist_ok=True)
                fs.put_file(local, remote)
                self._uploaded[relative] = (stat.st_size, stat.st_mtime_ns)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the open writer and the staging folder; a copy opens its own when it logs."""
        state = self.__dict__.copy()
        state.update(_experiment=None, _staging=None, _uploaded={})
        return state
