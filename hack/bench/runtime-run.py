#!/usr/bin/env python3
"""hack/bench/runtime-run.py — `berth runtime run` vs Debian's runc on the same busybox bundle.

Builds a bundle (busybox-static rootfs, `runc spec` with terminal off and args ["/bin/true"]), then times
`<runtime> --root <tmp> run <id>` end to end (create, start, wait, delete), alternating berth and runc so
both see the same machine state, N runs each (default 50). Prints median and p90 per runtime and the ratio.

Usage: hack/bench/runtime-run.py [--berth target/release/berth] [--runs 50]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time


def percentile(values, fraction):
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def make_bundle(directory):
    rootfs = os.path.join(directory, "rootfs")
    for sub in ("bin", "proc", "sys", "dev", "etc", "tmp"):
        os.makedirs(os.path.join(rootfs, sub), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(rootfs, "bin/busybox"))
    os.symlink("busybox", os.path.join(rootfs, "bin/true"))
    subprocess.run(["runc", "spec"], cwd=directory, check=True)
    import json
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        spec = json.load(f)
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/true"]
    with open(path, "w") as f:
        json.dump(spec, f)


def time_run(command, cwd):
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {result.stderr.decode(errors='replace')}")
    return elapsed * 1000


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--berth", default="target/release/berth")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    berth = os.path.abspath(args.berth)
    with tempfile.TemporaryDirectory(prefix="berth-bench-") as work:
        bundle = os.path.join(work, "bundle")
        os.makedirs(bundle)
        make_bundle(bundle)
        runtimes = {
            "berth": lambda i: [berth, "runtime", "--root", os.path.join(work, "berth-state"), "run", f"b{i}"],
            "runc": lambda i: ["runc", "--root", os.path.join(work, "runc-state"), "run", f"r{i}"],
        }
        # One warm-up run each: page cache, binary loading.
        for name, command in runtimes.items():
            time_run(command("warmup"), bundle)
        samples = {name: [] for name in runtimes}
        for i in range(args.runs):
            for name, command in runtimes.items():
                samples[name].append(time_run(command(i), bundle))
        runc_version = subprocess.run(["runc", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
        print(f"runtime run of /bin/true, busybox bundle, {args.runs} runs each, alternating")
        print(f"{'runtime':<22} {'median ms':>10} {'p90 ms':>10}")
        for name in runtimes:
            label = name if name == "berth" else runc_version
            print(f"{label:<22} {statistics.median(samples[name]):>10.1f} {percentile(samples[name], 0.9):>10.1f}")
        ratio = statistics.median(samples["berth"]) / statistics.median(samples["runc"])
        print(f"berth/runc median ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
