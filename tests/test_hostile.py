"""Hostile clients against a real cgnetnsd (THREATS 15 and 25), the short
versions of `python -m stress --hostile` (stress/hostile.py says what each
does).  The broker runs on a private socket with its default caps
(--max-pending-per-uid 128, --max-pending 256) and the installed helper.
After every test the broker is alive, serves a valid request, and its
descriptor count and RSS are back where they started; everything made (the
broker, by its pid; the test directory; the allow-list line; the build of
the join test) is removed, also when a test fails."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from stress import common, hostile  # noqa: E402
from stress.common import HANDSHAKE_SECONDS  # noqa: E402


@pytest.fixture
def daemon():
    with common.Cleanup() as cl:
        tdir = common.make_tdir(cl, "hostile")
        common.allow_probe(cl)
        path = os.path.join(tdir, "cgnetnsd.sock")
        d = common.Daemon(cl, socket_path=path, tdir=tdir,
                          log=os.path.join(tdir, "cgnetnsd.log"))
        assert hostile.valid_request(path), d.text()
        d.path = path
        d.start_fds, d.start_rss = d.idle_fds(), d.rss()
        yield d
        assert d.alive(), "cgnetnsd died: " + d.text()[-2000:]
        assert hostile.valid_request(path), "no valid request served afterwards"
        assert d.settle_fds(d.start_fds, 2 * HANDSHAKE_SECONDS + 5) == d.start_fds, \
            "cgnetnsd holds descriptors it did not hold before"
        assert d.rss() <= d.start_rss + hostile.RSS_SLACK_KIB, (d.start_rss, d.rss())


def _problems(res, key):
    """The problems stress/hostile.py finds in res[KEY] (only that part)."""
    part = {"errors": [], "alive": True, "valid_after": True, "fds_start": 0, "fds_end": 0,
            key: res[key]}
    return hostile.problems(part)


def test_malformed_truncated_and_oversized_requests(daemon):
    """200 hypothesis-made requests (bad magic or flags, empty, too long or
    NUL-holding names, lengths that lie, truncated, split, with up to 253
    descriptors): each is answered with one well-formed line (never "join":
    we are in no build) or closed, within the deadline; valid requests are
    served between them.  A request announcing and streaming 4 MiB is refused
    after its header, and the broker's RSS does not move."""
    res = {}
    hostile.fuzz_requests(daemon.path, 200, daemon, res, check_every=50)
    f = res["fuzz"]
    assert f["cases"] == 200 and f["valid_checks"] == 4, f
    assert not _problems(res, "fuzz"), f
    rss = daemon.rss()
    hostile.oversized(daemon.path, res)
    assert res["oversize"]["answer"] == "refuse 125 bad request: program name of %d bytes" \
        % (4 << 20), res["oversize"]
    # 4 MiB were streamed: a broker that kept them would grow by that much
    assert daemon.rss() <= rss + 1024, ("the broker kept what a client streamed", rss,
                                        daemon.rss())


def test_descriptors_sent_before_a_header_are_never_received(daemon):
    """253 descriptors of a memfd of its own with the first byte, the first 8
    bytes, or all but the last bytes of a request: once the helper has read
    those bytes (our send queue is empty) no process but the sender holds the
    memfd, the request is still served when completed, and the broker holds
    no more descriptors than before."""
    res = {}
    hostile.fds_before_header(daemon.path, 6, res)
    d = res["fds"]
    assert d["read_by_helper"] == 6, d
    assert d["held_by_others"] == [], "a descriptor was received: %r" % d
    assert d["served"] == 6, d
    assert daemon.settle_fds(daemon.start_fds) == daemon.start_fds


def test_a_flood_from_another_uid_does_not_lock_out_the_build_user(daemon):
    """200 connections from uid 4242, each holding an unfinished request: at
    most 128 (its --max-pending-per-uid) get a helper and are closed at its
    deadline; the rest wait in that uid's queue and are answered busy when
    they have waited as long.  None lives past twice the deadline, and the
    build user (nobody) is served first try, within 2 s, all along."""
    res = {}
    hostile.flood_from_other_uid(daemon.path, 200, res)
    f = res["flood"]
    assert not _problems(res, "flood"), f
    assert f["still_open"] == 0 and f["longest_s"] <= 2 * HANDSHAKE_SECONDS + 2, f
    assert f["build_user_served"] == f["build_user_tries"] == 3, f
    assert f["build_user_slowest_s"] <= 2, f


def test_slow_clients_are_closed_at_the_deadline_and_others_served(daemon):
    """8 clients sending a byte every 0.75 s are closed by the helper's
    deadline (5 s); 4 that send their request within it are served; the build
    user is served meanwhile."""
    res = {}
    hostile.slow_clients(daemon.path, res)
    s = res["slow"]
    assert not _problems(res, "slow"), s
    assert s["slowloris_closed"] == 8 and s["patient_served"] == 4 and s["others_served"] == 3, s
    lo, hi = s["slowloris_closed_after_s"]
    assert HANDSHAKE_SECONDS - 0.5 <= lo and hi <= 2 * HANDSHAKE_SECONDS + 1, s


def test_a_client_stalled_after_join_is_closed_at_the_deadline(daemon):
    """A client in a real build gets "join" and never sends its listener: the
    supervisor's own deadline ends it (nothing is left in the build), and the
    broker, which counted the request only until its helper started the
    supervisor, is not involved."""
    res = {}
    hostile.join_stalled(daemon.path, res)
    j = res["join_stalled"]
    assert not _problems(res, "join_stalled"), j
    assert j["answer"] == repr(b"join %s\n" % common.PROBE.encode()), j
