#!/usr/bin/env python3
"""`make scenarios`: the seeds' experiments (one, two and four app containers)
run against real `app` and `lb` processes on loopback, written up as
docs/scenarios.md (tables and SVG charts) and target/scenarios/results.json.

  scripts/scenarios.py [--mode full|quick|smoke] [--bin DIR] [--out DIR] [--doc PATH]
                       [--only single,dual,quad]

Modes: full (~15 min on a 2-core box), quick (SCENARIOS_QUICK=1; ~3 min, the
same capacities, shorter runs), smoke (`make test`: tiny capacities and a few
seconds per step, proves the machinery; its numbers mean nothing). The binaries
come from --bin (default target/release; `make scenarios` builds them). Needs
cc (for scripts/bench/openloop.c), wrk and python3's standard library; missing
tools are installed with apt-get when running as root, otherwise named.

results.json has exactly the keys issue 12 lists; raw.json next to it keeps the
per-second series and every probe; scripts/scenarios-report.py reads
results.json against the seeds' criteria.
"""
import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from scenario_lib import doc, dual, quad, single  # noqa: E402
from scenario_lib.load import ROOT, build_openloop  # noqa: E402
from scenario_lib.plan import plan_for  # noqa: E402
from scenario_lib.procs import Reaper  # noqa: E402


def ensure_tools():
    missing = [pkg for tool, pkg in [("cc", "gcc"), ("wrk", "wrk")] if not shutil.which(tool)]
    if not missing:
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"scenarios: installing {' '.join(missing)}", file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    else:
        sys.exit(f"scenarios needs: {' '.join(missing)} (apt-get install {' '.join(missing)})")


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} × {cpu}, {mem:.0f} GiB RAM, Linux {platform.release()}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_mode = "quick" if os.environ.get("SCENARIOS_QUICK") == "1" else "full"
    p.add_argument("--mode", choices=["full", "quick", "smoke"], default=default_mode)
    p.add_argument("--smoke", action="store_true", help="same as --mode smoke")
    p.add_argument("--bin", default=os.path.join(ROOT, "target", "release"))
    p.add_argument("--out", default=os.path.join(ROOT, "target", "scenarios"))
    p.add_argument("--doc", help="default: docs/scenarios.md (smoke: OUT/scenarios.md)")
    p.add_argument("--only", default="single,dual,quad")
    p.add_argument("--doc-only", action="store_true",
                   help="rewrite the doc from OUT/results.json and OUT/raw.json; run nothing")
    args = p.parse_args()
    if args.doc_only:
        with open(os.path.join(args.out, "results.json")) as f:
            results = json.load(f)
        with open(os.path.join(args.out, "raw.json")) as f:
            saved = json.load(f)
        doc_path = args.doc or os.path.join(ROOT, "docs", "scenarios.md")
        doc.write(doc_path, results, saved["raw"], saved["meta"])
        print(f"scenarios: rewrote {doc_path} from {args.out}", file=sys.stderr)
        return
    mode = "smoke" if args.smoke else args.mode
    plan = plan_for(mode)
    plan.bin = os.path.abspath(args.bin)
    for b in ("app", "lb"):
        if not os.access(os.path.join(plan.bin, b), os.X_OK):
            sys.exit(f"scenarios needs {plan.bin}/{b} (make build)")
    ensure_tools()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    os.makedirs(args.out, exist_ok=True)
    doc_path = args.doc or (os.path.join(args.out, "scenarios.md") if mode == "smoke"
                            else os.path.join(ROOT, "docs", "scenarios.md"))
    only = set(args.only.split(","))

    work = tempfile.mkdtemp(prefix="lb-scenarios.")
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    results, raw = {}, {}
    try:
        ol = build_openloop(work)
        for key, mod, tag in [("single_app", single, "single"), ("dual_apps", dual, "dual"),
                              ("quad_apps", quad, "quad")]:
            if tag in only:
                print(f"scenarios: {key} ({mode})", file=sys.stderr, flush=True)
                t = time.monotonic()
                results[key], raw[key] = mod.run(plan, ol, work)
                print(f"scenarios: {key} took {time.monotonic() - t:.0f} s", file=sys.stderr)
    except BaseException:
        print(f"scenarios: failed; configs and logs kept in {work}", file=sys.stderr)
        raise
    finally:
        Reaper.stop_all()
    # lb's and the apps' own logs (warnings, errors) are kept; the per-request
    # load logs are large and already summarised.
    logs = os.path.join(args.out, "logs")
    os.makedirs(logs, exist_ok=True)
    for name in os.listdir(work):
        if (name.startswith(("lb", "app-", "calib-")) and name.endswith((".log", ".toml"))):
            shutil.copy(os.path.join(work, name), logs)
    shutil.rmtree(work, ignore_errors=True)
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "command": "make scenarios" + (" SCENARIOS_QUICK=1" if mode == "quick" else "")
        if mode != "smoke" else "scripts/scenarios.py --smoke",
        "mode": mode,
        "minutes": round((time.monotonic() - started) / 60, 1),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "plan": {k: v for k, v in vars(plan).items() if k != "bin"},
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2, allow_nan=False)
    with open(os.path.join(args.out, "raw.json"), "w") as f:
        json.dump({"meta": meta, "raw": raw}, f)
    if {"single", "dual", "quad"} <= only:
        doc.write(doc_path, results, raw, meta)
        print(f"scenarios: wrote {doc_path}", file=sys.stderr)
    print(f"scenarios: wrote {args.out}/results.json in {meta['minutes']} min", file=sys.stderr)


if __name__ == "__main__":
    main()
