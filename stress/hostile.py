"""Hostile clients against a real cgnetnsd on a private socket (THREATS 15
and 25), at volume (``python -m stress --hostile``) and in short
(tests/test_hostile.py).

The broker reads nothing: it accepts, counts requests in progress per uid
(--max-pending-per-uid, default 128) and in all (--max-pending, 256), keeps a
connection over either cap waiting in its uid's queue (answered busy after
HANDSHAKE_SECONDS), and hands each one it serves to the helper's fork server,
whose child reads the request with recv() (descriptors sent with it are
discarded by the kernel) under a deadline of HANDSHAKE_SECONDS.
So:

fuzz      hypothesis-made requests (bad magic and flags, names empty, too
          long, with NUL, lengths that lie, truncated, split, with up to 253
          descriptors): each one is answered with a well-formed line or closed,
          within the deadline; a valid request is served between them
fds       descriptors sent before (and with) the header are never received:
          no process but the sender holds them while the helper waits for the
          rest of the request
flood     N connections from ANOTHER uid (4242), each holding an unfinished
          request: at most --max-pending-per-uid of them get a helper (closed
          at the deadline), the rest wait and are answered busy, and the build user
          (nobody) is served first try meanwhile
slow      clients that dribble their request past the deadline are closed by
          it; slow ones within it are served; others are served meanwhile
oversize  a request announcing and streaming 4 MiB: refused after its header,
          the broker's RSS does not move
After all of them the broker still serves, and its descriptor count and RSS
are back where they started.
"""

import json
import os
import re
import select
import socket
import struct
import subprocess
import threading
import time

from cgnetns.broker import HANDSHAKE_SECONDS, HEADER, MAGIC, NAME_MAX, encode_request

from . import common
from .common import PROBE, USER_PY

VALID = encode_request(PROBE)
PASS = b"pass " + PROBE.encode() + b"\n"
ANSWER_RE = re.compile(rb"\A(pass /[^\n]*\n|refuse \d{1,3}( [^\n]*)?\n)\Z")
ATTACKER_UID = 4242
BUILD_UID = 65534
SCM_MAX_FD = 253          # descriptors one message may carry (Linux)
SIOCOUTQ = 0x5411         # bytes we sent that the peer has not read yet


def _sendmsg(sock, data, fds=()):
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("%di" % len(fds), *fds))] if fds else []
    return sock.sendmsg([data], anc)


def read_until_closed(sock, timeout):
    """Everything the broker sends until the connection closes, or None when
    it is still open after TIMEOUT seconds."""
    got = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            sock.settimeout(left)
            b = sock.recv(4096)
            if not b:
                return got
            got += b
    except socket.timeout:
        return None
    except OSError:
        return got


def ask(path, data, timeout=2 * HANDSHAKE_SECONDS + 2, fds=()):
    """Send DATA (with FDS), end our side, return the answer (None: no
    close within TIMEOUT)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.settimeout(timeout)
        s.connect(path)
        try:
            if data or fds:
                _sendmsg(s, data or b"\0", fds)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        return read_until_closed(s, timeout)
    finally:
        s.close()


def valid_request(path, timeout=2 * HANDSHAKE_SECONDS + 2):
    """One valid request from this process (root, in no build): served when
    the answer is "pass PROBE"."""
    try:
        return ask(path, VALID, timeout) == PASS
    except OSError:
        return False


# A valid request as another user: (answer, seconds), printed as JSON.
_CLIENT = r"""
import json, socket, sys, time
t = time.monotonic()
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(float(sys.argv[3]))
ans = b""
try:
    s.connect(sys.argv[1])
    s.sendall(bytes.fromhex(sys.argv[2]))
    while True:
        b = s.recv(4096)
        if not b:
            break
        ans += b
except OSError as e:
    ans += ("<%s>" % e).encode()
