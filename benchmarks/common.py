"""Helpers the benchmark scripts share: machine info, git commit, JSON output, peak-RSS tracking,
``--help`` formatting."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless it is empty (None, "") or its help already gives it in words
    ("(default ...")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, "") or "(default" in text:
            return text
        return super()._get_help_string(action)


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _cpu_family_model_stepping() -> str | None:
    """'family/model/stepping' from /proc/cpuinfo: model names are often generic ("Intel(R) Xeon(R) Processor")
    on cloud machines, while the numbers say which generation ran."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("cpu family", "model", "stepping") and key not in fields:
                fields[key] = value.strip()
            if not line.strip() and fields:
                break
    except OSError:
        return None
    return "/".join(fields.get(k, "?") for k in ("cpu family", "model", "stepping")) if fields else None


def _ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def git_commit() -> dict:
    """HEAD and whether the working tree differs from it (benchmarks of uncommitted code say so)."""

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


# environment variables that choose which code path MKL, oneDNN or torch's own CPU kernels take
KERNEL_ENV = (
    "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY",
)  # fmt: skip


def machine_info(device: str = "cpu", **extra) -> dict:
    """Platform, CPU model and count, RAM, load, versions, device name, date, git commit, and ``extra``.

    ``cpu_capability`` is the instruction set torch's CPU kernels dispatch to (AVX2, AVX512, ...) and
    ``kernel_env`` the ``KERNEL_ENV`` variables set for the run: runs of the same code and seed that differ there,
    or in the CPU's vendor (Intel's MKL takes its AVX2 path on AMD processors), can differ in the last digits of
    their metrics (BENCHMARKS.md, "Stop 50")."""
    import torch

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_family_model_stepping": _cpu_family_model_stepping(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "kernel_env": {name: os.environ[name] for name in KERNEL_ENV if name in os.environ},
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gb": _ram_gb(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "device_name": _cpu_model(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": git_commit(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return {**info, **extra}


def write_json(result: dict, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return out


def run_with_rss_trace(
    cmd: list[str], interval: float = 0.5, **popen
) -> tuple[int, list[tuple[float, float]], float]:
    """Run ``cmd`` (``popen``: keyword arguments of ``subprocess.Popen``) and sample its resident memory
    (``VmRSS``) every ``interval`` seconds until it exits: (exit code, [(seconds, MB)], wall seconds)."""
    proc = subprocess.Popen(cmd, **popen)
    t0, trace = time.perf_counter(), []
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
            rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
            trace.append((round(time.perf_counter() - t0, 1), round(rss_kb / 1024, 1)))
        except (OSError, StopIteration):  # the process is exiting
            pass
        time.sleep(interval)
    return proc.returncode, trace, round(time.perf_counter() - t0, 2)


class PeakRSS:
    """Peak resident set size of this process above a baseline, in bytes.

    Preferred method: reset the kernel's high-water mark (write ``5`` to ``/proc/self/clear_refs``,
    Linux >= 4.0) at :meth:`start`, read ``VmHWM`` from ``/proc/self/status`` at :meth:`stop`; the
    kernel tracks every page, so no short peak is missed. Fallback when ``clear_refs`` is not
    writable: a background thread samples ``/proc/self/statm`` every millisecond (can miss peaks
    shorter than that). ``method`` says which one ran.
    """

    def __init__(self) -> None:
        self.baseline = 0
        self.method = ""
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _status_kb(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise OSError(f"{key} missing from /proc/self/status")

    @staticmethod
    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def start(self) -> PeakRSS:
        self.baseline = self.rss()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "VmHWM after reset via /proc/self/clear_refs (kernel high-water mark)"
        except OSError:
            self.method = "background thread sampling /proc/self/statm every 1 ms"
            self._peak = self.baseline
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self.rss())
            time.sleep(0.001)

    def stop(self) -> int:
        """Peak RSS minus the baseline RSS taken at :meth:`start`, in bytes."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, self.rss())
        else:
            peak = self._status_kb("VmHWM")
        return max(peak - self.baseline, 0)
