"""``Throughput``'s sliding-window arithmetic (with a clock the test controls) and ``ThroughputMonitor`` logging
through a real ``Fabric`` into a real ``CSVLogger`` file, in one process and in two."""

from __future__ import annotations

import csv
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

from fabric_core import Fabric, Throughput, ThroughputMonitor
from fabric_loggers import CSVLogger
from fabric_strategies import DDPStrategy
from fabric_testing import RunIf, run_processes


class ManualClock:
    """A clock that moves only when the test says so."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def read_csv(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_nothing_to_report_before_the_first_update() -> None:
    assert Throughput().compute() == {}


def test_one_update_gives_totals_but_no_rates() -> None:
    throughput = Throughput()
    throughput.update(time=1.5, batches=1, samples=8, lengths=80)
    assert throughput.compute() == {"time": 1.5, "batches": 1, "samples": 8, "lengths": 80}


def test_rates_use_only_the_updates_in_the_window() -> None:
    clock = ManualClock()
    throughput = Throughput(window_size=3, clock=clock)
    # (seconds after start, running batches, running samples)
    for elapsed, batches, samples in [(1, 1, 4), (2, 2, 8), (4, 4, 20), (9, 5, 24)]:
        clock.now = 100.0 + elapsed
        throughput.update(batches=batches, samples=samples)
    metrics = throughput.compute()
    # the window holds the updates at 2, 4 and 9 seconds
    assert metrics["time"] == 9.0
    assert metrics["device/batches_per_sec"] == pytest.approx((5 - 2) / (9 - 2))
    assert metrics["device/samples_per_sec"] == pytest.approx((24 - 8) / (9 - 2))
    assert (metrics["batches"], metrics["samples"]) == (5, 24)
    assert "device/items_per_sec" not in metrics
    assert "device/flops_per_sec" not in metrics


def test_job_wide_rates_multiply_by_the_world_size_and_mfu_divides_by_the_peak() -> None:
    throughput = Throughput(world_size=4, window_size=10, available_flops=1000.0)
    updates = [(0.0, 1, 2, 30, 400.0), (2.0, 2, 4, 50, 600.0), (4.0, 5, 10, 130, 1000.0)]
    for time, batches, samples, lengths, flops in updates:
        throughput.update(time=time, batches=batches, samples=samples, lengths=lengths, flops=flops)
    metrics = throughput.compute()
    assert metrics["device/batches_per_sec"] == pytest.approx(1.0)
    assert metrics["batches_per_sec"] == pytest.approx(4.0)
    assert metrics["device/samples_per_sec"] == pytest.approx(2.0)
    assert metrics["samples_per_sec"] == pytest.approx(8.0)
    assert metrics["device/items_per_sec"] == pytest.approx((130 - 30) / 4)
    assert metrics["items_per_sec"] == pytest.approx(100.0)
    # the first update's 400 FLOPs were done before the window's first time stamp
    assert metrics["device/flops_per_sec"] == pytest.approx((600 + 1000) / 4)
    assert metrics["flops_per_sec"] == pytest.approx(1600.0)
    assert metrics["device/mfu"] == pytest.approx(0.4)
    assert metrics["lengths"] == 130


def test_flops_leaving_the_window_stop_counting() -> None:
    throughput = Throughput(window_size=2)
    for time, flops in [(1.0, 1e9), (2.0, 5.0), (4.0, 7.0)]:
        throughput.update(time=time, batches=int(time), samples=int(time), flops=flops)
    assert throughput.compute()["device/flops_per_sec"] == pytest.approx(7.0 / 2.0)


def test_no_mfu_without_the_peak_and_a_custom_separator() -> None:
    throughput = Throughput(separator="|")
    throughput.update(time=1.0, batches=1, samples=1, flops=10.0)
    throughput.update(time=3.0, batches=2, samples=2, flops=10.0)
    metrics = throughput.compute()
    assert metrics["device|flops_per_sec"] == pytest.approx(5.0)
    assert not any("mfu" in name for name in metrics)


def test_reset_forgets_updates_and_restarts_the_clock() -> None:
    clock = ManualClock(now=50.0)
    throughput = Throughput(clock=clock)
    clock.now = 60.0
    throughput.update(batches=1, samples=1)
    assert throughput.compute()["time"] == 10.0
    throughput.reset()
    assert throughput.compute() == {}
    clock.now = 61.0
    throughput.update(batches=1, samples=1, lengths=3)  # lengths may start after a reset
    assert throughput.compute() == {"time": 1.0, "batches": 1, "samples": 1, "lengths": 3}


def test_update_rejects_inconsistent_progress() -> None:
    throughput = Throughput()
    with pytest.raises(ValueError, match="samples must be >= batches"):
        throughput.update(time=1.0, batches=3, samples=2)
    with pytest.raises(ValueError, match="lengths must be >= samples"):
        throughput.update(time=1.0, batches=1, samples=2, lengths=1)
    with pytest.raises(ValueError, match="flops must be a number >= 0"):
        throughput.update(time=1.0, batches=1, samples=1, flops=-1.0)
    with pytest.raises(TypeError, match="batches must be an int, got float"):
        throughput.update(time=1.0, batches=1.0, samples=1)  # type: ignore[arg-type]
    throughput.update(time=1.0, batches=2, samples=4, lengths=8)
    with pytest.raises(ValueError, match="time must increase"):
        throughput.update(time=1.0, batches=3, samples=6, lengths=12)
    with pytest.raises(ValueError, match="cannot go down"):
        throughput.update(time=2.0, batches=1, samples=6, lengths=12)
    with pytest.raises(ValueError, match="lengths is a running total"):
        throughput.update(time=2.0, batches=3, samples=6, lengths=7)
    with pytest.raises(ValueError, match="`lengths` was given to some updates"):
        throughput.update(time=2.0, batches=3, samples=6)
    with pytest.raises(ValueError, match="`flops` was given to some updates"):
        throughput.update(time=2.0, batches=3, samples=6, lengths=12, flops=5.0)
    # the rejected updates left nothing behind
    assert throughput.compute() == {"time": 1.0, "batches": 2, "samples": 4, "lengths": 8}


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"window_size": 1}, ValueError, "window_size must be >= 2, got 1"),
        ({"world_size": 0}, ValueError, "world_size must be >= 1, got 0"),
        ({"world_size": True}, TypeError, "world_size must be an int"),
        ({"available_flops": 0}, ValueError, "available_flops must be a positive number"),
        ({"available_flops": -5e12}, ValueError, "-5000000000000.0"),
        ({"separator": 1}, TypeError, "separator must be a str"),
        ({"clock": 3.0}, TypeError, "clock must be a callable"),
    ],
)
def test_bad_configuration(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        Throughput(**kwargs)


def test_monitor_logs_into_a_csv_file(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="run", flush_logs_every_n_steps=1000)
    fabric = Fabric(accelerator="cpu", loggers=logger)
    clock = ManualClock(now=0.0)
    monitor = ThroughputMonitor(fabric, window_size=4, clock=clock)
    assert monitor.available_flops is None  # a CPU has no entry in the peak table
    assert monitor.world_size == 1
    logged = []
    for step in range(6):
        clock.now += 0.5
        monitor.update(batches=step + 1, samples=16 * (step + 1), lengths=16 * 32 * (step + 1), flops=1e6)
        if step % 2 == 1:
            logged.append(monitor.compute_and_log(learning_rate=0.1))
    logger.finalize("success")

    rows = read_csv(logger.metrics_file_path)
    assert [row["step"] for row in rows] == ["0", "1", "2"]  # default steps count the calls
    assert all(float(row["learning_rate"]) == 0.1 for row in rows)
    assert [float(row["samples"]) for row in rows] == [32, 64, 96]
    for row, metrics in zip(rows, logged):
        assert float(row["device/samples_per_sec"]) == pytest.approx(32.0)  # 16 samples every 0.5 s
        assert float(row["items_per_sec"]) == pytest.approx(16 * 32 * 2)
        assert float(row["device/flops_per_sec"]) == pytest.approx(2e6)
        assert float(row["time"]) == pytest.approx(metrics["time"])
    assert "device/mfu" not in rows[0]


def test_monitor_takes_given_flops_and_explicit_steps(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name=None, version="fixed")
    fabric = Fabric(accelerator="cpu", precision="bf16-mixed", loggers=logger)
    monitor = ThroughputMonitor(fabric, available_flops=4e6)
    monitor.update(time=1.0, batches=1, samples=2, flops=1e6)
    monitor.update(time=2.0, batches=2, samples=4, flops=1e6)
    assert monitor.compute_and_log(step=40)["device/mfu"] == pytest.approx(0.25)
    monitor.reset()
    assert monitor.compute_and_log() == {}  # nothing measured since the reset: an empty row at step 0
    logger.save()
    rows = read_csv(logger.metrics_file_path)
    assert [row["step"] for row in rows] == ["40", "0"]
    assert float(rows[0]["device/mfu"]) == pytest.approx(0.25)
    assert Path(logger.metrics_file_path).parent == tmp_path / "fixed"


def _monitor_in_two_processes(rank: int, world_size: int, root: str) -> dict[str, float]:
    fabric = Fabric(
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(timeout=timedelta(seconds=60)),
        loggers=CSVLogger(root, name="ddp"),
    )
    fabric.launch()
    monitor = ThroughputMonitor(fabric, window_size=3, available_flops=1e9)
    # the ranks work at different (made-up) paces: each reports its own per-device numbers
    pace = 1.0 + rank
    for step in range(1, 4):
        monitor.update(time=step * pace, batches=step, samples=8 * step, flops=1e8)
    metrics = monitor.compute_and_log(step=7)
    for logger in fabric.loggers:
        logger.finalize("success")
    fabric.barrier()
    return metrics


def test_monitor_in_two_processes_multiplies_by_the_world_size_and_logs_on_rank_zero(tmp_path: Path) -> None:
    results = run_processes(_monitor_in_two_processes, str(tmp_path), world_size=2, init_process_group=False)
    for rank, metrics in enumerate(results):
        pace = 1.0 + rank
        assert metrics["device/samples_per_sec"] == pytest.approx(8 / pace)
        assert metrics["samples_per_sec"] == pytest.approx(2 * 8 / pace)
        assert metrics["device/mfu"] == pytest.approx(1e8 / pace / 1e9)
    files = list(tmp_path.rglob("metrics.csv"))
    assert len(files) == 1  # only global rank zero writes
    (row,) = read_csv(str(files[0]))
    assert row["step"] == "7"
    assert float(row["samples_per_sec"]) == pytest.approx(16.0)


@RunIf(min_cuda_gpus=1)
def test_monitor_on_a_real_gpu_measures_matmul_mfu() -> None:
    fabric = Fabric(accelerator="cuda", devices=1, precision="bf16-true")
    monitor = ThroughputMonitor(fabric)
    size = 4096
    a = torch.randn(size, size, device=fabric.device, dtype=torch.bfloat16)
    flops_per_matmul = 2 * size**3
    torch.cuda.synchronize()
    monitor.update(batches=0, samples=0, flops=0)
    for step in range(1, 21):
        a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()
        monitor.update(batches=step, samples=step, flops=flops_per_matmul)
    metrics = monitor.compute()
    assert metrics["device/flops_per_sec"] > 1e12
    if monitor.available_flops is not None:
        assert 0.0 < metrics["device/mfu"] <= 1.0
