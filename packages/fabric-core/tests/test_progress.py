"""``fabric.progress``: a bar on global rank zero only, plain lines off a terminal, a live bar on one (a real pty),
the metrics of ``fabric.log``/``log_dict``, clean closing on break and exceptions, and clear errors."""

from __future__ import annotations

import fcntl
import io
import os
import pickle
import pty
import struct
import subprocess
import sys
import termios
import textwrap
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fabric_core import Fabric
from fabric_core.progress import OpenBars, format_metric
from fabric_strategies import DDPStrategy
from fabric_testing import run_processes


def single() -> Fabric:
    return Fabric(accelerator="cpu", devices=1)


def _capture_through_pipe(work: Any) -> str:
    """Run ``work()`` with ``sys.stdout`` and ``sys.stderr`` writing into one real OS pipe; return what came out."""
    read_fd, write_fd = os.pipe()
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(read_fd, 65536), b"")))
    reader.start()
    stream = io.TextIOWrapper(os.fdopen(write_fd, "wb"), encoding="utf-8", line_buffering=True)
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = stream
    try:
        work()
    finally:
        sys.stdout, sys.stderr = saved
        stream.close()
        reader.join(10)
        os.close(read_fd)
    return b"".join(chunks).decode()


def _two_rank_loops(rank: int, world_size: int) -> str:
    fabric = Fabric(accelerator="cpu", devices=2, strategy=DDPStrategy(timeout=timedelta(seconds=60)))
    fabric.launch()
    loader = fabric.setup_dataloaders(DataLoader(TensorDataset(torch.arange(16.0)), batch_size=2))

    def work() -> None:
        assert not sys.stderr.isatty()
        for epoch in fabric.progress(range(2), desc="epoch"):
            for step, (batch,) in enumerate(fabric.progress(loader, desc="train", interval=1e-6)):
                fabric.log("loss", torch.tensor(1.0 / (step + 1 + epoch)))  # rank 0 shows it, rank 1 ignores it
                fabric.all_reduce(batch.sum())  # both ranks really train together
            fabric.log_dict({"val_acc": 0.5 + epoch / 10})
        assert not fabric._open_bars

    return _capture_through_pipe(work)


def test_two_processes_rank_zero_prints_plain_lines_rank_one_nothing() -> None:
    outputs = run_processes(_two_rank_loops, world_size=2, timeout=120)
    assert outputs[1] == "", f"rank 1 printed: {outputs[1]!r}"
    text = outputs[0]
    assert "\r" not in text
    assert "\x1b" not in text
    lines = text.splitlines()
    train = [line for line in lines if line.startswith("train: ")]
    epochs = [line for line in lines if line.startswith("epoch: ")]
    # 4 batches per rank and epoch, a line after each (interval ~0), none doubled at the end
    assert len(train) == 8, text
    assert all(line.startswith("train: 100% 4/4 [") for line in (train[3], train[7])), train
    assert all("it/s" in line for line in train), train
    assert "loss=0.25" in train[3], train[3]
    assert "loss=0.2]" in train[7], train[7]
    # the outer bar writes only at its end (interval 10 s) and shows the metrics logged while it was open
    assert [line[: len("epoch: 100% 2/2 [")] for line in epochs] == ["epoch: 100% 2/2 ["], text
    for shown in ("it/s", "loss=0.2,", "val_acc=0.6"):
        assert shown in epochs[0], epochs[0]


PTY_SCRIPT = """
import time
from fabric_core import Fabric

fabric = Fabric(accelerator="cpu", devices=1)
for epoch in fabric.progress(range(2), desc="epoch"):
    for step in fabric.progress((i for i in range(6)), desc="batches"):
        time.sleep(0.03)
        fabric.log("loss", 0.5)
print("done")
"""


def test_terminal_shows_a_live_bar(tmp_path: Path) -> None:
    script = tmp_path / "bar.py"
    script.write_text(textwrap.dedent(PTY_SCRIPT))
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a real terminal has a size
    process = subprocess.Popen([sys.executable, str(script)], stdin=child, stdout=child, stderr=child)
    os.close(child)
    output = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=60) == 0, output.decode(errors="replace")
    os.close(main)
    text = output.decode(errors="replace")
    assert "done" in text
    assert "\r" in text.replace("\r\n", "")  # redrawn in place
    assert "epoch: 100%|" in text
    assert "2/2" in text
    assert "batches: " in text
    assert "it/s" in text
    assert "loss=0.5" in text
    assert "\x1b[A" in text  # the nested bar is drawn on the line below the outer one


