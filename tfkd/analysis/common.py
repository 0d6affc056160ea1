"""What every analysis command shares: progress lines, the tracking URI, typed configs, hashes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from tfkd.core.config import TrialConfig
from tfkd.core.config import keys as config_keys
from tfkd.core.errors import UserError

# Keys that say where or how fast a run ran, not what it trains: two reproductions that differ
# only here are the same (config, seed) pair.
NOT_IDENTITY = (
    "seed",
    "data_dir",
    "download",
    "device",
    "num_workers",
    "eval_batch_size",
    "gpu_share",
    "compile",
    "cuda_graphs",
    "channels_last",
)


def say(message: str) -> None:
    """Progress for the person at the terminal (stdout, flushed: Ray interleaves its own)."""
    print(f"[analysis] {message}", flush=True)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def tracking_uri(value: str | None) -> str:
    """The resolved tracking URI; a server must answer before anything is read or written."""
    from tfkd import tracking

    uri = tracking.resolve_uri(value)
    tracking.check_reachable(uri)
    return uri


def typed_config(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A full, typed trial config from strings (MLflow params) or plain values (YAML, JSON).

    Keys the current TrialConfig does not know (runs from an older tfkd) are dropped; the search
    coordinates a trial's params hold instead of the fields they set (kd_share, smoothing, and
    older sweeps' ce_weight and kl_weight: tfkd.core.coordinates) are kept and turned into those
    fields, at the number of classes of the run's dataset.
    """
    known = set(config_keys())
    try:
        return TrialConfig.from_dict({k: v for k, v in values.items() if k in known}).to_dict()
    except ValueError as exc:
        raise UserError(f"{where}: not a valid trial config ({first_line(exc)})") from None


def config_hash(config: Mapping[str, Any]) -> str:
    """A short, stable id of what a config trains (seed and machine-specific keys left out)."""
    canonical = {k: v for k, v in typed_config(config, "config").items() if k not in NOT_IDENTITY}
    return hashlib.sha1(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:12]
