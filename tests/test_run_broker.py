"""cgnetns-run starts a broker for its builds when none answers (issue 4: "cgnetns-run
works on a host where no broker runs"), and a no_new_privs build reaches the
approved namespace through it."""

import os
import re
import signal
import time

import pytest

from cgnetns.cli import run as run_cli

from conftest import CGNETNS_RUN, repo_env, run

ALLOW = "/etc/cgnetns/allow"
LOG = run_cli.BROKER_LOG


@pytest.fixture
def readlink_allowed():
    with open(ALLOW) as f:
        saved = f.read()
    st = os.stat(ALLOW)
    try:
        if "/usr/bin/readlink\n" not in saved:
            with open(ALLOW, "a") as f:
                f.write("/usr/bin/readlink\n")
        yield
    finally:
        with open(ALLOW, "w") as f:
            f.write(saved)
        os.chmod(ALLOW, st.st_mode & 0o7777)


def _broker_pids_from_log(offset):
    try:
        with open(LOG) as f:
            f.seek(offset)
            text = f.read()
    except FileNotFoundError:
        return []
    return [int(p) for p in re.findall(r"serving .* \(pid (\d+)\)", text)]


def test_cgnetns_run_starts_a_broker_for_a_no_new_privs_build(readlink_allowed):
    # This machine kind starts no broker; the test needs to see one started.
    assert not run_cli.broker_answers(), "a cgnetnsd is already serving the system socket"
    offset = os.path.getsize(LOG) if os.path.exists(LOG) else 0
    env = repo_env()
    env.pop("CGNETNS_RUN_NO_BROKER", None)
    pids = []
    try:
        r = run(CGNETNS_RUN + ["--unshare-net", "--user", "nobody", "--", "sh", "-c",
                               "readlink /proc/self/ns/net; "
                               "setpriv --no-new-privs cgnetns-exec readlink /proc/self/ns/net"],
                env=env)
        pids = _broker_pids_from_log(offset)
        assert r.returncode == 0, r.stderr
        own, joined = r.stdout.decode().split()
        assert joined == os.readlink("/proc/self/ns/net")   # the approved (parent) netns
        assert own != joined
        assert r.stderr == b""
        assert len(pids) == 1
        # With no build left it exits by itself (--idle-exit).
        deadline = time.monotonic() + run_cli.BROKER_IDLE_EXIT + 10
        while time.monotonic() < deadline and os.path.exists("/proc/%d" % pids[0]):
            time.sleep(0.2)
        assert not os.path.exists("/proc/%d" % pids[0]), "broker did not exit when idle"
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(250):  # it removes its socket on the way out
                if not os.path.exists("/proc/%d" % pid):
                    break
                time.sleep(0.02)


def test_no_broker_option_leaves_no_new_privs_programs_without_network(readlink_allowed):
    assert not run_cli.broker_answers()
    env = repo_env()
    env.pop("CGNETNS_RUN_NO_BROKER", None)
    r = run(CGNETNS_RUN + ["--no-broker", "--unshare-net", "--user", "nobody", "--", "sh", "-c",
                           "readlink /proc/self/ns/net; "
                           "setpriv --no-new-privs cgnetns-exec readlink /proc/self/ns/net"],
            env=env)
    assert r.returncode == 0, r.stderr
    own, ran = r.stdout.decode().split()
    assert ran == own                        # pass-through: still the sandbox
    assert b"runs without network" in r.stderr and r.stderr.count(b"\n") == 1
    assert not run_cli.broker_answers()
