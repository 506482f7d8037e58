#!/usr/bin/env python3
"""Mutation check: applies each mutation of mutations.py to a copy of the tree,
rebuilds incrementally, runs the tests it names and expects them to FAIL. Prints a
table; exits 1 if any mutation survives (its tests still pass) or no longer applies.

    python3 tests/mutation/run.py                 # all
    python3 tests/mutation/run.py --only watchdog # names containing the word

Run by hand or nightly, not in every CI run (each mutation rebuilds one library and
may run integration tests). The copy lives in $BERTH_MUTATION_DIR (default
/tmp/berth-mutation) and is reused, so the first build is the only long one."""

import argparse
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from mutations import MUTATIONS  # noqa: E402


def sh(cmd, cwd, env=None, quiet=True):
    out = subprocess.run(cmd, cwd=cwd, env=env, shell=isinstance(cmd, str), capture_output=quiet, text=True)
    return out.returncode, (out.stdout or "") + (out.stderr or "")


def copy_tree(dest):
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        src, dst = os.path.join(ROOT, f), os.path.join(dest, f)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if not os.path.exists(dst) or open(src, "rb").read() != open(dst, "rb").read():
            shutil.copy2(src, dst)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    work = os.environ.get("BERTH_MUTATION_DIR", "/tmp/berth-mutation")
    os.makedirs(work, exist_ok=True)
    copy_tree(work)
    build = os.path.join(work, "build")
    rc, out = sh(["cmake", "-S", work, "-B", build, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=RelWithDebInfo"], work)
    if rc != 0:
        sys.exit("configure failed:\n" + out)
    targets = ["berth", "berth_unit_tests"]
    rc, out = sh(["cmake", "--build", build, "--target", *targets], work)
    if rc != 0:
        sys.exit("the unmutated tree does not build:\n" + out[-3000:])

    results = []
    for m in MUTATIONS:
        if args.only and args.only.lower() not in m["name"].lower():
            continue
        path = os.path.join(work, m["file"])
        original = open(path).read()
        if original.count(m["find"]) != 1:
            results.append((m["name"], "STALE: the text to replace is not in the file exactly once"))
            continue
        try:
            open(path, "w").write(original.replace(m["find"], m["replace"]))
            rc, out = sh(["cmake", "--build", build, "--target", *targets], work)
            if rc != 0:
                results.append((m["name"], "STALE: does not build"))
                continue
            caught = []
            if m.get("unit"):
                rc, _ = sh([os.path.join(build, "tests", "berth_unit_tests"), f"--gtest_filter={m['unit']}"], build)
                caught.append(rc != 0)
            if m.get("integration"):
                env = dict(os.environ, BERTH_BIN=os.path.join(build, "proxy", "berth"))
                ids = [os.path.join(work, "tests", "integration", t) for t in m["integration"]]
                rc, _ = sh(["/usr/bin/python3", "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *ids], work, env)
                caught.append(rc != 0)
            results.append((m["name"], "caught" if caught and all(caught) else "SURVIVED"))
        finally:
            open(path, "w").write(original)
    sh(["cmake", "--build", build, "--target", *targets], work)  # leave the copy unmutated

    width = max(len(n) for n, _ in results) if results else 0
    for name, verdict in results:
        print(f"{name.ljust(width)}  {verdict}")
    sys.exit(0 if all(v == "caught" for _, v in results) else 1)


if __name__ == "__main__":
    main()