print(json.dumps([ans.decode(errors="replace"), time.monotonic() - t]))
"""


def valid_as(path, uid, timeout=2 * HANDSHAKE_SECONDS + 2):
    """A valid request from a process of UID (in no build): (served, seconds
    from connect to the answer, answer)."""
    r = subprocess.run(["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid, "--clear-groups",
                        "--", USER_PY, "-c", _CLIENT, path, VALID.hex(), str(timeout)],
                       capture_output=True, timeout=timeout + 30, cwd="/")
    try:
        ans, secs = json.loads(r.stdout)
    except ValueError:
        return False, None, (r.stdout + r.stderr).decode(errors="replace")
    return ans.encode() == PASS, secs, ans


# ---------------------------------------------------------------------------
# hypothesis: malformed, truncated, oversized requests

def fuzz_requests(path, cases, daemon, res, check_every=100):
    from hypothesis import HealthCheck, Phase, given, settings, strategies as st

    names = st.one_of(
        st.binary(max_size=60),
        st.sampled_from([PROBE.encode(), os.path.basename(PROBE).encode(), b"/usr/bin/../bin/readlink",
                         b"/", b"", b"x" * (NAME_MAX - 1), b"x" * NAME_MAX, b"read\0link",
                         b"\n" + PROBE.encode(), PROBE.encode() + b"\n"])).map(bytes)

    @st.composite
    def request(draw):
        kind = draw(st.sampled_from(["structured", "structured", "mutated", "raw"]))
        if kind == "structured":
            name = draw(names)
            magic = draw(st.sampled_from([MAGIC, MAGIC, MAGIC, b"CGN1", b"\0\0\0\0", b"cgn2"]))
            flags = draw(st.sampled_from([0, 0, 0, 1, 2 ** 31, 2 ** 32 - 1]))
            n = draw(st.sampled_from([len(name), len(name), len(name) + 1, max(0, len(name) - 1),
                                      0, NAME_MAX - 1, NAME_MAX, 2 ** 32 - 1]))
            data = HEADER.pack(magic, flags, n) + name
            if draw(st.booleans()):
                data += draw(st.binary(max_size=40))    # trailing bytes
        elif kind == "mutated":
            data = bytearray(VALID)
            for _ in range(draw(st.integers(1, 6))):
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
            data = bytes(data)
        else:
            data = draw(st.binary(max_size=200))
        cut = draw(st.sampled_from([None, None, None, 0, 1, 4, 8, 11, 12, 13]))
        if cut is not None:
            data = data[:cut]
        nfds = draw(st.sampled_from([0, 0, 1, 2, 65, SCM_MAX_FD]))
        split = draw(st.booleans())
        return data, nfds, split

    counters = {"cases": 0, "answered": 0, "closed": 0, "hung": 0, "bad_answers": [],
                "joins": 0, "valid_checks": 0, "check_every": check_every}

    @settings(max_examples=cases, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    @given(request())
    def case(req):
        data, nfds, split = req
        counters["cases"] += 1
        devnull = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        fds = [devnull] * nfds
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
            ans = read_until_closed(s, 2 * HANDSHAKE_SECONDS + 2)
        finally:
            s.close()
            os.close(devnull)
        if ans is None:
            counters["hung"] += 1
        elif ans:
            counters["answered"] += 1
            if ans.startswith(b"join"):
                counters["joins"] += 1
            if not ANSWER_RE.match(ans) and len(counters["bad_answers"]) < 5:
                counters["bad_answers"].append((data[:80], ans[:200]))
        else:
            counters["closed"] += 1
        assert daemon.alive(), "cgnetnsd died"
        if counters["cases"] % check_every == 0:
            counters["valid_checks"] += 1
            assert valid_request(path), "a valid request was not served after %d cases" \
                % counters["cases"]

    case()
    res["fuzz"] = counters


def oversized(path, res, size=4 << 20):
    """A header announcing SIZE bytes, and SIZE bytes streamed after it: the
    helper refuses after the header; the broker reads none of it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sent = [0]

    def stream():
        chunk = b"x" * 65536
        try:
            s.sendall(HEADER.pack(MAGIC, 0, size))
            while sent[0] < size:
                sent[0] += s.send(chunk)
        except OSError:
            pass
    try:
        s.connect(path)
        t = threading.Thread(target=stream)
        t.start()
        ans = read_until_closed(s, 2 * HANDSHAKE_SECONDS + 2)
        t.join(30)
    finally:
        s.close()
    res["oversize"] = {"announced": size, "sent_before_close": sent[0],
                       "answer": (ans or b"").decode(errors="replace").strip()}


# ---------------------------------------------------------------------------
# descriptors before a header

