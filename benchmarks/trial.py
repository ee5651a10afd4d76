"""One benchmark process: ``python benchmarks/trial.py TRIAL_JSON``.

Runs one training loop (raw PyTorch or fabric, see ``workloads.py``) in chunks that the harness hands out: the
process says ``ready`` (set-up done) or ``done`` (chunk done) on its protocol channel and waits for ``go`` on
stdin, so the raw and the fabric process of a pair take turns and share the machine's load alike. At the end it
writes ``result <json>`` with the per-chunk step times, peak RSS and the digest of the final weights. Under DDP the
harness starts one such process per rank with torchrun's environment variables (RANK, WORLD_SIZE, ...).

Anything the code under test prints goes to stderr: stdout is kept for the protocol.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def handshake(message: str) -> None:
        protocol.write(message + "\n")
        command = sys.stdin.readline().strip()
        if command != "go":
            raise SystemExit(f"benchmark harness sent {command!r} instead of 'go'; stopping")

    import torch
    from workloads import RUNNERS, Trial

    trial = Trial(**json.loads(sys.argv[1]))
    torch.set_num_threads(trial.threads)
    result = RUNNERS[trial.impl](trial, handshake)
    protocol.write("result " + json.dumps(result) + "\n")
    protocol.close()


if __name__ == "__main__":
    main()
