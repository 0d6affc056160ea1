"""System metrics of a trial's run: MLflow's own sampler of CPU, memory, disk and network use
(and GPU utilisation and memory where pynvml finds NVIDIA GPUs), logged as system/... metrics."""

from __future__ import annotations

from typing import Any

INTERVAL_S = 5.0
WAIT_S = 600.0  # how long a trial waits for its run before giving up on them


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
