"""System metrics of a trial's run: MLflow's own sampler of CPU, memory, disk and network use
(and GPU utilisation and memory where pynvml finds NVIDIA GPUs), logged as system/... metrics."""

from __future__ import annotations

import importlib.util
from typing import Any

from tfkd.core.errors import UserError

INTERVAL_S = 5.0
WAIT_S = 600.0  # how long a trial waits for its run before giving up on them


def check_available(enabled: bool) -> None:
    """--system-metrics needs psutil (MLflow's CPU and memory monitor) on every node."""
    if enabled and importlib.util.find_spec("psutil") is None:
        raise UserError(
            "--system-metrics needs psutil (and nvidia-ml-py for GPUs): "
            "pip install psutil nvidia-ml-py, or drop the flag"
        )


def start(uri: str, run_id: str, resumed: bool = False):
    """Start sampling into the run; `resumed` continues a restarted trial's steps."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id,
        sampling_interval=INTERVAL_S,
        resume_logging=resumed,
        tracking_uri=uri,
    )
    monitor.start()
    return monitor


def stop(monitor: Any) -> None:
    """Stop a sampler `start` returned (None: there is none)."""
    if monitor is not None:
        monitor.finish()
