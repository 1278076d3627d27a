#!/usr/bin/env python3
"""Summaries of fstests runs for scripts/xfstests.

  xfstests-summary.py parse CHECK.LOG           -> JSON {ran, not_run, failures} on stdout
  xfstests-summary.py report EXPECTED FS=JSON...  -> Markdown report; lines starting with
                                                   UNEXPECTED name kmsfs failures that are not
                                                   in the expected-failures list
"""
import json
import sys


def parse(path):
    ran, not_run, failures = [], [], []
    with open(path, errors="replace") as f:
        for line in f:
            for key, into in (("Ran:", ran), ("Not run:", not_run), ("Failures:", failures)):
                if line.startswith(key):
                    into.extend(line[len(key):].split())
    # A run cut short (timeout) has no summary lines: take the per-test lines instead.
    if not ran:
        with open(path, errors="replace") as f:
            for line in f:
                words = line.split()
                if words and "/" in words[0] and words[0].split("/")[0] in ("generic", "shared"):
                    test = words[0]
                    if "[not run]" in line:
                        not_run.append(test)
                    elif "[failed" in line or "- output mismatch" in line:
                        ran.append(test)
                        failures.append(test)
                    elif len(words) > 1:
                        ran.append(test)
    # fstests lists not-run tests under "Ran:" too: they did not run.
    ran = sorted(set(ran) - set(not_run))
    return {"ran": ran, "not_run": sorted(set(not_run)), "failures": sorted(set(failures))}


def expected(path):
    out = {}
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].rstrip() if line.lstrip().startswith("#") else line.rstrip()
            if not line.strip():
                continue
            test, _, reason = line.strip().partition(" ")
            out[test] = reason.strip()
    return out


def report(expected_path, runs):
    exp = expected(expected_path)
    res = {}
    for arg in runs:
        fs, _, path = arg.partition("=")
        with open(path) as f:
            res[fs] = json.load(f)
    lines = ["| file system | ran | passed | failed | not run |", "|---|---|---|---|---|"]
    for fs, r in res.items():
        lines.append("| %s | %d | %d | %d | %d |" % (fs, len(r["ran"]), len(r["ran"]) - len(r["failures"]),
                                                    len(r["failures"]), len(r["not_run"])))
    lines.append("")
    k = res.get("kmsfs")
    if k:
        unexpected = [t for t in k["failures"] if t not in exp]
        fixed = [t for t in exp if t in k["ran"] and t not in k["failures"]]
        for t in k["failures"]:
            lines.append("- kmsfs fails %s: %s" % (t, exp.get(t, "NOT IN scripts/xfstests.expected")))
        lines.append("")
        for t in fixed:
            lines.append("- %s passes now: remove it from scripts/xfstests.expected" % t)
        g = res.get("gocryptfs")
        if g:
            worse = [t for t in k["failures"] if t in g["ran"] and t not in g["failures"]]
            better = [t for t in g["failures"] if t in k["ran"] and t not in k["failures"]]
            lines.append("")
            lines.append("- fail on kmsfs, pass on gocryptfs: %s" % (" ".join(worse) or "none"))
            lines.append("- fail on gocryptfs, pass on kmsfs: %s" % (" ".join(better) or "none"))
        for t in unexpected:
            lines.append("UNEXPECTED failure on kmsfs: %s" % t)
    print("\n".join(lines))


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "parse":
        json.dump(parse(sys.argv[2]), sys.stdout)
        print()
    elif len(sys.argv) >= 4 and sys.argv[1] == "report":
        report(sys.argv[2], sys.argv[3:])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
