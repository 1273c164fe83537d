#!/usr/bin/env python3
"""make mutants: do the helper's tests notice a single-point bug?

For each mutant of tools/mutants_table.py (the set-user-ID path's and the
broker path's): apply it to a COPY of this checkout (the working tree as it
is, without .git and build directories), check that the copy's helper still
builds and that the mutant changed the binary, then run the mutant's tests
with pytest in the copy, so that every helper the tests build from helper/
(HelperEnv's private variants, and so the broker's side that the private
cgnetnsd of tests/test_helper_threats.py runs) carries the bug.  The
installed helper and the system's broker are never touched.  A mutant is
KILLED when one of its tests fails, SURVIVED when they all pass; anything
else (the pattern does not match exactly once, the mutant does not build or
changes nothing, pytest could not run the tests) is an ERROR.  First the same
tests run on the unmutated copy (the baseline), which must pass.

    python3 tools/mutants.py [--list] [--only NAME]... [--no-baseline] [--keep]

Exit status 0 only when every mutant was killed.  Runs as root (the tests
do); not part of `make check`.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

from mutants_table import BROKER, MUTANTS  # noqa: E402

IGNORE = shutil.ignore_patterns(".git", "build", "__pycache__", "*.egg-info", ".pytest_cache",
                                "*.pyc")
PYTEST_TIMEOUT = 900


class Failure(Exception):
    pass


def path_of(m):
    """Which path the mutant is on (its section of tools/mutants_table.py)."""
    return "broker" if any(m is b for b in BROKER) else "set-user-ID"


def check_patterns(mutants):
    """Every `old` occurs exactly once in its file of this checkout."""
    bad = []
    names = set()
    for m in mutants:
        if m.name in names:
            bad.append("%s: the name is used twice" % m.name)
        names.add(m.name)
        path = os.path.join(REPO, m.file)
        try:
            with open(path) as f:
                n = f.read().count(m.old)
        except OSError as e:
            bad.append("%s: %s" % (m.name, e))
            continue
        if n != 1:
            bad.append("%s: the pattern occurs %d times in %s (must be exactly once): %r"
                       % (m.name, n, m.file, m.old))
        if not m.tests:
            bad.append("%s: no tests" % m.name)
    if bad:
        raise Failure("tools/mutants_table.py no longer matches the code; update it:\n  "
                      + "\n  ".join(bad))


def build_helper(tree, work):
    """Build the musl helper of tree/helper as the tests build their
    variants (private paths compiled in); returns its bytes."""
    b = os.path.join(work, "build-check")
    shutil.rmtree(b, ignore_errors=True)
    cmd = ["make", "-s", "-C", os.path.join(tree, "helper"), "B=" + b,
           "ALLOW_PATH=" + os.path.join(work, "etc", "allow"),
           "PINS_DIR=" + os.path.join(work, "run", "pins"),
           "BROKER_SOCKET=" + os.path.join(work, "run", "cgnetnsd.sock"), "musl"]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    if r.returncode != 0:
        raise Failure("the helper does not build:\n" + r.stdout.decode(errors="replace")[-3000:])
    with open(os.path.join(b, "musl", "cgnetns-exec"), "rb") as f:
        data = f.read()
    shutil.rmtree(b)
    return data


def run_pytest(tree, tests, log):
    """pytest -x on tests in tree; (return code, failed ids, errored ids).
    In a session of its own; interrupted with SIGINT (so that its fixtures
    clean up) on timeout or Ctrl-C, SIGKILLed only if that does not end it."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-rfE", "-p", "no:cacheprovider"] + tests
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    with open(log, "wb") as out:
        p = subprocess.Popen(cmd, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            p.wait(PYTEST_TIMEOUT)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            os.killpg(p.pid, signal.SIGINT)
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            raise
    failed, errored, first_e = [], [], ""
    with open(log, errors="replace") as f:
        for line in f:
            if not first_e and line.startswith("E  "):
                first_e = line[1:].strip()
            if line.startswith("FAILED "):
                failed.append(line[7:].split(" - ")[0].strip())
            elif line.startswith("ERROR "):
                errored.append(line[6:].split(" - ")[0].strip())
    return p.returncode, failed, errored, first_e


def tail(path, n=40):
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-n:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="print the table and exit")
    ap.add_argument("--only", action="append", metavar="NAME", help="run this mutant (repeatable)")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the run of the tests on the unmutated copy")
    ap.add_argument("--keep", action="store_true", help="keep the copy and the logs")
    args = ap.parse_args(argv)

    mutants = MUTANTS
    if args.only:
        unknown = set(args.only) - {m.name for m in MUTANTS}
        if unknown:
            ap.error("no such mutant: %s" % ", ".join(sorted(unknown)))
        mutants = [m for m in MUTANTS if m.name in args.only]
    try:
        check_patterns(MUTANTS)
    except Failure as e:
        print("mutants: %s" % e, file=sys.stderr)
        return 2
    if args.list:
        for m in mutants:
            print("%-44s %-11s %-18s %s" % (m.name, path_of(m), m.file, m.why))
            for t in m.tests:
                print("    %s" % t)
        return 0
    if os.geteuid() != 0:
        print("mutants: the tests need root", file=sys.stderr)
        return 2

    start = time.monotonic()
    work = tempfile.mkdtemp(prefix="cgnetns-mutants-", dir="/var/tmp")
    os.chmod(work, 0o755)
    tree = os.path.join(work, "tree")
    logs = os.path.join(work, "logs")
    results = []
    try:
        shutil.copytree(REPO, tree, ignore=IGNORE, symlinks=True)
        os.mkdir(logs)
        print("mutants: copy of %s in %s" % (REPO, tree), flush=True)
        pristine = build_helper(tree, work)
        if not args.no_baseline:
            union = list(dict.fromkeys(t for m in mutants for t in m.tests))
            t0 = time.monotonic()
            log = os.path.join(logs, "baseline.log")
            rc, failed, errored, _ = run_pytest(tree, union, log)
            print("mutants: baseline (%d tests, unmutated): %s in %.0f s"
                  % (len(union), "passed" if rc == 0 else "FAILED", time.monotonic() - t0),
                  flush=True)
            if rc != 0:
                print(tail(log), file=sys.stderr)
                print("mutants: the tests fail without any mutant; fix that first",
                      file=sys.stderr)
                return 2
        for m in mutants:
            t0 = time.monotonic()
            path = os.path.join(tree, m.file)
            with open(path) as f:
                original = f.read()
            log = os.path.join(logs, m.name + ".log")
            killed_by, note, assertion = "", "", ""
            try:
                with open(path, "w") as f:
                    f.write(original.replace(m.old, m.new, 1))
                try:
                    if build_helper(tree, work) == pristine:
                        raise Failure("the mutant does not change the helper binary")
                    rc, failed, errored, assertion = run_pytest(tree, list(m.tests), log)
                except Failure as e:
                    result, note = "ERROR", str(e)
                else:
                    if failed:
                        result, killed_by = "killed", failed[0]
                    elif rc == 0:
                        result = "SURVIVED"
                    else:
                        result = "ERROR"
                        note = "pytest exit status %d, errors: %s" % (rc, ", ".join(errored))
            finally:
                with open(path, "w") as f:
                    f.write(original)
            secs = time.monotonic() - t0
            results.append((m, result, killed_by, secs))
            print("mutants: %-44s %-8s %5.1f s  %s" % (m.name, result, secs, killed_by or note),
                  flush=True)
            if assertion and result == "killed":
                print("mutants: %44s first: %s" % ("", assertion[:160]), flush=True)
            if result != "killed" and os.path.exists(log):
                print(tail(log), flush=True)
    except KeyboardInterrupt:
        print("mutants: interrupted", file=sys.stderr)
        return 130
    except Failure as e:
        print("mutants: %s" % e, file=sys.stderr)
        return 2
    finally:
        if args.keep:
            print("mutants: kept %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print("%-44s %-11s %-18s %-8s %7s  %s" % ("mutant", "path", "file", "result", "seconds",
                                              "killed by"))
    for m, result, killed_by, secs in results:
        print("%-44s %-11s %-18s %-8s %7.1f  %s" % (m.name, path_of(m), m.file, result, secs,
                                                    killed_by.replace("tests/", "", 1)))
    killed = sum(1 for r in results if r[1] == "killed")
    print("\n%d mutants: %d killed, %d survived, %d errors; %.0f s in all"
          % (len(results), killed, sum(1 for r in results if r[1] == "SURVIVED"),
             sum(1 for r in results if r[1] == "ERROR"), time.monotonic() - start))
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