def _holders(marker, exclude):
    """PIDs (other than EXCLUDE) that hold a descriptor whose target
    contains MARKER."""
    found = set()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in exclude:
            continue
        try:
            for fd in os.listdir("/proc/%s/fd" % d):
                try:
                    if marker in os.readlink("/proc/%s/fd/%s" % (d, fd)):
                        found.add(int(d))
                        break
                except OSError:
                    pass
        except OSError:
            pass
    return sorted(found)


def _unread(sock):
    import fcntl
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0" * 4))[0]


def fds_before_header(path, rounds, res, timeout=HANDSHAKE_SECONDS - 1):
    """Each round sends SCM_MAX_FD descriptors of a memfd of its own with the
    first bytes of a request (before the header is complete: at its first
    byte, its eighth, or with the whole header but a name still missing),
    waits until the helper has read those bytes, and looks for any process
    but us that holds the memfd; then completes the request."""
    rounds_res = []
    for i in range(rounds):
        marker = "cgnetns-hostile-%d-%s" % (os.getpid(), os.urandom(4).hex())
        mfd = os.memfd_create(marker, os.MFD_CLOEXEC)
        cut = (1, 8, len(VALID) - 2)[i % 3]
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        r = {"cut": cut, "read": False, "holders": None, "answer": None}
        try:
            s.connect(path)
            _sendmsg(s, VALID[:cut], [mfd] * SCM_MAX_FD)
            deadline = time.monotonic() + timeout
            while _unread(s) and time.monotonic() < deadline:
                time.sleep(0.005)
            r["read"] = _unread(s) == 0
            r["holders"] = _holders(marker, {os.getpid()})
            s.sendall(VALID[cut:])
            s.shutdown(socket.SHUT_WR)
            ans = read_until_closed(s, 2 * HANDSHAKE_SECONDS + 2)
            r["answer"] = None if ans is None else ans.decode(errors="replace")
        finally:
            s.close()
            os.close(mfd)
        rounds_res.append(r)
    res["fds"] = {"rounds": rounds, "descriptors_sent": rounds * SCM_MAX_FD,
                  "read_by_helper": sum(r["read"] for r in rounds_res),
                  "held_by_others": sorted({p for r in rounds_res for p in r["holders"] or ()}),
                  "served": sum(r["answer"] == PASS.decode() for r in rounds_res),
                  "answers": sorted({str(r["answer"]) for r in rounds_res})}


# ---------------------------------------------------------------------------
# a flood from another uid

_FLOOD = r"""
import json, select, socket, sys, time
path, n, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
socks, opened, refused = [], {}, 0
for i in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(path)
        s.send(b"CGN2")          # a header that never ends
    except OSError:
        refused += 1
        s.close()
        continue
    s.setblocking(False)
    opened[s.fileno()] = time.monotonic()
    socks.append(s)
print("parked %d" % len(socks), flush=True)
p = select.poll()
for s in socks:
    p.register(s, select.POLLIN)
lived, left = [], {s.fileno(): s for s in socks}
end = time.monotonic() + wait
while left and time.monotonic() < end:
    for fd, ev in p.poll(100):
        s = left[fd]
        try:
            if s.recv(64):
                continue         # an answer line: the close follows
        except BlockingIOError:
            continue
        except OSError:
            pass
        lived.append(time.monotonic() - opened[fd])
        p.unregister(fd)
        del left[fd]
print(json.dumps({"connected": len(socks), "refused_at_connect": refused,
                  "lived": sorted(lived), "still_open": len(left)}), flush=True)
"""


PER_UID_CAP = 128   # cgnetnsd's default --max-pending-per-uid


