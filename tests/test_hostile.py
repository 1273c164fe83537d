"""Hostile input against a real cgnetnsd on a private socket (issue 8,
THREATS.md 15), short versions of `python -m stress --hostile`:
hypothesis-driven malformed requests, a flood of simultaneous connections
(more than --max-connections), slow clients, descriptor floods.  The daemon
keeps serving valid requests; its fd count returns to its start."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from stress import common, hostile  # noqa: E402

TIMEOUT = 2  # --request-timeout: bounds how long a flood can hold the slots


@pytest.fixture
def daemon():
    with common.Cleanup() as cl:
        tdir = common.make_tdir(cl, "hostile")
        common.allow_probe(cl)
        path = os.path.join(tdir, "cgnetnsd.sock")
        d = common.Daemon(cl, socket_path=path, tdir=tdir,
                          extra=["--request-timeout", str(TIMEOUT), "--max-connections", "64"],
                          log=os.path.join(tdir, "cgnetnsd.log"))
        assert hostile.valid_request(path)
        d.path = path
        d.start_fds = d.fds()
        yield d
        assert d.alive(), "cgnetnsd died"
        assert hostile.valid_request(path), "no valid request served afterwards"
        assert d.settle_fds(d.start_fds, TIMEOUT + 5) == d.start_fds, "cgnetnsd leaked fds"


def test_hypothesis_requests(daemon):
    res = {}
    hostile.fuzz_requests(daemon.path, 300, daemon, res)
    assert res["fuzz"]["cases"] >= 300 and res["fuzz"]["hung"] == 0, res


def test_connection_flood_locks_out_for_at_most_the_request_timeout(daemon):
    res = {}
    hostile.connection_flood(daemon.path, 300, res, within=TIMEOUT + 5)
    f = res["flood"]
    assert f["valid_served"] and f["valid_seconds"] <= TIMEOUT + 5, f


def test_connection_flood_valid_request_first_try(daemon):
    """A flood of idle connections beyond --max-connections does not lock a
    well-behaved client out: the broker evicts the oldest incomplete one."""
    res = {}
    hostile.connection_flood(daemon.path, 300, res, within=TIMEOUT + 5)
    assert res["flood"]["valid_first_try"], res["flood"]


def test_slow_clients(daemon):
    res = {}
    hostile.slow_clients(daemon.path, 20, res, 0.01)
    s = res["slow"]
    assert s["valid_during"] == s["valid_tries"], s
    assert s["served"] + s["dropped"] == 20, s


def test_slowloris_is_dropped_at_the_deadline(daemon):
    """Clients slower than the request timeout are dropped; the rest are served."""
    res = {}
    hostile.slow_clients(daemon.path, 5, res, 0.2)   # ~1 KiB request at 4 bytes/0.2 s
    s = res["slow"]
    assert s["dropped"] == 5 and s["valid_during"] == s["valid_tries"], s


def test_fd_flood(daemon):
    res = {}
    hostile.fd_flood(daemon.path, 12, res)
    assert res["fdflood"]["valid_after"], res
