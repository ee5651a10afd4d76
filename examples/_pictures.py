"""What the examples write for people to look at: loggers (CSV and TensorBoard in one folder) and PNG pictures.

Shared by every example (``from _pictures import ...`` works because Python puts the script's folder on the path).
Needs the packages of ``examples/requirements.txt`` (matplotlib, tensorboard); the pictures are drawn with
matplotlib's Agg backend, so no display is needed.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fabric_loggers import CSVLogger, TensorBoardLogger

if TYPE_CHECKING:
    from fabric_core import Fabric

# every loss-curve picture has this size, whatever it shows (the example tests check it)
CURVES_SIZE = (1000, 400)  # width, height in pixels
_DPI = 100
INSTALL = "pip install -r examples/requirements.txt"


def make_loggers(log_dir: str, name: str) -> tuple[CSVLogger, TensorBoardLogger]:
    """A ``CSVLogger`` and a ``TensorBoardLogger`` writing into the same ``log_dir/name/version_N`` folder."""
    csv_logger = CSVLogger(log_dir, name=name)
    try:
        tensorboard = TensorBoardLogger(log_dir, name=name, version=csv_logger.version)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"{err}. The examples need their requirements: {INSTALL}") from err
    return csv_logger, tensorboard


def _pyplot() -> Any:
    try:
        import matplotlib
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"The examples draw their pictures with matplotlib: {INSTALL}") from err
    matplotlib.use("Agg")  # files only, no window
    from matplotlib import pyplot

    return pyplot


def read_metrics(csv_path: str) -> dict[str, list[tuple[float, float]]]:
    """Each column of a ``CSVLogger`` metrics file as (step, value) pairs, empty cells left out."""
    series: dict[str, list[tuple[float, float]]] = {}
    with open(csv_path, newline="") as handle:
        for row in csv.DictReader(handle):
            step = float(row["step"])
            for name, text in row.items():
                if name != "step" and text not in ("", None):
                    series.setdefault(name, []).append((step, float(text)))
    return series


def plot_curves(csv_path: str, png_path: str, panels: Sequence[Sequence[str]], title: str) -> str:
    """Draw the metrics of ``csv_path`` as curves over the step, one panel per group of names in ``panels`` (a name
    ending in ``*`` takes every column that starts with the rest); saved as a PNG of ``CURVES_SIZE``."""
    series = read_metrics(csv_path)
    pyplot = _pyplot()
    width, height = CURVES_SIZE
    figure, axes = pyplot.subplots(1, len(panels), figsize=(width / _DPI, height / _DPI), dpi=_DPI, squeeze=False)
    for ax, names in zip(axes[0], panels):
        chosen = [c for n in names for c in series if c == n or (n.endswith("*") and c.startswith(n[:-1]))]
        for column in chosen:
            steps, values = zip(*series[column])
            ax.plot(steps, values, label=column, marker="." if len(steps) < 30 else None)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if chosen:
            ax.legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()  # arranges the panels inside the figure; the file keeps CURVES_SIZE
    figure.savefig(png_path, dpi=_DPI)
    pyplot.close(figure)
    return png_path


def grid_shape(count: int, columns: int, height: int, width: int, pad: int = 2, scale: int = 4) -> tuple[int, int]:
    """The (height, width) in pixels of :func:`save_image_grid`'s picture."""
    rows = math.ceil(count / columns)
    return (rows * (height + pad) + pad) * scale, (columns * (width + pad) + pad) * scale


def save_image_grid(images: np.ndarray, png_path: str, columns: int = 8, pad: int = 2, scale: int = 4) -> str:
    """Save grey ``images`` (N, H, W) or (N, 1, H, W) with values in [-1, 1] as one PNG: a grid of ``columns``
    images a row on a mid-grey background, each pixel drawn as ``scale`` x ``scale`` pixels."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3:
        raise ValueError(f"save_image_grid needs images of shape (N, H, W) or (N, 1, H, W), got {images.shape}")
    count, height, width = images.shape
    rows = math.ceil(count / columns)
    grid = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad), 0.5, dtype=np.float32)
    for index, image in enumerate((np.clip(images, -1, 1) + 1) / 2):
        top, left = pad + (index // columns) * (height + pad), pad + (index % columns) * (width + pad)
        grid[top : top + height, left : left + width] = image
    grid = np.kron(grid, np.ones((scale, scale), dtype=np.float32))
    _pyplot().imsave(png_path, grid, cmap="gray", vmin=0.0, vmax=1.0)  # one image pixel per array element
    return png_path


def picture_path(logger: CSVLogger, filename: str) -> str:
    """Where a picture goes: the logger's version folder, beside ``metrics.csv`` and the TensorBoard files."""
    os.makedirs(logger.log_dir, exist_ok=True)
    return os.path.join(logger.log_dir, filename)


def finish(fabric: Fabric, csv_logger: CSVLogger, panels: Sequence[Sequence[str]], title: str) -> None:
    """End the run's logging: finalize every logger, then (global rank zero) draw the loss curves and say where."""
    for logger in fabric.loggers:
        logger.finalize("success")
    draw_curves(fabric, csv_logger, panels, title)


def draw_curves(fabric: Fabric, csv_logger: CSVLogger, panels: Sequence[Sequence[str]], title: str) -> None:
    """On global rank zero, draw the curves of ``csv_logger``'s finished metrics file and say where they are."""
    if fabric.is_global_zero:
        png = plot_curves(csv_logger.metrics_file_path, picture_path(csv_logger, "loss_curves.png"), panels, title)
        print(f"loss curves in {png}; TensorBoard: tensorboard --logdir {csv_logger.root_dir}", flush=True)
