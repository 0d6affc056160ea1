"""The Ray cluster a sweep runs on: joining it (or starting a local one), and whether its GPUs
run packed trials side by side.

Joining: a driver checks that something listens at the address before Ray's own minutes of
retries, and turns token authentication on when it has a token. Ray reads that setting when it is
imported, so this module imports Ray only inside the functions that connect.

Packing: without NVIDIA's Multi-Process Service (MPS) the processes sharing a GPU time-slice it,
one process's kernels at a time, so each of four packed trials runs at about a quarter of one
trial's speed; with the MPS control daemon running, their kernels run concurrently
(docs/clusters.md, "Several trials per GPU"). A trial only detects the daemon; starting and
stopping it is the cluster's job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from tfkd.core.errors import UserError
from tfkd.sweep import processes, watchdog
from tfkd.sweep import status as progress

if TYPE_CHECKING:
    import torch

# ---------------------------------------------------------------- SIGTERM, as Ctrl-C


def _sigterm_as_ctrl_c(signum, frame) -> None:  # noqa: ANN001
    """Whatever Ctrl-C does at this moment: Tune's graceful stop while it runs, else
    KeyboardInterrupt (also when SIGINT is ignored, as in a shell's background job)."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def treat_sigterm_as_ctrl_c() -> None:
    """Make SIGTERM (`kill PID`, a scheduler's stop) end the driver as Ctrl-C does.

    `ray.init` installs Ray's native failure handler for SIGTERM (its logging.cc), which prints
    a native stack trace and kills the driver without Tune saving the sweep; so this runs at the
    driver's start and again after each `ray.init`. Signal handlers belong to the main thread.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c)


# ---------------------------------------------------------------- joining the cluster


def cluster_address(address: str | None) -> str | None:
    """--address, else RAY_ADDRESS, else None (a local Ray started for this sweep)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def enable_token_auth(address: str | None) -> None:
    """Let a driver join a cluster that uses token authentication (Ray >= 2.52 default).

    Clusters started with `ray start` require a token from every driver, and Ray reads
    RAY_AUTH_MODE when it is imported: so this runs before anything imports Ray. The token itself
    comes from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.
    """
    joining = address or os.environ.get("RAY_ADDRESS")
    token = (
        os.environ.get("RAY_AUTH_TOKEN")
        or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or (Path.home() / ".ray" / "auth_token").is_file()
    )
    if joining and joining != "local" and token and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"


def check_cluster_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail fast (Ray itself retries for minutes) when no Ray cluster listens at host:port."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not port.isdigit():
        raise UserError(f"--address {address!r} is not HOST:PORT (e.g. 127.0.0.1:6379)")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise UserError(
            f"no Ray cluster reachable at {address} ({exc.strerror or exc}); start one with "
            f"'ray start --head --port={port}' or fix --address / RAY_ADDRESS"
        ) from None


def connect(address: str | None, *, num_cpus: int | None = None) -> str:
    """Join an existing cluster (token authentication handled) or start a local Ray; SIGTERM
    then still ends the driver as Ctrl-C does."""
    import ray

    target = cluster_address(address)
    if target is None or target == "local":
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=progress.forward_trial_output(),
            configure_logging=True,
            logging_level=logging.WARNING,
        )
        treat_sigterm_as_ctrl_c()
        watchdog.start_for(os.getpid())  # a killed driver's local Ray is stopped with it
        return "local"
    check_cluster_reachable(target)
    try:
        ray.init(address=target, logging_level=logging.WARNING)
    except Exception as exc:  # ConnectionError, AuthenticationError, RuntimeError...
        hint = (
            "the cluster uses token authentication: set RAY_AUTH_MODE=token and provide the "
            "cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN"
        )
        raise UserError(f"cannot join the Ray cluster at {target}: {hint}") from exc
    treat_sigterm_as_ctrl_c()
    return target


def disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


@contextlib.contextmanager
def session(address: str | None, *, num_cpus: int | None = None):
    """Connect for the duration of a block, always disconnecting."""
    where = connect(address, num_cpus=num_cpus)
    try:
        yield where
    finally:
        disconnect()


def cluster_gpus() -> float:
    """The GPUs of the connected cluster, all nodes together."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


# ---------------------------------------------------------------- packed trials on one GPU

DEFAULT_PIPE_DIRECTORY = "/tmp/nvidia-mps"
CONTROL_DAEMON = "nvidia-cuda-mps-control"
_warned = False


def mps_pipe_directory() -> Path:
    """Where MPS clients find the daemon: $CUDA_MPS_PIPE_DIRECTORY, else /tmp/nvidia-mps."""
    return Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY") or DEFAULT_PIPE_DIRECTORY)


def _daemon_process_running(proc: Path = processes.PROC) -> bool:
    """Whether a nvidia-cuda-mps-control process is visible in /proc (not across containers)."""
    return any(processes.program_name(pid, proc) == CONTROL_DAEMON for pid in processes.pids(proc))


def mps_running(pipe_directory: Path | None = None, proc: Path = processes.PROC) -> bool:
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
        "`ray start` with `nvidia-cuda-mps-control -d` "
        "(docs/clusters.md, 'Several trials per GPU')"
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
