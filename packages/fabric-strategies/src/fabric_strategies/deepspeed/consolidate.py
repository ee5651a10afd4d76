"""The full contents of a DeepSpeed ZeRO checkpoint directory in one process: fp32 weights and the plain entries.

A DeepSpeed checkpoint holds each process's partition of the weights and of the optimizer state (flat fp32 groups).
DeepSpeed's own ``zero_to_fp32`` merges the partitions into full fp32 weights; it reads the files with
``torch.load(weights_only=False)``, so by default every torch file under the checkpoint tag is first read with the
weights-only unpickler (``check_weights_only``), as for every other DeepSpeed load. The entries that ``fabric.save``
stored beside the model (client state: ``step``, ...) come from the rank-0 model-states file, read weights-only.
The optimizer state is left out: it stays partitioned in DeepSpeed's own layout.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
from collections.abc import Iterator
from typing import Any

from fabric_strategies.deepspeed.checkpoint import ENGINE_KEYS_ENTRY, check_local_path, checked_tag, load_weights_only
from fabric_utils import DEEPSPEED, PathLike

#: the key of the full weights when the checkpoint was not written by ``fabric.save`` (no record of the model's key)
DEFAULT_MODEL_KEY = "model"


def is_deepspeed_checkpoint(path: PathLike) -> bool:
    """Whether ``path`` is a directory that DeepSpeed's ``save_checkpoint`` wrote (its ``latest`` file names a tag)."""
    directory = os.fspath(path)
    return os.path.isfile(os.path.join(directory, "latest")) and not os.path.exists(
        os.path.join(directory, ".metadata")
    )


def read_deepspeed_checkpoint(path: PathLike, *, weights_only: bool = True) -> dict[str, Any]:
    """``{model_key: full fp32 weights, **plain entries}`` of the DeepSpeed checkpoint directory ``path``.

    Needs DeepSpeed installed (its ``zero_to_fp32`` merges the partitions). Raises ``UnsafeCheckpointError`` naming
    a file that holds anything but tensors, plain data and DeepSpeed's records, unless ``weights_only=False``.
    """
    directory = check_local_path(path)
    tag = checked_tag(directory, "latest", weights_only)
    DEEPSPEED.require("Consolidating a DeepSpeed checkpoint")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with contextlib.redirect_stdout(io.StringIO()), _without_tqdm_monitor():  # zero_to_fp32 prints its progress
        weights = get_fp32_state_dict_from_zero_checkpoint(directory, tag=tag)
    client_state = _client_state(os.path.join(directory, tag), weights_only)
    saved_keys = client_state.get(ENGINE_KEYS_ENTRY)
    if saved_keys is None:  # not written by fabric.save: the weights alone
        return {DEFAULT_MODEL_KEY: weights}
    plain = {key: client_state[key] for key in saved_keys["client"] if key in client_state}
    return {saved_keys["model"]: weights, **plain}


@contextlib.contextmanager
def _without_tqdm_monitor() -> Iterator[None]:
    """zero_to_fp32's progress bars would start tqdm's monitor thread, which then runs until the process ends: turn
    it off (``tqdm.monitor_interval = 0``, tqdm's documented switch) for the call, and back on afterwards."""
    from tqdm import tqdm  # a dependency of DeepSpeed

    interval = tqdm.monitor_interval
    tqdm.monitor_interval = 0
    try:
        yield
    finally:
        tqdm.monitor_interval = interval


def _client_state(tag_directory: str, weights_only: bool) -> dict[str, Any]:
    """The top-level entries of the model-states file of the first process (where the client state is stored)."""
    candidates = sorted(glob.glob(os.path.join(glob.escape(tag_directory), "*mp_rank_00_model_states.pt")))
    if not candidates:
        raise FileNotFoundError(f"The DeepSpeed checkpoint tag {tag_directory!r} has no '*_model_states.pt' file.")
    first = candidates[0]  # "mp_rank_00_..." (stages 1-2) or "zero_pp_rank_0_mp_rank_00_..." (stage 3)
    if weights_only:
        states = load_weights_only(first)
    else:
        import torch

        states = torch.load(first, map_location="cpu", weights_only=False)
    return dict(states)
