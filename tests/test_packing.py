"""Packed trials: the one-line warning when the CUDA MPS daemon is not running."""

from __future__ import annotations

import io

import pytest
import torch

from tfkd.sweep import cluster

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.fixture
def no_mps(tmp_path, monkeypatch):
    """An empty pipe directory and an empty /proc: no daemon anywhere; warnings re-armed."""
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path / "pipe"))
    (tmp_path / "proc").mkdir()
    monkeypatch.setattr(cluster, "_daemon_process_running", lambda proc=None: False)
    monkeypatch.setattr(cluster, "_warned", False)
    return tmp_path


def test_mps_is_found_by_its_control_pipe(no_mps):
    pipe = no_mps / "pipe"
    assert not cluster.mps_running()
    pipe.mkdir()
    (pipe / "control").touch()
    assert cluster.mps_running()


def test_mps_is_found_by_its_daemon_process(tmp_path):
    proc = tmp_path / "proc"
    for pid, cmdline in (
        (12, b"python\0train.py\0"),
        (34, b"/usr/bin/nvidia-cuda-mps-control\0-d\0"),
    ):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes(cmdline)
    assert cluster.mps_running(tmp_path / "nothing", proc)
    (proc / "34" / "cmdline").write_bytes(b"bash\0")
    assert not cluster.mps_running(tmp_path / "nothing", proc)


def test_a_packed_cuda_trial_without_mps_warns_once_in_one_line(no_mps):
    out = io.StringIO()
    assert cluster.warn_if_time_sliced(CUDA, 0.25, stream=out)
    assert not cluster.warn_if_time_sliced(CUDA, 0.25, stream=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert "0.25 of a GPU" in lines[0] and "time-slice" in lines[0]
    assert "nvidia-cuda-mps-control -d" in lines[0]


@pytest.mark.parametrize(("device", "share"), [(CUDA, 1.0), (CUDA, 2.0), (CPU, 0.25)])
def test_no_warning_for_a_whole_gpu_or_a_cpu_trial(no_mps, device, share):
    out = io.StringIO()
    assert not cluster.warn_if_time_sliced(device, share, stream=out)
    assert out.getvalue() == ""


def test_no_warning_when_mps_runs(no_mps):
    (no_mps / "pipe").mkdir()
    (no_mps / "pipe" / "control").touch()
    out = io.StringIO()
    assert not cluster.warn_if_time_sliced(CUDA, 0.25, stream=out)
    assert out.getvalue() == ""