def test_plain_lines_without_len_and_interval(tmp_path: Path) -> None:
    fabric, out = single(), io.StringIO()
    bar = fabric.progress((i for i in range(5)), desc="stream", file=out)
    with pytest.raises(TypeError, match="has no len\\(\\); pass total="):
        len(bar)
    assert list(bar) == [0, 1, 2, 3, 4]
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("stream: 5 [00:00, "), lines
    assert "it/s" in lines[0], lines
    out = io.StringIO()
    sized = fabric.progress((i for i in range(3)), total=3, file=out)
    assert len(sized) == 3
    assert list(sized) == [0, 1, 2]
    assert out.getvalue().startswith("100% 3/3 [")


def test_break_and_exception_close_the_bar() -> None:
    fabric, out = single(), io.StringIO()
    for i in fabric.progress(range(10), desc="stopped", file=out):
        fabric.log("i", i)
        if i == 3:
            break
    assert not fabric._open_bars
    assert out.getvalue().startswith("stopped:  30% 3/10 [")
    assert "i=3" in out.getvalue()

    def failing_loop() -> None:
        for i in fabric.progress(range(10), desc="failed", file=out):
            if i == 2:
                raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        failing_loop()
    assert not fabric._open_bars
    assert out.getvalue().splitlines()[-1].startswith("failed:  20% 2/10 [")
    # a closed bar takes no more metrics, and a context manager closes one that was left half-way
    with fabric.progress(range(5), file=out) as bar:
        iterator = iter(bar)
        next(iterator)
        assert fabric._open_bars == [bar]
    assert not fabric._open_bars
    del iterator
    fabric.log("after", 1.0)
    assert "after" not in bar.postfix()


def test_metrics_shown_as_numbers() -> None:
    assert format_metric(torch.tensor(0.123456)) == "0.1235"
    assert format_metric(torch.tensor([3])) == "3"
    assert format_metric(7) == "7"
    assert format_metric(True) == "1"
    assert format_metric(2.5e-7) == "2.5e-07"
    assert format_metric("a" * 30) == "a" * 19 + "…"
    fabric, out = single(), io.StringIO()
    loss = torch.tensor(2.0, requires_grad=True) * 1.5
    for _ in fabric.progress(range(1), file=out):
        fabric.log_dict({"loss": loss, "lr": 1e-3})
        assert not fabric._open_bars[0]._latest["loss"].requires_grad  # no autograd graph kept alive
    assert "loss=3, lr=0.001" in out.getvalue()
    out = io.StringIO()
    for _ in fabric.progress(range(1), file=out, metrics=["loss"]):
        fabric.log_dict({"loss": 0.5, "samples_per_sec": 100.0})
    assert out.getvalue().rstrip().endswith("it/s, loss=0.5]"), out.getvalue()


def test_disabled_and_open_bars_not_pickled() -> None:
    fabric, out = single(), io.StringIO()
    assert list(fabric.progress([1, 2], file=out, disable=True)) == [1, 2]
    assert out.getvalue() == ""
    assert not fabric._open_bars
    bars = OpenBars([object()])
    assert pickle.loads(pickle.dumps(bars)) == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"iterable": 5}, TypeError, r"needs something to loop over .* got 5 of type int"),
        ({"desc": 3}, TypeError, r"desc=3\) must be a str or None"),
        ({"total": -1}, ValueError, r"total=-1\) must be an int >= 0 or None"),
        ({"total": True}, ValueError, r"total=True\)"),
        ({"interval": 0}, ValueError, r"interval=0\) must be a number of seconds > 0"),
        ({"interval": float("inf")}, ValueError, r"interval=inf\)"),
        ({"file": "log.txt"}, TypeError, r"file='log.txt'\) must be a text stream"),
        ({"disable": "yes"}, TypeError, r"disable='yes'\) must be a bool"),
        ({"colour": "red"}, TypeError, r"unexpected keyword argument 'colour'"),
        ({"metrics": "loss"}, TypeError, r"metrics='loss'\) must be a list or tuple of metric names"),
        ({"metrics": [1]}, TypeError, r"metrics=\[1\]\)"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    iterable = kwargs.pop("iterable", range(3))
    with pytest.raises(error, match=match):
        single().progress(iterable, **kwargs)
