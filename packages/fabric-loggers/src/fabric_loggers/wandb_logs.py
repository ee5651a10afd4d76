"""``WandbLogger``: metrics, config and summary of one Weights & Biases run, online or offline."""

from __future__ import annotations

import os
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from typing_extensions import override

from fabric_loggers._convert import add_prefix, check_step, convert_params, metric_scalar, yaml_value
from fabric_loggers.base import Logger, _NoOpExperiment
from fabric_utils import OptionalDependency, PathLike, rank_zero_only, rank_zero_warn

WANDB = OptionalDependency("wandb", install="pip install 'fabric-loggers[wandb]'")

#: the metric that holds ``log_metrics``' step, the x-axis of every chart (the name Lightning's WandbLogger uses)
STEP_METRIC = "trainer/global_step"
_SUCCESS = ("success", "finished")


class WandbLogger(Logger):
    """Log to one W&B run: metrics (with their step), hyperparameters as the run's config, and its summary.

    Args:
        name: The run's display name (W&B picks one when ``None``).
        save_dir: The folder under which W&B keeps its local files (``save_dir/wandb/<run folder>``).
        version: The run id; the same as ``id`` (Lightning accepts both).
        offline: Write the run only to local files (``mode="offline"``); upload it later with ``wandb sync``.
        dir: Another name for ``save_dir``; it wins when both are given.
        id: The run id: a new run gets it, an existing run with this id is resumed (``resume="allow"``).
        project: The W&B project. Default: the ``WANDB_PROJECT`` environment variable, else ``"fabric_logs"``.
        prefix: Prepended to every metric name, joined with ``LOGGER_JOIN_CHAR`` (``"-"``).
        **kwargs: Passed to ``wandb.init`` (``entity``, ``tags``, ``group``, ``notes``, ``config``, ``resume``,
            ``mode``, ``job_type``, ``settings``...); they win over the arguments above.

    The run starts on first use on global rank zero; other ranks log nothing and see ``experiment`` as a stand-in
    whose methods do nothing. When a run is already active in the process (``wandb.init`` called by the script, a
    sweep agent), the logger uses it, with a warning. The step of :meth:`log_metrics` is recorded as the metric
    ``trainer/global_step``, which every chart uses as its x-axis: steps may then repeat or go back (validation
    metrics per epoch next to training metrics per batch), which W&B's own ``step=`` would drop.
    """

    STEP_METRIC = STEP_METRIC

    def __init__(
        self,
        name: str | None = None,
        save_dir: PathLike = ".",
        version: str | None = None,
        offline: bool = False,
        dir: PathLike | None = None,  # Lightning's and wandb's name
        id: str | None = None,  # Lightning's and wandb's name
        project: str | None = None,
        prefix: str = "",
        **kwargs: Any,
    ) -> None:
        WANDB.require("WandbLogger")  # a missing library is reported here, not at the first log call
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}: {prefix!r}")
        if version is not None and id is not None and version != id:
            raise ValueError(f"version={version!r} and id={id!r} name different runs; pass one of them.")
        folder = dir if dir is not None else save_dir
        if not isinstance(folder, (str, os.PathLike)):
            raise TypeError(f"save_dir must be a str or os.PathLike, got {type(folder).__name__}: {folder!r}")
        self._save_dir = os.fspath(folder)
        self._init_args: dict[str, Any] = {
            "name": name,
            "project": project or os.environ.get("WANDB_PROJECT", "fabric_logs"),
            "dir": self._save_dir,
            "id": version if version is not None else id,
            "resume": "allow",
        }
        if offline:
            self._init_args["mode"] = "offline"
        self._init_args.update(kwargs)
        self._prefix = prefix
        self._experiment: Any | None = None

    @property
    def experiment(self) -> Any:
        """The ``wandb`` run (started on first use); a stand-in whose methods do nothing on other ranks."""
        if rank_zero_only.rank != 0:
            return _NoOpExperiment()
        if self._experiment is None:
            wandb = WANDB.require("WandbLogger")
            if wandb.run is not None:
                rank_zero_warn(
                    "A wandb run is already active in this process; WandbLogger logs to it instead of starting one."
                    " Call `wandb.finish()` first to have the logger start its own."
                )
                run = wandb.run
            else:
                run = wandb.init(**self._init_args)
            run.define_metric(STEP_METRIC)
            run.define_metric("*", step_metric=STEP_METRIC, step_sync=True)
            self._experiment = run
        return self._experiment

    @property
    @override
    def name(self) -> str | None:
        """The run's display name (known once the run started, unless given)."""
        return self._experiment.name if self._experiment is not None else self._init_args.get("name")

    @property
    @override
    def version(self) -> str | None:
        """The run id (known once the run started, unless given)."""
        return self._experiment.id if self._experiment is not None else self._init_args.get("id")

    @property
    @override
    def root_dir(self) -> str:
        """The folder under which W&B keeps its local files (``save_dir``)."""
        return self._save_dir

    @property
    @override
    def log_dir(self) -> str | None:
        """The run's local folder (``save_dir/wandb/<run folder>``, what ``wandb sync`` takes) once it started."""
        if self._experiment is None:
            return None
        return os.path.dirname(os.path.normpath(self._experiment.dir))

    @override
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log one history row; ``step`` goes to the ``trainer/global_step`` metric. Use ``experiment.log`` for
        images, tables and other W&B media."""
        step = check_step(step)
        prefixed = add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        row: dict[str, Any] = {name: metric_scalar(name, value) for name, value in prefixed.items()}
        if STEP_METRIC in row:
            raise ValueError(f"The metric name {STEP_METRIC!r} is reserved for the step; pass `step=` instead.")
        if step is not None:
            row[STEP_METRIC] = step
        self.experiment.log(row)

    @override
    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace | None, *args: Any, **kwargs: Any) -> None:
        """Merge ``params`` into the run's config; nested dicts stay nested (W&B shows them as sections). A name
        logged again takes the new value."""
        if args or kwargs:
            raise TypeError(f"WandbLogger.log_hyperparams takes only `params`, got extra {args or ''}{kwargs or ''}")
        self.experiment.config.update(yaml_value(convert_params(params)), allow_val_change=True)

    @rank_zero_only
    def log_summary(self, summary: Mapping[str, Any]) -> None:
        """Set values of the run's summary (what the runs table shows: a final accuracy, the best loss...);
        by default W&B keeps there the last logged value of each metric."""
        if not isinstance(summary, Mapping):
            raise TypeError(f"summary must be a mapping of name -> value, got {type(summary).__name__}: {summary!r}")
        self.experiment.summary.update({str(name): yaml_value(value) for name, value in summary.items()})

    @override
    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Finish the run (exit code 0 for ``"success"``/``"finished"``, 1 otherwise, which marks it failed). A
        logger that never logged starts no run; a later call starts the run again (resumed, with the same id)."""
        if self._experiment is None:
            return
        self._experiment.finish(exit_code=0 if status in _SUCCESS else 1)
        self._init_args["id"] = self._experiment.id
        self._experiment = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the run; a copy on rank zero resumes the same run (by id) when it logs."""
        state = self.__dict__.copy()
        if self._experiment is not None:
            state["_init_args"] = {**self._init_args, "id": self._experiment.id}
        state["_experiment"] = None
        return state
