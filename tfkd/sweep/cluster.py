"""Several trials on one GPU: detect whether they can actually run side by side.

Without NVIDIA's Multi-Process Service (MPS) the processes sharing a GPU time-slice it: one
process's kernels at a time, so four packed trials each run at about a quarter of the speed of
one. With the MPS control daemon running, their kernels run concurrently (measured on an H100:
4 x 7,590 img/s without, 4 x 11,700 with). A trial only detects the daemon; starting and stopping
it is the cluster's job (README, "Running on a cluster").
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

DEFAULT_PIPE_DIRECTORY = "/tmp/nvidia-mps"
CONTROL_DAEMON = "nvidia-cuda-mps-control"
_warned = False


def mps_pipe_directory() -> Path:
    """Where MPS clients find the daemon: $CUDA_MPS_PIPE_DIRECTORY, else /tmp/nvidia-mps."""
    return Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY") or DEFAULT_PIPE_DIRECTORY)


def _daemon_process_running(proc: Path = Path("/proc")) -> bool:
    """Whether a nvidia-cuda-mps-control process is visible in /proc (not across containers)."""
    try:
        entries = [e for e in proc.iterdir() if e.name.isdigit()]
    except OSError:
        return False
    for entry in entries:
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        program = cmdline.split(b"\0", 1)[0]
        if os.path.basename(program.decode(errors="replace")) == CONTROL_DAEMON:
            return True
    return False


def mps_running(pipe_directory: Path | None = None, proc: Path = Path("/proc")) -> bool:
    """Whether the CUDA MPS control daemon serves this node.

    True when its control pipe exists in the pipe directory (what CUDA clients connect through)
    or a nvidia-cuda-mps-control process is visible. Reads only; never starts or stops it.
    """
    directory = pipe_directory if pipe_directory is not None else mps_pipe_directory()
    return (directory / "control").exists() or _daemon_process_running(proc)


def time_slicing_warning(share: float) -> str:
    """The one line a packed trial logs when MPS is not running."""
    return (
        f"[tfkd] warning: this trial has {share:g} of a GPU but the CUDA MPS daemon is not "
        f"running on this node ({mps_pipe_directory()}/control not found), so packed trials "
        "time-slice the GPU instead of running side by side; start it on each GPU node before "
        "`ray start` with `nvidia-cuda-mps-control -d` (README, 'Running on a cluster')"
    )


def warn_if_time_sliced(device: torch.device, share: float, *, stream=None) -> bool:  # noqa: ANN001
    """Log `time_slicing_warning` once per process for a CUDA trial with a GPU share below 1 on
    a node without MPS. Returns whether it warned."""
    global _warned
    if _warned or device.type != "cuda" or share >= 1 or mps_running():
        return False
    _warned = True
    print(time_slicing_warning(share), file=stream or sys.stderr, flush=True)
    return True
