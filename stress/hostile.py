"""Hostile input at volume against a real cgnetnsd on a private socket
(THREATS.md 15): hypothesis-driven malformed requests, a flood of simultaneous
connections, slow clients, descriptor floods.  Between and after them the
daemon must keep serving a valid request; its fd count must return to where it
started; its RSS is reported."""

import os
import socket
import struct
import time

from cgnetns.broker import HEADER, encode_request

from . import common
from .common import PROBE

VALID_ARGV = [PROBE, "/proc/self/ns/net"]


def _sendmsg(sock, data, fds=()):
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("%di" % len(fds), *fds))] if fds else []
    return sock.sendmsg([data], anc)


def _answer(sock, timeout):
    """Everything the broker sends until it closes, or None on timeout."""
    sock.settimeout(timeout)
    got = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            b = sock.recv(4096)
            if not b:
                return got
            got += b
    except socket.timeout:
        return None
    except OSError:
        return got


def valid_request(path, timeout=15):
    """Send one valid request (the peer, this process, is in no build: the answer
    is "pass /usr/bin/readlink"); True when it is served."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        s.settimeout(timeout)
        s.connect(path)
        hdr, payload = encode_request(VALID_ARGV, [b"PATH=/usr/bin:/bin"], [-1])
        _sendmsg(s, hdr + payload, [cwd])
        ans = _answer(s, timeout)
        return ans is not None and ans.startswith(b"pass " + PROBE.encode())
    except OSError:
        return False
    finally:
        os.close(cwd)
        s.close()


def valid_with_retry(path, within):
    """Served within WITHIN seconds, retrying when dropped; (served, tries, seconds)."""
    t0 = time.monotonic()
    tries = 0
    while True:
        tries += 1
        if valid_request(path):
            return True, tries, time.monotonic() - t0
        if time.monotonic() - t0 > within:
            return False, tries, time.monotonic() - t0
        time.sleep(0.1)


# ---------------------------------------------------------------------------
# hypothesis: malformed, truncated, oversized requests

def fuzz_requests(path, cases, daemon, res, seed=None):
    from hypothesis import HealthCheck, given, settings, strategies as st

    valid_hdr, valid_payload = encode_request(VALID_ARGV, [b"A=1"], [-1])
    strings = st.lists(st.binary(max_size=40), min_size=0, max_size=6)

    @st.composite
    def request(draw):
        kind = draw(st.sampled_from(["structured", "mutated", "raw"]))
        if kind == "structured":
            argv = draw(strings)
            env = draw(strings)
            nums = draw(st.lists(st.integers(-5, 1100), max_size=5))
            fdnums = ([-1] if draw(st.booleans()) else []) + nums
            body = b"".join(a + b"\0" for a in argv + env)
            if draw(st.booleans()):
                body = draw(st.binary(max_size=80))
            payload = struct.pack("=II", draw(st.sampled_from([len(argv), 0, 1, 70000, 2**32 - 1])),
                                  draw(st.sampled_from([len(env), 0, 70000]))) + \
                struct.pack("=%di" % len(fdnums), *fdnums) + body
            length = draw(st.sampled_from([len(payload), len(payload) + 1, max(0, len(payload) - 1),
                                           0, 7, 4 << 20, (4 << 20) + 1, 2**32 - 1]))
            nfds_hdr = draw(st.sampled_from([len(fdnums), 0, 1, 65, 66, 2**32 - 1]))
            magic = draw(st.sampled_from([b"CGN1", b"CGN2", b"\0\0\0\0"]))
            flags = draw(st.sampled_from([0, 0, 1, 2**31]))
            data = HEADER.pack(magic, length, nfds_hdr, flags) + payload
        elif kind == "mutated":
            data = bytearray(valid_hdr + valid_payload)
            for _ in range(draw(st.integers(1, 6))):
                i = draw(st.integers(0, len(data) - 1))
                data[i] = draw(st.integers(0, 255))
            data = bytes(data)
        else:
            data = draw(st.binary(max_size=200))
        cut = draw(st.sampled_from([None, None, 0, 1, 15, 16, 17]))
        if cut is not None:
            data = data[:cut]
        nfds = draw(st.sampled_from([0, 1, 1, 1, 2, 65, 66, 200]))
        split = draw(st.booleans())
        return data, nfds, split

    counters = {"cases": 0, "answered": 0, "closed": 0, "hung": 0}

    @settings(max_examples=cases, deadline=None, database=None, derandomize=seed is not None,
              suppress_health_check=list(HealthCheck), phases=None if False else
              [__import__("hypothesis").Phase.generate])
    @given(request())
    def case(req):
        data, nfds, split = req
        counters["cases"] += 1
        fds = [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in range(nfds)]
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.connect(path)
            try:
                if split and len(data) > 1:
                    _sendmsg(s, data[:len(data) // 2], fds[:1])
                    _sendmsg(s, data[len(data) // 2:], fds[1:])
                elif data or fds:
                    _sendmsg(s, data or b"\0", fds)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            ans = _answer(s, 15)
            if ans is None:
                counters["hung"] += 1
            elif ans:
                counters["answered"] += 1
            else:
                counters["closed"] += 1
        finally:
            s.close()
            for fd in fds:
                os.close(fd)
        assert daemon.alive(), "cgnetnsd died"
        if counters["cases"] % 500 == 0:
            assert valid_request(path), "a valid request was not served after %d cases" % counters["cases"]

    case()
    res["fuzz"] = counters


# ---------------------------------------------------------------------------
# floods

def connection_flood(path, n, res, within):
    """N connections at once, each holding an incomplete request open."""
    socks = []
    refused = 0
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            s.settimeout(2)
            try:
                s.connect(path)
                s.send(b"CGN1")   # a header that never ends
            except OSError:
                refused += 1
            socks.append(s)
        first = valid_request(path, timeout=5)
        served, tries, secs = valid_with_retry(path, within)
        res["flood"] = {"connections": n, "dropped_at_connect": refused,
                        "valid_first_try": first, "valid_served": served,
                        "valid_tries": tries, "valid_seconds": round(secs, 2)}
    finally:
        for s in socks:
            s.close()


def slow_clients(path, n, res, byte_interval):
    """N clients each sending a valid request a few bytes at a time; valid
    requests from others are served meanwhile."""
    import threading
    hdr, payload = encode_request(VALID_ARGV, [b"SLOW=1"], [-1])
    data = hdr + payload
    results = []

    def slow():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            s.connect(path)
            _sendmsg(s, data[:1], [cwd])
            for i in range(1, len(data), 4):
                time.sleep(byte_interval)
                s.send(data[i:i + 4])
            results.append(_answer(s, 20))
        except OSError:
            results.append(b"")
        finally:
            os.close(cwd)
            s.close()

    threads = [threading.Thread(target=slow) for _ in range(n)]
    for t in threads:
        t.start()
    during = [valid_request(path) for _ in range(5)]
    for t in threads:
        t.join()
    res["slow"] = {"clients": n, "served": sum(1 for r in results if r and r.startswith(b"pass")),
                   "dropped": sum(1 for r in results if not r),
                   "valid_during": sum(during), "valid_tries": len(during)}


def fd_flood(path, rounds, res):
    """Requests carrying the most descriptors one message may carry (253), more
    than announced, spread over messages, and left unread."""
    sent = 0
    for i in range(rounds):
        fds = [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in range(253)]
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.connect(path)
            hdr, payload = encode_request(VALID_ARGV, [], [-1])
            try:
                if i % 3 == 0:
                    _sendmsg(s, hdr + payload, fds)
                elif i % 3 == 1:
                    _sendmsg(s, hdr, fds[:60])
                    _sendmsg(s, payload, fds[60:120])
                else:
                    _sendmsg(s, hdr[:8], fds)   # and then nothing: held until the deadline
                sent += len(fds)
            except OSError:
                pass
            if i % 3 != 2:
                _answer(s, 5)
        finally:
            s.close()
            for fd in fds:
                os.close(fd)
    res["fdflood"] = {"requests": rounds, "descriptors_sent": sent,
                      "valid_after": valid_request(path)}


def run(cases=300, connections=1000, slow=40, fdrounds=60, request_timeout=None,
        max_connections=None):
    res = {"errors": []}
    with common.Cleanup() as cl:
        tdir = common.make_tdir(cl, "hostile")
        common.allow_probe(cl)
        path = os.path.join(tdir, "cgnetnsd.sock")
        extra = []
        if request_timeout is not None:
            extra += ["--request-timeout", str(request_timeout)]
        if max_connections is not None:
            extra += ["--max-connections", str(max_connections)]
        daemon = common.Daemon(cl, socket_path=path, tdir=tdir, extra=extra,
                               log=os.path.join(tdir, "cgnetnsd.log"))
        rt = request_timeout or 10.0
        assert valid_request(path), "the fresh daemon does not serve a valid request"
        time.sleep(0.2)
        res["fds_start"], res["rss_start"] = daemon.fds(), daemon.rss()
        t0 = time.monotonic()
        steps = [("fuzz", lambda: fuzz_requests(path, cases, daemon, res)),
                 ("flood", lambda: connection_flood(path, connections, res, rt + 5)),
                 ("slow", lambda: slow_clients(path, slow, res, 0.02)),
                 ("fdflood", lambda: fd_flood(path, fdrounds, res))]
        for name, fn in steps:
            try:
                fn()
            except Exception as e:
                res["errors"].append("%s: %s: %s" % (name, type(e).__name__, e))
            if not daemon.alive():
                res["errors"].append("cgnetnsd died during %s" % name)
                break
        res["duration"] = time.monotonic() - t0
        res["valid_after"] = valid_with_retry(path, rt + 5)[0]
        res["fds_end"] = daemon.settle_fds(res["fds_start"], timeout=rt + 5)
        res["rss_end"] = daemon.rss()
        res["alive"] = daemon.alive()
        with open(os.path.join(tdir, "cgnetnsd.log"), "rb") as f:
            log = f.read()
        res["log_lines"] = log.count(b"\n")
        res["log_too_many"] = log.count(b"too many connections")
    return res


def ok(res):
    return (not res["errors"] and res["alive"] and res["valid_after"]
            and res["fds_end"] == res["fds_start"]
            and res.get("fuzz", {}).get("hung", 1) == 0
            and res.get("flood", {}).get("valid_served")
            and res.get("slow", {}).get("valid_during") == res.get("slow", {}).get("valid_tries")
            and res.get("fdflood", {}).get("valid_after"))


def report(res, out=print):
    out("cgnetnsd under hostile input (%.1f s)" % res.get("duration", 0))
    if "fuzz" in res:
        f = res["fuzz"]
        out("  hypothesis requests: %d cases, %d answered, %d closed, %d hung"
            % (f["cases"], f["answered"], f["closed"], f["hung"]))
    if "flood" in res:
        f = res["flood"]
        out("  %d simultaneous connections: valid request served first try: %s; served: %s "
            "(%d tries, %.1f s)" % (f["connections"], f["valid_first_try"], f["valid_served"],
                                    f["valid_tries"], f["valid_seconds"]))
    if "slow" in res:
        f = res["slow"]
        out("  %d slow clients: %d served, %d dropped; valid requests meanwhile %d/%d"
            % (f["clients"], f["served"], f["dropped"], f["valid_during"], f["valid_tries"]))
    if "fdflood" in res:
        f = res["fdflood"]
        out("  fd flood: %d requests, %d descriptors; valid request after: %s"
            % (f["requests"], f["descriptors_sent"], f["valid_after"]))
    out("  daemon alive: %s; valid request after all: %s" % (res.get("alive"), res.get("valid_after")))
    out("  fds start/end: %s/%s; RSS start/end: %s/%s KiB"
        % (res.get("fds_start"), res.get("fds_end"), res.get("rss_start"), res.get("rss_end")))
    for e in res["errors"]:
        out("ERROR: %s" % e)
