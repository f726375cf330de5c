"""The environment a result was measured in: hardware, threads, torch version, git commit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "environment", "environment_key", "machine_key", "hardware_name", "MACHINE_FIELDS",
    "peak_rss_mb", "reset_peak_memory", "memory_summary",
]

# What makes a second on one machine comparable with a second on another: training times (and
# their ratios to dense) are compared only between rows that agree on all of these.
MACHINE_FIELDS = ("device", "cpu", "gpu", "cores", "torch")


def _cpu_model() -> str:
    """The CPU's model name, with its family/model numbers when the name alone is generic.

    Cloud machines often report only "AMD EPYC": two generations then look identical although
    one trains 3× faster (seen here: family 26 against an earlier part), and speed-ups must never
    be computed across them, so the family and model numbers are part of the name.
    """
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model") and key not in fields:
                fields[key] = value.strip()
            if not line.strip() and fields:
                break  # the first processor's block is enough
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Facts printed beside every number: CPU/GPU model, cores, threads, torch version."""
    device = torch.device(device)
    env: dict[str, Any] = {
        "device": device.type,
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": _git_commit(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def environment_key(env: dict[str, Any]) -> str:
    """Short file-name-safe label of an environment, e.g. ``cpu2-torch2.13.0``."""
    hw = env.get("gpu") if env.get("device") == "cuda" else f"cpu{env.get('cores')}"
    label = f"{hw}-torch{str(env.get('torch')).split('+')[0]}"
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in label)


def machine_key(env: dict[str, Any]) -> tuple[Any, ...]:
    """The machine an environment describes (`MACHINE_FIELDS`); threads and commit excluded."""
    return tuple(env.get(k) for k in MACHINE_FIELDS)


def hardware_name(env: dict[str, Any]) -> str | None:
    """What the times ran on, in words: the GPU's name for CUDA rows, else the CPU's."""
    return env.get("gpu") if env.get("device") == "cuda" else env.get("cpu")


def _proc_status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status (Linux), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process, in MiB (None where unsupported).

    On Linux this is the high-water mark since the last `reset_peak_memory` (or since the
    process started); elsewhere the process-wide peak, which never goes down, so it measures one
    run only when the run has the process to itself (``leantrain bench`` runs each run in a
    fresh subprocess). Either way it includes the interpreter, torch and the loaded data.
    """
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if platform.system() == "Darwin" else peak / 1024


def reset_peak_memory(device: torch.device | str) -> dict[str, Any]:
    """Start measuring peak memory from now (e.g. when training starts).

    Resets the peak of allocated CUDA memory, and on Linux the process's resident high-water mark
    (writing 5 to /proc/self/clear_refs), so the peak excludes transient memory of data loading.

    Returns:
        ``rss_start_mb`` (resident memory now) and ``peak_rss_scope``: ``"training"`` when the
        RSS peak was reset, ``"process"`` when it could not be.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    scope = "process"
    try:
        Path("/proc/self/clear_refs").write_text("5")
        scope = "training"
    except OSError:
        pass
    return {"rss_start_mb": _proc_status_mb("VmRSS"), "peak_rss_scope": scope}


def memory_summary(
    device: torch.device | str, start: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Peak memory to report beside time.

    Args:
        device: the training device.
        start: what `reset_peak_memory` returned when the measured phase began.

    Returns:
        ``peak_rss_mb`` (with `start`'s ``rss_start_mb`` and ``peak_rss_scope``) and, on CUDA,
        ``cuda_max_allocated_mb``, the peak of tensors allocated since `reset_peak_memory`.
    """
    device = torch.device(device)
    out: dict[str, Any] = {**(start or {}), "peak_rss_mb": peak_rss_mb()}
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out
