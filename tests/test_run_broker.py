"""cgnetns-run starts a broker for its builds when none answers (issue 4:
"cgnetns-run works on a host where no broker runs"), and a no_new_privs
build's allow-listed program reaches the approved namespace through it.

The broker path leaves the program in the build's own namespace (readlink
/proc/self/ns/net shows the sandbox) and makes its AF_INET sockets in the
approved one: the join is observed by a TCP connect from the netprobe to a
token server in the approved (the test's own) namespace.  Both tests need the
system broker socket free (cgnetns-run asks that one); other tests on this
machine may use it briefly, so each waits up to 20 s for it, then fails, and
a run that another test's broker answered after all is made again (the broker
our run starts is told from others by a mark in its environment, which it
inherits from cgnetns-run)."""

import contextlib
import os
import secrets
import signal
import sys
import time
import types
import warnings

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from stress import common  # noqa: E402

from cgnetns import records  # noqa: E402
from cgnetns.cli import run as run_cli  # noqa: E402

from conftest import CGNETNS_RUN, repo_env, run  # noqa: E402

@pytest.fixture
def probe():
    """The netprobe (allow-listed), a token server in our namespace, and a
    directory for reports; all removed at the end."""
    with common.Cleanup() as cl:
        tdir = common.make_tdir(cl, "runbroker")
        p = types.SimpleNamespace(netprobe=common.build_netprobe(cl, tdir),
                                  token="APPROVED-" + secrets.token_hex(4))
        p.port = common.TokenServers(cl).add(p.token)
        p.report = os.path.join(tdir, "out", "report.json")
        yield p


def _script(p):
    return ("readlink /proc/self/ns/net; setpriv --no-new-privs %s %s report %s --connect=%d"
            % (common.HELPER, p.netprobe, p.report, p.port))


MARK = "CGNETNS_TEST_RUN_BROKER"


def _marked_brokers(mark):
    """PIDs of cgnetnsd processes whose environment has MARK=<its value>: the
    broker cgnetns-run starts keeps cgnetns-run's environment, so this finds
    the one our run started and no other engineer's."""
    want = ("%s=%s" % (MARK, mark)).encode()
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                if b"cgnetns.cli.broker" not in f.read():
                    continue
            with open("/proc/%s/environ" % d, "rb") as f:
                if want in f.read().split(b"\0"):
                    found.append(int(d))
        except OSError:
            pass
    return found


def _live_builds():
    return [r for r in records.list_records() if records.record_is_live(r)]


def _stop(pid):
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while os.path.exists("/proc/%d" % pid) and time.monotonic() < deadline:
        time.sleep(0.02)   # it removes its socket on the way out
    if os.path.exists("/proc/%d" % pid):
        os.kill(pid, signal.SIGKILL)


def _run_alone(probe, extra=(), attempts=3):
    """cgnetns-run ... sh -c SCRIPT with the system socket free when it
    starts; other tests on this machine may start a broker meanwhile (then
    our run's call is theirs to answer, and nothing can be concluded): such a
    run is made again, up to ATTEMPTS times.  Returns (result, our brokers,
    report); our brokers are stopped by the caller."""
    for _ in range(attempts):
        common.wait_system_socket_free(20)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(probe.report)
        mark = secrets.token_hex(8)
        env = repo_env(**{MARK: mark})
        env.pop("CGNETNS_RUN_NO_BROKER", None)
        r = run(CGNETNS_RUN + list(extra) + ["--unshare-net", "--user", "nobody", "--", "sh",
                                             "-c", _script(probe)], env=env)
        ours = _marked_brokers(mark)
        foreign = not ours and b"no broker at" not in r.stderr
        if not foreign:
            return r, ours, common.read_json(probe.report)
    pytest.fail("a broker of another test served the system socket during each of %d runs"
                % attempts)


def test_cgnetns_run_starts_a_broker_for_a_no_new_privs_build(probe):
    pids = []
    try:
        r, pids, got = _run_alone(probe)
        assert r.returncode == 0, r.stderr
        assert r.stderr == b""
        assert len(pids) == 1, "cgnetns-run started %d brokers" % len(pids)
        own = r.stdout.decode().strip()
        assert own != os.readlink("/proc/self/ns/net")   # the sandbox, not the approved one
        assert got is not None, "the program did not run"
        # the program stayed in the sandbox; its socket was made in the approved namespace
        assert "net:[%d]" % got["netns"][1] == own
        assert got["connect"] == "token:" + probe.token, got["connect"]
        assert got["uid"] == 65534
        # With no live build left on the host it exits by itself (--idle-exit).
        # Builds of other tests on this machine keep it (rightly) alive: then
        # that part cannot be seen here, and a warning says so.
        last_busy = time.monotonic()
        give_up = last_busy + run_cli.BROKER_IDLE_EXIT + 6
        while os.path.exists("/proc/%d" % pids[0]):
            now = time.monotonic()
            if _live_builds():
                last_busy = now
            assert now - last_busy < run_cli.BROKER_IDLE_EXIT + 4, \
                "broker did not exit when idle"
            if now > give_up:
                warnings.warn("other builds on this host kept the broker from idling: "
                              "its --idle-exit was not observed")
                break
            time.sleep(0.2)
    finally:
        for pid in pids:
            _stop(pid)


def test_no_broker_option_leaves_no_new_privs_programs_without_network(probe):
    r, pids, got = _run_alone(probe, ["--no-broker"])
    for pid in pids:
        _stop(pid)
    assert pids == [], "--no-broker started a broker"
    assert r.returncode == 0, r.stderr
    own = r.stdout.decode().strip()
    assert got is not None, "the program did not run"
    assert "net:[%d]" % got["netns"][1] == own          # pass-through: still the sandbox
    assert got["connect"] == "connect:111", got["connect"]   # nothing listens there
    assert b"runs without network" in r.stderr and r.stderr.count(b"\n") == 1, r.stderr
