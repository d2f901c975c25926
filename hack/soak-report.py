#!/usr/bin/env python3
"""hack/soak-report.py — reads the soak's CSV (hack/soak.sh), says whether each figure levels off, plots them.

Usage: soak-report.py CSV [--plot PNG] [--warmup-minutes N]

The first rows are warm-up (caches fill, the allocator finds its size): the first sixth of the run, at most
10 minutes, unless --warmup-minutes says otherwise. The rest is cut in thirds; a figure levels off when the
median of the last third exceeds the median of the first third by no more than its tolerance (relative or
absolute, whichever is larger; the absolute part keeps small counts from failing on one extra fd). Prints a
Markdown table of the figures and exits 1 if any keeps growing. With --plot, draws them (matplotlib).
"""

import argparse
import csv
import statistics
import sys

# column: (label, unit divisor, unit, relative tolerance, absolute tolerance in the unit)
RESOURCES = {
    "daemon_rss_kib": ("daemon RSS", 1024, "MiB", 0.10, 2.0),
    "standing_shim_rss_kib": ("shim RSS (standing pods, each)", 1024, "MiB", 0.10, 0.5),
    "daemon_fds": ("daemon open fds", 1, "", 0.10, 8),
    "standing_shim_fds": ("shim open fds (each)", 1, "", 0.10, 2),
    "daemon_threads": ("daemon threads", 1, "", 0.25, 4),
    "runtime_tasks": ("daemon tokio tasks", 1, "", 0.25, 10),
    "redb_bytes": ("database size", 1024 * 1024, "MiB", 0.25, 1.0),
}
LATENCIES = ["RunPodSandbox", "StartContainer", "ExecSession", "PortForward", "StopPodSandbox", "RemovePodSandbox",
             "ListContainerStats"]
LATENCY_TOLERANCE = (0.50, 5.0)  # p50, ms


def number(text):
    return float(text) if text not in ("", None) else None


def median_of(rows, column, divisor=1):
    values = [number(r[column]) for r in rows if number(r.get(column)) is not None]
    return statistics.median(values) / divisor if values else None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("csv")
    parser.add_argument("--plot")
    parser.add_argument("--warmup-minutes", type=float)
    args = parser.parse_args()
    with open(args.csv) as f:
        rows = list(csv.DictReader(f))
    if len(rows) < 6:
        sys.exit(f"soak-report: {len(rows)} rows in {args.csv}; need at least 6 samples to judge")
    minutes = [number(r["seconds"]) / 60 for r in rows]
    warmup = args.warmup_minutes if args.warmup_minutes is not None else min(10.0, minutes[-1] / 6)
    steady = [r for r, m in zip(rows, minutes) if m > warmup]
    third = max(1, len(steady) // 3)
    first, last = steady[:third], steady[-third:]

    growing = []
    print(f"| figure | after warm-up ({warmup:.3g} min) | last third | growth | levels off |")
    print("|---|---|---|---|---|")

    def judge(label, before, after, unit, relative, absolute):
        if before is None or after is None:
            print(f"| {label} | - | - | - | not measured |")
            return
        grew = after - before
        ok = grew <= max(relative * before, absolute)
        print(f"| {label} | {before:.2f} {unit} | {after:.2f} {unit} | {grew:+.2f} | {'yes' if ok else 'NO'} |")
        if not ok:
            growing.append(label)

    for column, (label, divisor, unit, relative, absolute) in RESOURCES.items():
        judge(label, median_of(first, column, divisor), median_of(last, column, divisor), unit, relative, absolute)
    for step in LATENCIES:
        judge(f"{step} p50", median_of(first, f"{step}_p50_ms"), median_of(last, f"{step}_p50_ms"), "ms",
              *LATENCY_TOLERANCE)
    cycles = sum(int(r["cycles"]) for r in rows)
    skipped = sum(int(r["skipped"]) for r in rows)
    errors = int(rows[-1]["errors"])
    print(f"\n{cycles} pod cycles in {minutes[-1]:.0f} min ({cycles / minutes[-1]:.1f} a minute), "
          f"{skipped} skipped for lack of a free worker, {errors} failed steps")

    if args.plot:
        plot(rows, minutes, warmup, args.plot)
        print(f"plot: {args.plot}")
    if growing:
        sys.exit(f"soak-report: still growing after the warm-up: {', '.join(growing)}")


def plot(rows, minutes, warmup, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(column, divisor=1):
        return [number(r[column]) / divisor if number(r[column]) is not None else float("nan") for r in rows]

    fig, axes = plt.subplots(2, 3, figsize=(15, 8), constrained_layout=True)
    panels = [
        ("memory (MiB)", [("daemon RSS", "daemon_rss_kib", 1024), ("shim RSS, each standing pod", "standing_shim_rss_kib", 1024),
                          ("database size", "redb_bytes", 1024 * 1024)]),
        ("open fds", [("daemon", "daemon_fds", 1), ("shim, each standing pod", "standing_shim_fds", 1)]),
        ("threads and tasks", [("daemon threads", "daemon_threads", 1), ("daemon tokio tasks", "runtime_tasks", 1),
                               ("shims alive", "shims", 1)]),
        ("pod start, p50 and p99 (ms)", [("RunPodSandbox p50", "RunPodSandbox_p50_ms", 1),
                                         ("RunPodSandbox p99", "RunPodSandbox_p99_ms", 1),
                                         ("StartContainer p50", "StartContainer_p50_ms", 1),
                                         ("StartContainer p99", "StartContainer_p99_ms", 1)]),
        ("teardown and streaming, p50 (ms)", [("StopPodSandbox", "StopPodSandbox_p50_ms", 1),
                                              ("RemovePodSandbox", "RemovePodSandbox_p50_ms", 1),
                                              ("Exec session", "ExecSession_p50_ms", 1),
                                              ("PortForward session", "PortForward_p50_ms", 1)]),
        # A row covers one sampling interval, the first row's time.
        ("pods cycled per minute", [("cycles", "cycles", minutes[0]), ("skipped", "skipped", minutes[0])]),
    ]
    for ax, (title, lines) in zip(axes.flat, panels):
        for label, column, divisor in lines:
            ax.plot(minutes, series(column, divisor), label=label)
        ax.axvspan(0, warmup, color="0.9", label="warm-up")
        ax.set_title(title)
        ax.set_xlabel("minutes")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("berth soak: pods run, exec'd, port-forwarded, logged and removed at a steady rate")
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    main()
