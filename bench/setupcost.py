"""Part 5 (setup): what making and removing a build costs.

* In-process, as Portage would call it once per phase:
  ``Build(name=...).create()`` (record and lock, cgroup, pin, tag) then
  ``close()`` (kill what is left, untag, unpin, remove cgroup and record),
  timed with time.perf_counter; baseline: the bare cgroup2 mkdir + rmdir a
  build needs anyway.
* As a command: ``cgnetns-run true`` and ``cgnetns-run --unshare-net true``
  (Python start-up and imports included) against ``unshare -n true``, each
  a loop of calls inside one spawnloop process, as root, with a cgnetnsd
  answering (cgnetns-run starts one when none does).
"""

import os
import time

from cgnetns import cgroups
from cgnetns.build import Build

from .common import (TRUE, Cleanup, Row, command, loop, median, ms, signals_held,
                     start_outside)

PART = 5
NAME = "setup"


def run(sess):
    n_lib = sess.pick(400, 100)
    n_cmd = sess.pick(30, 10)
    rounds = sess.pick(3, 1)
    root = cgroups.find_cgroup2()
    parent = os.path.join(root, cgroups.CGNETNS_SUBTREE)
    lib, bare = [], []
    with Cleanup() as stack:
        for _ in range(rounds):
            for _ in range(n_lib):
                b = Build(name="bench-setup")
                with signals_held():    # never leave a half-made build behind
                    t0 = time.perf_counter()
                    b.create()
                    t1 = time.perf_counter()
                    b.close()
                    t2 = time.perf_counter()
                lib.append((t1 - t0, t2 - t1))
            path = os.path.join(parent, "bench-setup-bare-%d" % os.getpid())
            stack.callback(_rmdir_quiet, path)
            k = 0
            while k < n_lib:
                # The parent may go with the last build's close() (ours or
                # anyone's): made again, and that sample taken again.
                cgroups.ensure_dir(parent)
                t0 = time.perf_counter()
                try:
                    os.mkdir(path)
                except FileNotFoundError:
                    continue
                os.rmdir(path)
                bare.append(time.perf_counter() - t0)
                k += 1
        # cgnetns-run starts a cgnetnsd when none answers: have one answering,
        # as on a host that runs the service, so that each run only checks.
        broker = sess.broker
        why = broker.start()
        if why:
            sess.note("setup: no broker (%s): each cgnetns-run tried to start one" % why)
        run_cmd = command("cgnetns-run")
        cmds = [["/usr/bin/unshare", "-n", TRUE], run_cmd + [TRUE],
                run_cmd + ["--unshare-net", TRUE]]
        got = {"unshare": [], "run": [], "run-net": []}
        for _ in range(rounds):
            for k, samples in zip(got, loop(sess, start_outside, cmds, n_cmd, warm=2,
                                            what="cgnetns-run")):
                got[k] += samples
        py = loop(sess, start_outside, [_interpreter(run_cmd), "-c", "pass"], n_cmd, warm=2,
                  what="python")

    total = median([a + b for a, b in lib]) * 1e3
    sess.add(
        Row(PART, "library: Build().create() + close(), in-process", total,
            n=len(lib), baseline="cgroup mkdir + rmdir", baseline_value=median(bare) * 1e3,
            target="< 5 ms", met=total < 5.0),
        Row(PART, "cgnetns-run true", ms(got["run"]), n=len(got["run"]),
            baseline="unshare -n true", baseline_value=ms(got["unshare"])),
        Row(PART, "cgnetns-run --unshare-net true", ms(got["run-net"]), n=len(got["run-net"]),
            baseline="unshare -n true", baseline_value=ms(got["unshare"])),
    )
    sess.note("setup: create %.3f ms + close %.3f ms (medians); the interpreter alone "
              "(%s -c pass) starts in %.1f ms." % (
                  median([a for a, _ in lib]) * 1e3, median([b for _, b in lib]) * 1e3,
                  os.path.basename(_interpreter(run_cmd)), ms(py)))


def _interpreter(run_cmd):
    """The interpreter cgnetns-run runs on (its shebang, when installed)."""
    if run_cmd[0].endswith("cgnetns-run"):
        with open(run_cmd[0], "rb") as f:
            line = f.readline()
        if line.startswith(b"#!"):
            return line[2:].decode().split()[0]
    return run_cmd[0]


def _rmdir_quiet(path):
    try:
        os.rmdir(path)
    except OSError:
        pass
