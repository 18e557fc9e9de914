"""Arguments, the sections to run, and the table (see ``scripts/benchmark.py``)."""

from __future__ import annotations

import argparse
import functools
import sys
import time
import traceback
from pathlib import Path

import torch

from bench import callback_share, compression, ig_memory, lm_memory, teacher_cache, throughput
from bench.common import Row, loadavg, log, machine_line, quiet
from bench.workloads import Workload

#: section -> (title, its module, whether it runs once per workload)
SECTIONS = {
    "1": ("fit throughput", throughput, True),
    "2": ("explanation callback share", callback_share, False),
    "3": ("integrated-gradients peak memory", ig_memory, False),
    "5": ("teacher cache", teacher_cache, True),
    "6": ("LM token-level KL peak memory", lm_memory, False),
    "7": ("compression: latency, size, parameters", compression, False),
}
HEADER = ["sec", "measurement", "value (median or min, [min-max])", "baseline (same run)", "ratio", "goal"]


def parse_args(argv: list[str] | None = None, description: str = "") -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--quick",
        action="store_true",
        help="about 1-1.5 minutes: fewer epochs/repeats/variants, section 2 up to the callback's first run (10 epochs), "
        "n_steps up to 64 (None up to 32 on cpu), 256 cifar samples",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: 1 on cpu, to keep shared cores from adding noise; torch's default on cuda)",
    )
    p.add_argument(
        "--text-config",
        default=None,
        help="section 2: the text workload's config (default configs/text_shortcut/kd.yaml; 'none' skips it)",
    )
    p.add_argument(
        "--sections",
        default="1,2,3,5",
        help="comma-separated subset of 1,2,3,5,6,7 (4 rides with 1 on cuda; 6 and 7 only when asked)",
    )
    p.add_argument(
        "--workload",
        choices=["digits", "cifar", "both"],
        default="both",
        help="sections 1 and 5: digits (8x8 digits, CNN2d -> MLP), cifar (synthetic 3x32x32, "
        "resnet20 -> resnet8) or both (default)",
    )
    p.add_argument(
        "--student-hidden", type=int, nargs="+", default=[32], help="digits: MLP student hidden widths (kd.yaml: 32)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="sections 1 and 5, both workloads")
    p.add_argument(
        "--cifar-train-size", type=int, default=None, help="cifar: synthetic training samples (512; --quick 256)"
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="sections 1 and 5: timed epochs per fit, after 1 warm-up epoch (digits 5, cifar 2; --quick 3 / 1)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="sections 1 and 5: fits per variant, interleaved (digits 5, cifar 3; --quick 3 / 2)",
    )
    p.add_argument(
        "--all-variants",
        action="store_true",
        help="section 1: time every variant for every workload (by default cifar and --quick skip "
        "check_finite=False and CSV(50))",
    )
    p.add_argument(
        "--malloc-mmap-threshold",
        type=int,
        default=None,
        help="cpu section 3: set glibc MALLOC_MMAP_THRESHOLD_ in the children (e.g. 131072), so freed "
        "tensor memory goes back to the OS at once and RSS tracks live tensors",
    )
    p.add_argument("--_ig-child", dest="ig_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    q, cuda = args.quick, args.device == "cuda"
    args.cifar_train_size = args.cifar_train_size or (256 if q else 512)
    workloads = ["digits", "cifar"] if args.workload == "both" else [args.workload]
    # CUDA epochs are ~60 ms of host-bound work each: time more of them to beat the noise
    default_epochs = {"digits": 3 if q else (15 if cuda else 5), "cifar": 1 if q else (15 if cuda else 2)}
    default_repeats = {"digits": 3 if q else 5, "cifar": 2 if q else 3}
    # cifar steps are compute-bound (~0.25 s each on one core): the check_finite and CSV(50) rows sit within noise of
    # kdlight's there and would cost ~35 s, so by default only digits runs them (--all-variants: every workload)
    args.workloads = {
        name: Workload(
            name=name,
            batch_size=args.batch_size,
            epochs=args.epochs or default_epochs[name],
            repeats=args.repeats or default_repeats[name],
            variants=throughput.VARIANTS
            if args.all_variants or not (q or name == "cifar")
            else throughput.FEW_VARIANTS,
            student_hidden=args.student_hidden,
            train_size=args.cifar_train_size,
        )
        for name in workloads
    }
    args.repeats_config = 3 if q else 7
    args.every1_epochs = 2 if q else 5
    args.ig_steps = [8, 32, 64] if q else [8, 32, 128, 512]
    args.ig_none_max = 32 if (q and args.device == "cpu") else 10**9
    args.ig_repeats = 1 if args.device == "cpu" else 3
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else torch.get_num_threads()
    return args


def build_table(cfg, results: dict) -> list[str]:
    rows: list[Row] = []
    for wl_name, tp in (results.get("1") or {}).items():
        rows += throughput.rows(wl_name, tp)
    if results.get("2"):
        rows += callback_share.rows(results["2"])
    if results.get("3"):
        rows += ig_memory.rows(cfg, results["3"])
    for wl_name, res in (results.get("5") or {}).items():
        rows += teacher_cache.rows(wl_name, res)
    if results.get("6"):
        rows += lm_memory.rows(cfg, results["6"])
    if results.get("7"):
        rows += compression.rows(results["7"])
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def notes_lines(cfg, sections: set[str], results: dict) -> list[str]:
    notes = [""]
    if sections & {"1", "5"}:
        notes.append(
            f"Setup: device {cfg.device}, {cfg.threads} torch thread(s); KD T=4 alpha=0.9, Adam 3e-3; "
            "models random init (seed 0)."
        )
        notes += [f"Workload {wl.describe()}." for wl in cfg.workloads.values()]
    if "1" in sections:
        notes += throughput.notes(cfg)
    if "2" in sections:
        notes += callback_share.notes(cfg, results.get("2"))
    if "3" in sections:
        notes += ig_memory.notes(cfg)
    if "5" in sections:
        notes += teacher_cache.notes(cfg)
    if "6" in sections:
        notes += lm_memory.notes(cfg)
    if "7" in sections:
        notes += compression.notes(cfg)
    return notes


def main(argv: list[str] | None = None, description: str = "") -> None:
    cfg = parse_args(argv, description)
    quiet()
    torch.set_num_threads(cfg.threads)
    if cfg.ig_child:
        ig_memory.child_main(cfg.ig_child)
        return
    if cfg.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    sections = {s.strip() for s in cfg.sections.split(",")}
    unknown = sections - {*SECTIONS, "4"}
    if unknown:
        sys.exit(f"--sections: unknown section(s) {sorted(unknown)}; choose from 1,2,3,5,6,7")
    command = "python scripts/benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv)
    load_start = loadavg()
    print(f"load average at start: {load_start}")
    print(f"machine: {machine_line(cfg.device)}")
    print(f"command: {command.strip()}")
    t0 = time.perf_counter()
    results: dict[str, object] = {}
    failures: list[str] = []

    def attempt(key: str, title: str, fn, store) -> None:
        log(f"section {key}: {title}")
        try:
            store(fn())
        except Exception as exc:  # report it in the table, keep the other sections
            traceback.print_exc()
            failures.append(
                f"| {key} | {title}: section failed: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200] if str(exc) else ''} |  |  |  |  |"
            )

    for key, (title, module, per_workload) in SECTIONS.items():
        if key not in sections:
            continue
        if per_workload:
            results[key] = {}
            for wl in cfg.workloads.values():
                attempt(
                    key,
                    f"{title} [{wl.name}]",
                    functools.partial(module.run, cfg, wl),
                    functools.partial(results[key].__setitem__, wl.name),
                )
        else:
            attempt(key, title, functools.partial(module.run, cfg), functools.partial(results.__setitem__, key))
    elapsed = time.perf_counter() - t0
    table = build_table(cfg, results) + failures
    notes = notes_lines(cfg, sections, results)
    notes.append(f"load average at end: {loadavg()}; benchmark wall time {elapsed:.0f} s.")
    text = "\n".join(table + notes)
    print()
    print(text)
    if cfg.out:
        header = [
            f"load average at start: {load_start}; machine: {machine_line(cfg.device)}",
            f"command: `{command.strip()}`",
            "",
        ]
        cfg.out.write_text("\n".join(header) + "\n" + text.lstrip("\n") + "\n")