def flood_from_other_uid(path, n, res, uid=ATTACKER_UID, checks=3, cap=PER_UID_CAP):
    """N connections from UID, each with an unfinished request; meanwhile
    CHECKS valid requests from the build user (nobody).  res["flood"]: how
    long the attacker's connections lived, and how the build user fared."""
    wait = 2 * HANDSHAKE_SECONDS + 3
    att = subprocess.Popen(["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid, "--clear-groups",
                            "--", USER_PY, "-c", _FLOOD, path, str(n), str(wait)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
    try:
        first = att.stdout.readline().decode().split()
        if first[:1] != ["parked"]:
            raise RuntimeError("the attacker failed: %r %s" % (first, att.stderr.read()[-500:]))
        t_parked = time.monotonic()
        checks_res = [valid_as(path, BUILD_UID) for _ in range(checks)]
        checks_done = time.monotonic() - t_parked
        doc = json.loads(att.stdout.readline())
        att.wait(30)
    finally:
        if att.poll() is None:
            att.kill()
            att.wait()
        att.stdout.close()
        att.stderr.close()
    lived = doc["lived"]
    res["flood"] = {
        "uid": uid, "cap": cap, "connections": n, "connected": doc["connected"],
        "refused_at_connect": doc["refused_at_connect"],
        # dropped over the cap: closed at accept; given a helper: closed by
        # its deadline, at least HANDSHAKE_SECONDS after the connect
        "closed_at_once": sum(1 for x in lived if x < HANDSHAKE_SECONDS / 2),
        "held_to_deadline": sum(1 for x in lived if x >= HANDSHAKE_SECONDS / 2),
        "shortest_held_s": round(min([x for x in lived if x >= HANDSHAKE_SECONDS / 2] or [0]), 2),
        "longest_s": round(max(lived), 2) if lived else None,
        "still_open": doc["still_open"],
        "build_user_served": sum(1 for ok, _, _ in checks_res if ok),
        "build_user_tries": checks,
        "build_user_slowest_s": round(max((s or 99) for _, s, _ in checks_res), 3),
        "build_user_answers": sorted({a for _, _, a in checks_res}),
        "checks_took_s": round(checks_done, 2)}


# ---------------------------------------------------------------------------
# slow clients

def slow_clients(path, res, slowloris=8, interval=0.75, patient=4, others=3):
    """SLOWLORIS clients send one byte of a valid request every INTERVAL
    seconds (past the deadline: closed by it); PATIENT clients send theirs
    in four pieces over about two seconds (within it: served); meanwhile
    OTHERS valid requests from the build user are served."""
    results = {"slowloris": [], "patient": []}
    lock = threading.Lock()

    def loris():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        t0 = time.monotonic()
        closed_after, ans = None, b""
        try:
            s.connect(path)
            for i in range(len(VALID)):
                try:
                    s.send(VALID[i:i + 1])
                except OSError:
                    closed_after = time.monotonic() - t0
                    break
                # the pace of the dribble: wait INTERVAL, or less if closed
                r, _, _ = select.select([s], [], [], interval)
                if r:
                    b = s.recv(4096)
                    ans += b
                    if not b:
                        closed_after = time.monotonic() - t0
                        break
            else:
                more = read_until_closed(s, 2 * HANDSHAKE_SECONDS + 2)
                ans += more or b""
                closed_after = time.monotonic() - t0 if more is not None else None
        except OSError:
            closed_after = time.monotonic() - t0
        finally:
            s.close()
        with lock:
            results["slowloris"].append((closed_after, ans))

    def patient_client():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        ans = None
        try:
            s.connect(path)
            q = (len(VALID) + 3) // 4
            for i in range(0, len(VALID), q):
                s.send(VALID[i:i + q])
                if i + q < len(VALID):
                    time.sleep(0.6)   # the client's pace (within the deadline)
            ans = read_until_closed(s, 2 * HANDSHAKE_SECONDS + 2)
        except OSError:
            pass
        finally:
            s.close()
        with lock:
            results["patient"].append(ans)

    threads = [threading.Thread(target=loris) for _ in range(slowloris)]
    threads += [threading.Thread(target=patient_client) for _ in range(patient)]
    for t in threads:
        t.start()
    during = [valid_as(path, BUILD_UID) for _ in range(others)]
    for t in threads:
        t.join(4 * HANDSHAKE_SECONDS + 10)
    closed = [c for c, _ in results["slowloris"] if c is not None]
    res["slow"] = {
        "slowloris": slowloris, "interval_s": interval,
        "slowloris_closed": len(closed),
        "slowloris_answers": sorted({a.decode(errors="replace") for _, a in results["slowloris"]}),
        "slowloris_closed_after_s": (round(min(closed), 2), round(max(closed), 2)) if closed else None,
        "patient": patient, "patient_served": sum(1 for a in results["patient"] if a == PASS),
        "others_served": sum(1 for ok, _, _ in during if ok), "others": others}


def join_stalled(path, res):
    """A client in a real build (cgnetns.build.Build, the driver's namespace
    approved; the client as nobody in a namespace of its own) gets "join"
    and then never sends its listener: the supervisor's deadline closes the
    connection, and the supervisor is gone with it."""
    from cgnetns.build import Build
    script = (
        "import socket, sys, time\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "s.settimeout(%d)\n"
        "s.connect(sys.argv[1])\n"
        "s.sendall(bytes.fromhex(sys.argv[2]))\n"
        "t = time.monotonic()\n"
        "ans = b''\n"
        "while True:\n"
        "    b = s.recv(4096)\n"
        "    if not b:\n"
        "        break\n"
        "    ans += b\n"
        "print(repr(ans), round(time.monotonic() - t, 2), flush=True)\n"
        % (4 * HANDSHAKE_SECONDS))
    with Build(name="hostile-join") as b:
        p = b.spawn([USER_PY, "-c", script, path, VALID.hex()], user="nobody", unshare_net=True,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
        try:
            out, err = p.communicate(timeout=4 * HANDSHAKE_SECONDS + 10)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        procs_path = os.path.join(b.cgroup_path, "cgroup.procs")
        deadline = time.monotonic() + 10
        while True:   # the supervisor lives in the build's cgroup until it ends
            with open(procs_path) as f:
                left = f.read().split()
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.02)
    parts = out.decode().rsplit(" ", 1)
    res["join_stalled"] = {"answer": parts[0] if len(parts) == 2 else out.decode(),
                           "closed_after_s": float(parts[1]) if len(parts) == 2 else None,
                           "left_in_build": left, "stderr": err.decode(errors="replace")[-300:]}


# ---------------------------------------------------------------------------

def run(cases=2000, connections=1000, fdrounds=30):
    res = {"errors": []}
    with common.Cleanup() as cl:
        tdir = common.make_tdir(cl, "hostile")
        common.allow_probe(cl)
        path = os.path.join(tdir, "cgnetnsd.sock")
        daemon = common.Daemon(cl, socket_path=path, tdir=tdir,
                               log=os.path.join(tdir, "cgnetnsd.log"))
        if not valid_request(path):
            raise RuntimeError("the fresh broker does not serve a valid request: %s"
                               % daemon.text()[-1000:])
        res["fds_start"], res["rss_start"] = daemon.idle_fds(), daemon.rss()
        t0 = time.monotonic()
        steps = [("fuzz", lambda: fuzz_requests(path, cases, daemon, res)),
                 ("oversize", lambda: oversized(path, res)),
                 ("fds", lambda: fds_before_header(path, fdrounds, res)),
                 ("flood", lambda: flood_from_other_uid(path, connections, res)),
                 ("slow", lambda: slow_clients(path, res)),
                 ("join_stalled", lambda: join_stalled(path, res))]
        for name, fn in steps:
            try:
                fn()
            except Exception as e:
                res["errors"].append("%s: %s: %s" % (name, type(e).__name__, e))
            if not daemon.alive():
                res["errors"].append("cgnetnsd died during %s" % name)
                break
        res["duration"] = time.monotonic() - t0
        res["valid_after"] = valid_request(path)
        res["fds_end"] = daemon.settle_fds(res["fds_start"], timeout=2 * HANDSHAKE_SECONDS + 5)
        res["rss_end"] = daemon.rss()
        res["alive"] = daemon.alive()
        res["log_lines"] = daemon.text().count("\n")
    return res


RSS_SLACK_KIB = 2048   # what an interpreter's allocator may keep after a burst


def problems(res):
    """What went wrong, as sentences (empty: all well)."""
    out = list(res["errors"])
    if not res.get("alive"):
        out.append("the broker died")
    if not res.get("valid_after"):
        out.append("no valid request served at the end")
    if res.get("fds_end") != res.get("fds_start"):
        out.append("broker descriptors %s at the start, %s at the end"
                   % (res.get("fds_start"), res.get("fds_end")))
    if (res.get("rss_end") or 0) > (res.get("rss_start") or 0) + RSS_SLACK_KIB:
        out.append("broker RSS %s KiB at the start, %s at the end"
                   % (res.get("rss_start"), res.get("rss_end")))
    f = res.get("fuzz")
    if f:
        if f["hung"] or f["bad_answers"] or f["joins"]:
            out.append("fuzz: %d hung, %d joins, bad answers %r" % (f["hung"], f["joins"],
                                                                   f["bad_answers"]))
    o = res.get("oversize")
    if o and not o["answer"].startswith("refuse 125 "):
        out.append("oversized request answered %r" % o["answer"])
    d = res.get("fds")
    if d and (d["held_by_others"] or d["served"] != d["rounds"] or d["read_by_helper"] != d["rounds"]):
        out.append("descriptors before a header: %r" % d)
    f = res.get("flood")
    # Over its uid's cap a connection waits in that uid's queue and is
    # answered busy when it has waited the deadline: each lives about as
    # long as one with a helper, none longer than the broker's own limit.
    if f and (f["build_user_served"] != f["build_user_tries"] or f["still_open"]
              or f["build_user_slowest_s"] > 2
              or (f["held_to_deadline"] and f["shortest_held_s"] < HANDSHAKE_SECONDS - 0.5)
              or (f["longest_s"] or 0) > 2 * HANDSHAKE_SECONDS + 1):
        out.append("flood from uid %d: %r" % (f["uid"], f))
    s = res.get("slow")
    if s and (s["slowloris_closed"] != s["slowloris"] or s["patient_served"] != s["patient"]
              or s["others_served"] != s["others"]
              or not (HANDSHAKE_SECONDS - 0.5 <= s["slowloris_closed_after_s"][0]
                      and s["slowloris_closed_after_s"][1] <= 2 * HANDSHAKE_SECONDS + 1)):
        out.append("slow clients: %r" % s)
    j = res.get("join_stalled")
    if j and (not j["answer"].startswith("b'join ") or j["left_in_build"]
              or not (HANDSHAKE_SECONDS - 0.5 <= (j["closed_after_s"] or 0)
                      <= 2 * HANDSHAKE_SECONDS + 1)):
        out.append("stalled after join: %r" % j)
    return out


def ok(res):
    return not problems(res)


def report(res, out=print):
    out("cgnetnsd under hostile clients (%.1f s)" % res.get("duration", 0))
    if "fuzz" in res:
        f = res["fuzz"]
        out("  hypothesis requests: %d cases, %d answered, %d closed without an answer, %d hung, "
            "%d joins, %d malformed answers; a valid request served after every %d"
            % (f["cases"], f["answered"], f["closed"], f["hung"], f["joins"],
               len(f["bad_answers"]), f["check_every"]))
    if "oversize" in res:
        o = res["oversize"]
        out("  %d-byte request: %r after %d bytes sent" % (o["announced"], o["answer"],
                                                          o["sent_before_close"]))
    if "fds" in res:
        d = res["fds"]
        out("  descriptors before a header: %d rounds, %d descriptors, read by the helper "
            "in %d, held by another process: %s; served %d"
            % (d["rounds"], d["descriptors_sent"], d["read_by_helper"],
               d["held_by_others"] or "none", d["served"]))
    if "flood" in res:
        f = res["flood"]
        out("  %d connections from uid %d: %d connected, %d closed at once, %d held until the "
            "deadline (%.1f-%.1f s), %d still open; the build user served %d/%d "
            "(slowest %.3f s)"
            % (f["connections"], f["uid"], f["connected"],
               f["closed_at_once"] + f["refused_at_connect"], f["held_to_deadline"],
               f["shortest_held_s"], f["longest_s"] or 0, f["still_open"],
               f["build_user_served"], f["build_user_tries"], f["build_user_slowest_s"]))
    if "slow" in res:
        s = res["slow"]
        out("  %d clients at a byte per %.2f s: %d closed after %s s; %d slow within the "
            "deadline: %d served; others meanwhile %d/%d"
            % (s["slowloris"], s["interval_s"], s["slowloris_closed"],
               s["slowloris_closed_after_s"], s["patient"], s["patient_served"],
               s["others_served"], s["others"]))
    if "join_stalled" in res:
        j = res["join_stalled"]
        out("  stalled after join: %s, closed after %s s, left in the build: %s"
            % (j["answer"], j["closed_after_s"], j["left_in_build"] or "nothing"))
    out("  broker alive: %s; valid request after all: %s" % (res.get("alive"), res.get("valid_after")))
    out("  broker fds start/end: %s/%s; RSS start/end: %s/%s KiB"
        % (res.get("fds_start"), res.get("fds_end"), res.get("rss_start"), res.get("rss_end")))
    for p in problems(res):
        out("PROBLEM: %s" % p)
