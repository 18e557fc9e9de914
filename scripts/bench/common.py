"""Environment, timing and formatting helpers shared by the benchmark sections."""

from __future__ import annotations

import logging
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from unittest import mock

import torch

REPO = Path(__file__).resolve().parents[2]
#: the entry script: section 3 runs each measurement in a fresh process of it
ENTRY = REPO / "scripts" / "benchmark.py"

#: one table row: (section, measurement, value, baseline, ratio, goal / verdict)
Row = tuple[str, str, str, str, str, str]


def quiet() -> None:
    """Silence warnings and Lightning's info logs (the table goes to stdout, progress to stderr)."""
    warnings.filterwarnings("ignore")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    import lightning  # noqa: F401  (creates its loggers, so their levels can be set)

    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("lightning", "pytorch_lightning")):
            logging.getLogger(name).setLevel(logging.ERROR)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_line(device: str) -> str:
    import lightning

    parts = [
        f"CPU {cpu_model()} ({os.cpu_count()} logical cores visible)",
        f"torch {torch.__version__} ({torch.get_num_threads()} intra-op threads)",
        f"lightning {lightning.__version__}",
        f"python {platform.python_version()}",
    ]
    try:
        import captum

        parts.append(f"captum {captum.__version__}")
    except ImportError:
        pass
    if device == "cuda":
        parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    return ", ".join(parts)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


#: the clock of the timed sections: wall time, or with ``KDLIGHT_BENCH_CLOCK=cpu`` this process's
#: CPU time (one torch thread, no loader workers: the work done, nearly blind to other jobs' load)
CLOCK = os.environ.get("KDLIGHT_BENCH_CLOCK", "wall")
if CLOCK not in ("wall", "cpu"):
    raise SystemExit(f"KDLIGHT_BENCH_CLOCK must be 'wall' or 'cpu', got {CLOCK!r}")


def now() -> float:
    """Seconds on the benchmark's clock (:data:`CLOCK`)."""
    return time.process_time() if CLOCK == "cpu" else time.perf_counter()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    return f"{min(values):.3g}-{max(values):.3g}"


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}"


def log(msg: str) -> None:
    """Progress, to stderr."""
    print(msg, file=sys.stderr, flush=True)


def lightning_log_path():
    """A context with Lightning's own ``self.log`` path inside: ``KDLIGHT_FAST_LOG=0``, which kdlight's
    fast path (``kdlight/training/fast_log.py``) reads at every call; the environment is restored after."""
    from kdlight.training.fast_log import SWITCH

    return mock.patch.dict(os.environ, {SWITCH: "0"})
