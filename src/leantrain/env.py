"""The environment a result was measured in: hardware, threads, torch version, git commit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

__all__ = ["environment", "environment_key"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
