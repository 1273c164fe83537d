"""Shared fixtures.  Tests run as root against the real kernel; every fixture
removes what it made, also when the test fails."""

import os
import subprocess
import sys

import pytest

from cgnetns import cgroups, namespaces, records

PY = sys.executable  # python3 on PATH may be a slow pyenv shim (FIELD-NOTES.md)
# Probes that run as an unprivileged user cannot use the interpreter under
# /root (0700): they use Debian's own python3 and its standard library only.
USER_PY = "/usr/bin/python3"
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def pytest_configure(config):
    # cgnetns-run starts a system cgnetnsd when none answers; tests that need
    # one start their own (on a private socket or by PID) and stop it.
    os.environ["CGNETNS_RUN_NO_BROKER"] = "1"
    # `make check-unit` (-m unit) runs the tests that need no root.
    if os.geteuid() != 0 and config.getoption("-m") != "unit":
        raise pytest.UsageError("the cgnetns tests need root (they make cgroups, "
                                "namespaces and mounts); run them with sudo")


@pytest.fixture(scope="session")
def cg2root():
    return cgroups.find_cgroup2()


def host_state(root=None):
    """What cgnetns leaves on the host: build cgroups, pins, records, pin mounts."""
    root = root or cgroups.find_cgroup2()
    cgs = set()
    base = os.path.join(root, cgroups.CGNETNS_SUBTREE)
    if os.path.isdir(base):
        cgs = {d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d))}
    pins = set()
    pd = namespaces.pins_dir()
    if os.path.isdir(pd):
        pins = {n for n in os.listdir(pd) if n != records.GLOBAL_LOCK}
    return {"cgroups": cgs, "pins": pins, "mounts": set(namespaces.pin_mounts())}


@pytest.fixture
def clean_host(request):
    """Assert that a test leaves no cgnetns state behind that it did not find.

    A test module may set LEAK_PREFIX (a string or tuple) to the names its builds
    use; only those are checked, so that builds of other suites running on the
    same host at the same time do not count.
    """
    prefix = getattr(request.module, "LEAK_PREFIX", "")
    before = host_state()
    yield before
    after = host_state()
    for key in after:
        new = {x for x in after[key] - before[key] if os.path.basename(x).startswith(prefix)}
        assert not new, "left behind %s: %s" % (key, new)


def run(cmd, **kw):
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("timeout", 60)
    return subprocess.run(cmd, **kw)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Commands of this checkout, run with the real interpreter.
CGNETNS_RUN = [PY, "-m", "cgnetns.cli.run"]


def fault_run(point):
    """cgnetns-run that SIGKILLs itself at fault point POINT (tests/fault_run.py)."""
    return [PY, os.path.join(REPO, "tests", "fault_run.py"), point]


def repo_env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env
