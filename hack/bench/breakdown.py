#!/usr/bin/env python3
"""hack/bench/breakdown.py DAEMON_JSON_LOG — where berth's time went in a benchmark run.

Reads a daemon log written with `[log] format = "json"` and BERTH_LOG=berth=debug (the benchmarks do so with
BERTH_BENCH_BREAKDOWN=1) and prints p50 / p90 of
- each RPC's server-side time (`rpc finished`, `elapsed_ms`), by method;
- each step of RunPodSandbox (`pod sandbox steps`), CreateContainer (`container made`), RemoveContainer
  (`container removal steps`) and RemovePodSandbox's own part (`pod sandbox removal steps`), as src/step_clock.rs
  logs them (`steps = "name=ms ..."`); for RunPodSandbox also the CNI step's time outside the plugins.
"""
import json
import statistics
import sys


def p90(values):
    return sorted(values)[int(0.9 * (len(values) - 1))]


def show(title, table):
    if not table:
        return
    print(f"  {title}, p50 / p90 ms:")
    for name, values in table.items():
        print(f"    {name:<28} {statistics.median(values):7.2f} / {p90(values):7.2f}  (n={len(values)})")


rpcs = {}
tables = {
    "pod sandbox steps": ("RunPodSandbox steps", {}),
    "container made": ("CreateContainer steps", {}),
    "container removal steps": ("RemoveContainer steps", {}),
    "pod sandbox removal steps": ("RemovePodSandbox steps (after its containers)", {}),
}
for line in open(sys.argv[1]):
    try:
        event = json.loads(line)
    except ValueError:
        continue
    message = event.get("message")
    if message == "rpc finished":
        method = event.get("span", {}).get("method", "?")
        rpcs.setdefault(method, []).append(event["elapsed_ms"])
    elif message in tables:
        laps = {name: float(ms) for name, ms in (pair.split("=") for pair in event["steps"].split())}
        table = tables[message][1]
        for name, ms in laps.items():
            table.setdefault(name, []).append(ms)
        if "cni" in laps and "plugins_ms" in event:
            table.setdefault("cni outside the plugins", []).append(laps["cni"] - event["plugins_ms"])

show("RPCs as the daemon saw them", {m: v for m, v in rpcs.items() if m not in ("Version", "Status")})
for title, table in tables.values():
    show(title, table)
