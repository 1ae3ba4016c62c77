"""Time the start of `cxrgen serve`: seconds until the page answers, and until the model is ready.

    .venv/bin/python tools/demo_startup.py [--runs 3] [--model DIR] [--cpus 0,1]

Each run spawns `python -m cxrgen.cli serve` on a free port, polls the page until it answers HTTP
200 (page up) and reads the "model ready" line, then stops the server. Besides wall time it records
the CPU time (user + system) the server process used by then: on a busy shared machine wall time
is inflated by other processes, while CPU time is what the start costs. ``--cpus 0,1`` pins the
server to two cores (Linux ``taskset``). Prints one JSON object (medians, every run, load average).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

TICKS = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (its threads included), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15 of proc(5))


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def time_one_start(model: str | None, cpus: str | None, limit_s: float = 300) -> dict[str, float]:
    """Start one server; wall and CPU seconds until the page answers and until the model is ready."""
    port = _free_port()
    cmd = [sys.executable, "-m", "cxrgen.cli", "serve", "--port", str(port)] + (["--model", model] if model else [])
    if cpus:
        cmd = [shutil.which("taskset") or "taskset", "-c", cpus] + cmd
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        while not _answers(f"http://127.0.0.1:{port}/"):
            if proc.poll() is not None or time.perf_counter() - start > limit_s:
                raise SystemExit(f"cxrgen serve did not come up (exit {proc.poll()})")
            time.sleep(0.05)
        result = {"page_up_s": time.perf_counter() - start, "page_up_cpu_s": _cpu_seconds(proc.pid)}
        for line in proc.stdout:
            if "model ready" in line:
                break
        result.update(model_ready_s=time.perf_counter() - start, model_ready_cpu_s=_cpu_seconds(proc.pid))
        return {k: round(v, 2) for k, v in result.items()}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", help="model directory (default: the packaged model)")
    parser.add_argument("--cpus", help="pin the server to these cores, e.g. 0,1 (taskset)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    runs = [time_one_start(args.model, args.cpus) for _ in range(args.runs)]
    medians = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
    print(json.dumps({"median": medians, "runs": runs, "cores": os.cpu_count(), "pinned": args.cpus,
                      "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}, indent=2))


if __name__ == "__main__":
    main()
