"""Section 3: peak memory of integrated gradients as ``n_steps`` grows.

On CUDA ``max_memory_allocated``; on CPU the peak RSS growth (VmHWM after a reset, else
ru_maxrss) of one attribution, in a fresh process per setting (``scripts/benchmark.py --_ig-child``).
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.common import ENTRY, Row, log, median

IG_MODEL = dict(in_channels=3, num_classes=10, channels=[16, 32], hidden=128)
IG_INPUT = (3, 32, 32)
IG_PROBES = 128


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def measure(device: str, n_steps: int, internal_batch_size: int | None) -> dict:
    """One IG attribution of 128 random 3x32x32 probes; returns peak memory growth and time."""
    from kdlight.explain import AttributionConfig, attribute
    from kdlight.models import CNN2d

    torch.manual_seed(0)
    model = CNN2d(**IG_MODEL).to(device).eval()
    x = torch.rand(IG_PROBES, *IG_INPUT, device=device)
    target = torch.randint(0, 10, (IG_PROBES,), device=device)
    # warm-up on two probes: imports captum, initialises kernels and the allocator
    attribute(model, x[:2], target[:2], AttributionConfig(method="integrated_gradients", n_steps=2))
    config = AttributionConfig(method="integrated_gradients", n_steps=n_steps, internal_batch_size=internal_batch_size)
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        attribute(model, x, target, config)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() - base
        how = "torch.cuda.max_memory_allocated"
    else:
        if _reset_peak_rss():
            base_kb = _status_kb("VmRSS")
            start = time.perf_counter()
            attribute(model, x, target, config)
            seconds = time.perf_counter() - start
            peak_kb = _status_kb("VmHWM")
            how = "VmHWM after reset - VmRSS"
        else:
            base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            start = time.perf_counter()
            attribute(model, x, target, config)
            seconds = time.perf_counter() - start
            peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            how = "ru_maxrss growth"
        peak = (peak_kb - base_kb) * 1024
    return {"peak_bytes": int(peak), "seconds": seconds, "how": how}


def child_main(spec: str) -> None:
    """The ``--_ig-child`` process: one :func:`measure`, printed as JSON."""
    args = json.loads(spec)
    torch.set_num_threads(args["threads"])
    print(json.dumps(measure(args["device"], args["n_steps"], args["ibs"])))


def _in_subprocess(cfg, n_steps: int, ibs: int | None) -> dict:
    cmd = [
        sys.executable,
        str(ENTRY),
        "--_ig-child",
        json.dumps({"n_steps": n_steps, "ibs": ibs, "device": cfg.device, "threads": cfg.threads}),
    ]
    env = dict(os.environ)
    if cfg.malloc_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(cfg.malloc_mmap_threshold)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"IG child failed ({n_steps}, {ibs}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mem_available_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def run(cfg) -> dict:
    out: dict[str, dict[int, dict | str]] = {"64": {}, "None": {}}
    if cfg.device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        budget = 0.6 * free
    else:
        budget = 0.4 * _mem_available_bytes()
    for key, ibs in (("64", 64), ("None", None)):
        first = None
        for n in cfg.ig_steps:
            if key == "None" and n > cfg.ig_none_max:
                out[key][n] = f"not run (--quick runs None up to n_steps={cfg.ig_none_max})"
                continue
            if first is not None and key == "None":
                predicted = first["peak_bytes"] * n / cfg.ig_steps[0]
                if predicted > budget:
                    out[key][n] = f"skipped (~{predicted / 2**30:.0f} GiB predicted)"
                    continue
            runs = []
            for _ in range(cfg.ig_repeats):
                runs.append(measure("cuda", n, ibs) if cfg.device == "cuda" else _in_subprocess(cfg, n, ibs))
            result = {
                "peak_bytes": median([r["peak_bytes"] for r in runs]),
                "seconds": median([r["seconds"] for r in runs]),
                "how": runs[0]["how"],
                "runs": len(runs),
            }
            out[key][n] = result
            first = first or result
            log(
                f"  IG n_steps={n} internal_batch_size={ibs}: peak {result['peak_bytes'] / 2**20:.1f} MiB, "
                f"{result['seconds']:.2f} s"
            )
    return out


def rows(cfg, ig: dict) -> list[Row]:
    found: list[Row] = []
    for key, label in (("64", "internal_batch_size=64"), ("None", "internal_batch_size=None")):
        first = next((v for v in ig[key].values() if isinstance(v, dict)), None)
        for n, res in ig[key].items():
            if isinstance(res, str):
                found.append(("3", f"IG peak memory, {label}, n_steps={n}", res, "", "", ""))
                continue
            ratio = res["peak_bytes"] / max(first["peak_bytes"], 1)
            goal = ""
            if key == "64" and n == max(k for k, v in ig[key].items() if isinstance(v, dict)) and n != cfg.ig_steps[0]:
                goal = f"flat (<= 1.5x for {n // cfg.ig_steps[0]}x steps): {'met' if ratio <= 1.5 else 'NOT met'}"
            found.append(
                (
                    "3",
                    f"IG peak memory, {label}, n_steps={n}",
                    f"{res['peak_bytes'] / 2**20:.1f} MiB, {res['seconds']:.2f} s",
                    f"n_steps={cfg.ig_steps[0]}: {first['peak_bytes'] / 2**20:.1f} MiB",
                    f"{ratio:.2f} (time {res['seconds'] / first['seconds']:.1f}x)",
                    goal,
                )
            )
    n0 = cfg.ig_steps[0]
    if isinstance(ig["64"].get(n0), dict) and isinstance(ig["None"].get(n0), dict):
        found.append(
            (
                "3",
                "IG batched vs all-at-once, n_steps=" + str(n0),
                f"{ig['64'][n0]['peak_bytes'] / 2**20:.1f} MiB",
                f"None: {ig['None'][n0]['peak_bytes'] / 2**20:.1f} MiB",
                f"{ig['64'][n0]['peak_bytes'] / max(ig['None'][n0]['peak_bytes'], 1):.2f}",
                "",
            )
        )
    return found


def notes(cfg) -> list[str]:
    how = (
        "CUDA max_memory_allocated, median of 3"
        if cfg.device == "cuda"
        else "peak RSS growth in a fresh subprocess per setting, one run each"
    )
    if cfg.malloc_mmap_threshold:
        how += f", MALLOC_MMAP_THRESHOLD_={cfg.malloc_mmap_threshold}"
    return [
        f"Section 3: IG on {IG_PROBES} random {'x'.join(map(str, IG_INPUT))} probes, CNN2d{IG_MODEL['channels']} "
        f"hidden {IG_MODEL['hidden']}; {how}."
    ]
