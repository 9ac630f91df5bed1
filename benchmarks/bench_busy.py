"""Search and ``--duplicates`` latency on a machine shared with other jobs: the commands' default
thread choice against every ``--threads`` setting, with ``--busy`` other processes (a spinning
Python loop each) running, and on an idle machine.

    python -m benchmarks.bench_busy --busy 2 --json benchmarks/results/busy.json

It indexes the clips the installed packages ship (``hapvr.data.media.clip_paths``) once, then
runs ``python -m hapvr.search`` as a user would and reads the time the command itself prints
(search: coarse stage + exact scoring of one query; ``--duplicates``: coarse stage + scoring),
``--repeats`` times per row, each a fresh process. ``OMP_WAIT_POLICY=`` (empty: OpenMP's own
default, spin then sleep) gives the rows of the commands before they asked for passive waiting.
The target: the default within 1.5x of the best ``--threads`` row under load.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import _harness as H
from hapvr.data.media import clip_paths
from hapvr.runtime import available_cores

TARGET = 1.5
SPIN = "while True:\n    pass\n"


def run(cmd: list[str], env: dict | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", *cmd], capture_output=True, text=True, cwd=H.ROOT,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    return proc.stdout


def seconds(out: str) -> float:
    """The milliseconds the command printed last, in seconds."""
    return float(re.findall(r"(\d+) ms", out)[-1]) / 1000


def measure(index: Path, query: str, threads: int | None, repeats: int, env: dict | None) -> dict:
    extra = [] if threads is None else ["--threads", str(threads)]
    search = [seconds(run(["hapvr.search", "--index", str(index), query, "--no-segments", *extra], env))
              for _ in range(repeats)]
    dups = [seconds(run(["hapvr.search", "--index", str(index), "--duplicates", *extra], env)) for _ in range(repeats)]
    return {"search_s": search, "duplicates_s": dups}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--busy", type=int, default=2, help="other processes spinning while the loaded rows run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workdir", help="where the index is built (default: a temporary folder)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="hapvr-busy-"))
    clips = work / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    for path in clip_paths().values():
        shutil.copy(path, clips)
    index = work / "clips.index"
    if not (index / "manifest.json").exists():
        run(["hapvr.index", "build", "--videos", str(clips), "--index", str(index), "--no-progress"])
    query = str(clips / "v2s.mov")
    cores = available_cores()
    settings = [("default", None, None)] + [(f"--threads {n}", n, None) for n in range(1, cores + 1)]
    # the commands before 2026-12-07: every core, and OpenMP's own waiting (spin, then sleep)
    settings += [(f"before: --threads {cores}, OpenMP's own waiting", cores, {"OMP_WAIT_POLICY": ""})]
    rows, results = [], {}
    for busy in (0, args.busy):
        hogs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy)]
        try:
            for name, threads, env in settings:
                r = measure(index, query, threads, args.repeats, env)
                results[f"{busy} busy, {name}"] = r
                rows.append([str(busy), name] + [f"{statistics.median(r[k]):.3f} ({min(r[k]):.3f}-{max(r[k]):.3f})"
                                                 for k in ("search_s", "duplicates_s")])
        finally:
            for h in hogs:
                h.kill()
    verdict = {}
    for busy in (0, args.busy):
        for k in ("search_s", "duplicates_s"):
            best = min(statistics.median(results[f"{busy} busy, --threads {n}"][k]) for n in range(1, cores + 1))
            ratio = statistics.median(results[f"{busy} busy, default"][k]) / best
            verdict[f"{busy} busy {k}"] = round(ratio, 2)
            rows.append([str(busy), f"default / best --threads ({k[:-2]})", f"{ratio:.2f}",
                         "PASS" if ratio <= TARGET else "FAIL"])
    H.print_table(["busy processes", "setting", "search s, median (min-max)", "--duplicates s, median (min-max)"],
                  [r + [""] * (4 - len(r)) for r in rows])
    if args.json:
        H.write_json(args.json, {"date": datetime.date.today().isoformat(), "machine": platform.processor() or
                                 platform.machine(), "cores": cores, "load_before": os.getloadavg(),
                                 "command": " ".join(["python -m benchmarks.bench_busy", *(argv or sys.argv[1:])]),
                                 "results": results, "default_over_best": verdict, "target": TARGET})
    return 0 if all(v <= TARGET for k, v in verdict.items() if not k.startswith("0 ")) else 1


if __name__ == "__main__":
    sys.exit(main())
