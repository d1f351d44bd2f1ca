#!/usr/bin/env python3
"""Reads target/scenarios/results.json (from `make scenarios`) against the seeds'
success criteria and prints one line per criterion:

  met      001  P95 at 1,000 req/s from 100 clients: 11.2 ms (< 200 ms)

  scripts/scenarios-report.py [RESULTS] [--strict]

Exit status 0 unless --strict is given and a criterion is not met (a result
is a measurement, not a test: `make test` only checks the machinery runs).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from scenario_lib.criteria import evaluate  # noqa: E402


def main():
    args = [a for a in sys.argv[1:] if a != "--strict"]
    path = args[0] if args else os.path.join(os.path.dirname(__file__), "..", "target",
                                             "scenarios", "results.json")
    with open(path) as f:
        results = json.load(f)
    rows = evaluate(results)
    for status, seed, what, value, threshold in rows:
        print(f"{status:<8} {seed}  {what}: {value} ({threshold})")
    met = sum(1 for r in rows if r[0] == "met")
    judged = sum(1 for r in rows if r[0] in ("met", "not met", "missing"))
    print(f"{met} of {judged} criteria met")
    if "--strict" in sys.argv and met < judged:
        sys.exit(1)


if __name__ == "__main__":
    main()
