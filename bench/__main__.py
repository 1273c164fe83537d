"""python -m bench [--part NAME]... [--quick] [--rst] [--json FILE] [--wait-idle S]

Runs the benchmark parts (all by default) and prints the run's header (the
command, the machine, the installed front and helper, other load) and one
table on stdout; with --rst also both for README.rst.  Progress goes to
stderr.  Exit status: 0 when every part ran, 1 when one
failed (its row says why), 2 for a bad command line, 125 when not root,
130 when interrupted (what was made is removed first, and the rows measured
so far are printed).
"""

import argparse
import importlib
import json
import os
import platform
import resource
import signal
import sys
import time
import traceback

from .common import (ALLOW, BenchError, Cleanup, Row, Session, busy_processes, cpu_seconds,
                     machine_load, render_rst, render_text)

PARTS = [("helper", "percall"), ("scale", "scale"), ("data", "datapath"),
         ("distcc", "endtoend"), ("setup", "setupcost"), ("sandbox", "gentoo"),
         ("egress", "egress")]


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def wait_idle(sess, seconds):
    """Wait until no other process keeps a CPU busy, at most SECONDS."""
    deadline = time.monotonic() + seconds
    while True:
        busy = busy_processes(interval=1.0)
        if not busy or time.monotonic() > deadline:
            return busy
        sess.log("waiting for the machine to be idle: %s" % ", ".join(busy))


def tree_state():
    """Which code was measured: the checkout's commit, the installed front and
    helper (sha256 and install time)."""
    import hashlib
    import subprocess
    from .common import FRONT, HELPER, REPO
    try:
        head = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                              capture_output=True, text=True).stdout.strip() or "?"
    except OSError:
        head = "?"

    def installed(path):
        try:
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()[:12]
            return "%s (sha256 %s, installed %s)" % (path, digest, time.strftime(
                "%Y-%m-%d %H:%M", time.localtime(os.stat(path).st_mtime)))
        except OSError:
            return "%s: not installed" % path
    return "checkout %s; front %s; helper %s" % (head, installed(FRONT), installed(HELPER))


def header(sess, started, load0, busy0, elapsed, cpu0, argv, state0):
    lines = [
        "$ python3 -m bench %s" % " ".join(argv) if argv else "$ python3 -m bench",
        "cgnetns benchmarks (%s%s): %s, %d CPUs, Linux %s, Python %s" % (
            "quick" if sess.quick else "full", "" if sess.only is None else
            ", parts: " + ",".join(sess.only),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(started)), os.cpu_count(),
            platform.release(), platform.python_version()),
        "load average at start %s, at end %s; run took %.0f s" % (
            load0, machine_load(), elapsed),
    ]
    state = tree_state()
    lines.append(state)
    if state.split("; ", 1)[1] != state0.split("; ", 1)[1]:
        lines.append("THE INSTALLED FRONT OR HELPER CHANGED DURING THE RUN (figures mix both); "
                     "at the start: " + state0.split("; ", 1)[1])
    cpu1 = cpu_seconds()
    others = ((cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1])) / max(elapsed, 1e-9)
    lines.append("CPU used by other processes during the run: %.2f of %d CPUs%s" % (
        max(others, 0.0), os.cpu_count(), " (figures may be noisy)" if others > 0.15 else ""))
    busy = sorted(set(busy0) | set(sess.busy))
    if busy:
        lines.append("other busy processes seen during the run (figures may be noisy): "
                     + ", ".join(busy))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1],
                                allow_abbrev=False)
    p.add_argument("--part", action="append", choices=[n for n, _ in PARTS],
                   help="run only this part (repeatable); default: all")
    p.add_argument("--quick", action="store_true",
                   help="fewer repetitions (a minute or two; figures are noisier)")
    p.add_argument("--rst", action="store_true",
                   help="also print the table as reStructuredText (for README.rst)")
    p.add_argument("--json", metavar="FILE", help="write every row as JSON to FILE")
    p.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                   help="first wait up to SECONDS for other processes to stop using CPU")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        sys.stderr.write("bench: needs root (it makes cgroups, namespaces and mounts)\n")
        return 125

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _interrupt)
    # The scale part keeps 10,000 builds open at once (one record lock each).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    sess = Session(quick=args.quick)
    sess.only = args.part
    busy0 = wait_idle(sess, args.wait_idle) if args.wait_idle else busy_processes()
    started = time.time()
    state0 = tree_state()
    load0 = machine_load()
    cpu0 = cpu_seconds()
    if busy0:
        sess.log("other processes are busy: %s (figures may be noisy)" % ", ".join(busy0))
    busy0 = [b.split("[")[0] for b in busy0]
    failed = interrupted = False
    try:
        with Cleanup() as stack:
            ALLOW.remove(stale=True)
            stack.callback(ALLOW.remove, True)
            sess.compile_tools(stack)
            sess.start_probe_server(stack)
            for name, module in PARTS:
                if args.part and name not in args.part:
                    continue
                mod = importlib.import_module("bench." + module)
                sess.log("part %d (%s) ..." % (mod.PART, name))
                t0 = time.monotonic()
                try:
                    mod.run(sess)
                except Exception as e:  # one part's failure is its own row
                    failed = True
                    if not isinstance(e, BenchError):
                        traceback.print_exc()
                    sess.add(Row(mod.PART, "part %s could not run" % name, na="failed"))
                    sess.note("part %s: %s" % (name, e))
                    sess.log("part %s failed: %s" % (name, e))
                sess.log("part %d (%s) done in %.0f s" % (mod.PART, name, time.monotonic() - t0))
                sess.busy += [b.split("[")[0] for b in busy_processes()]
    except KeyboardInterrupt:
        interrupted = True
        sess.log("interrupted: cleaned up; rows so far follow")

    argv = sys.argv[1:] if argv is None else argv
    head = header(sess, started, load0, busy0, time.time() - started, cpu0, argv, state0)
    print(head)
    print()
    print(render_text(sess.rows))
    if sess.allow_rewrites:
        sess.note("the allow list was rewritten by other processes during the run: %d loops "
                  "were run again with the benchmark's entries put back." % sess.allow_rewrites)
    if sess.broker_restarts:
        sess.note("the broker in use went away during %d measurements (another engineer's test "
                  "stopping its own); each was taken again with a broker answering." %
                  sess.broker_restarts)
    if sess.notes:
        print()
        for k, n in enumerate(sess.notes, 1):
            print("[%d] %s" % (k, n))
    if args.rst:
        # For README.rst, verbatim: the run's header as a literal block, then
        # the table.
        print()
        print("::")
        print()
        print("\n".join("    " + line for line in head.splitlines()))
        print()
        print(render_rst(sess.rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"started": started, "quick": sess.quick, "rows": [r.as_dict() for r in
                                                                          sess.rows],
                       "notes": sess.notes, "load_start": load0, "busy_start": busy0,
                       "raw": sess.raw}, f, indent=1)
    if interrupted:
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
