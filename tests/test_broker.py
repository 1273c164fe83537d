"""cgnetnsd and the helper's broker path (doc/BROKER.rst, issue 4, THREATS.md 13, 15-17).

Real kernel, root.  The helper is built here with a private broker socket (so
that a broker the tests start never answers the installed helper of other
test modules), installed set-user-ID root in the test directory; the broker
is `python -m cgnetns.cli.broker` of this checkout on that socket, with that
helper as its agent.  Builds are made by hand (helper_support.HandBuild), the
callers run as nobody in the build's private network namespace, mostly under
no_new_privs, where the set-user-ID bit gains nothing and the helper becomes
the broker's client.  Everything is removed again: the broker (by its pid),
builds, the allow-list lines, the test directory.
"""

import os
import signal
import socket
import struct
import subprocess
import time

import pytest

try:
    from . import helper_support as hs
    from .conftest import PY, USER_PY, repo_env
except ImportError:
    import helper_support as hs
    from conftest import PY, USER_PY, repo_env

henv, builds, netns, servers, world = hs.henv, hs.builds, hs.netns, hs.servers, hs.world

SLEEPER_SRC = r"""
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
/* sleeper PIDFILE sleep S | kill SIG | exit N */
int main(int argc, char **argv) {
    if (argc < 4) return 2;
    FILE *f = fopen(argv[1], "w");
    if (!f) return 3;
    fprintf(f, "%d\n", (int)getpid());
    fclose(f);
    if (!strcmp(argv[2], "sleep")) { sleep(atoi(argv[3])); return 0; }
    if (!strcmp(argv[2], "kill")) { raise(atoi(argv[3])); return 4; }
    return atoi(argv[3]);
}
"""

# A raw client, run as nobody with Debian's python3 (stdlib only): connects,
# optionally lets another process be the peer, sends a request built here.
RAW_CLIENT = r"""
import os, socket, struct, sys, time
mode, sockpath, cwd, out = sys.argv[1:5]
argv = [a.encode() for a in sys.argv[5:]]
env = [b"PATH=/usr/bin:/bin"]
def request(fds):
    body = b"".join(s + b"\0" for s in argv + env)
    nums = [-1] + fds
    payload = struct.pack("=II", len(argv), len(env)) + struct.pack("=%di" % len(nums), *nums) + body
    hdr = struct.pack("=4sIII", b"CGN1", len(payload), len(nums), 0)
    return hdr + payload
def answer(s):
    s.settimeout(20)
    data = b""
    while True:
        d = s.recv(4096)
        if not d:
            break
        data += d
    return data
cwdfd = os.open(cwd, os.O_PATH)
extra = []
if mode == "pidfd":       # pass a pidfd of another process, and name it
    extra_fd = os.pidfd_open(int(os.environ["OTHER_PID"]))
    os.dup2(extra_fd, 5)
    extra = [0, 1, 2, 5]
    env.append(b"CGNETNS_PID=" + os.environ["OTHER_PID"].encode())
else:
    extra = [0, 1, 2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sockpath)
if mode == "peer-exits":  # the connecting process exits; its child sends
    r, w = os.pipe()
    if os.fork() != 0:
        os._exit(0)
    while os.getppid() != 1 and os.path.exists("/proc/%d" % os.getppid()):
        time.sleep(0.01)
    time.sleep(0.2)
fds = [cwdfd] + extra
s.sendmsg([request(extra)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("%di" % len(fds), *fds))])
with open(out, "wb") as f:
    f.write(answer(s))
"""


class BrokerSetup:
    def __init__(self, henv):
        self.henv = henv
        self.dir = os.path.join(henv.tdir, "broker")
        os.makedirs(self.dir, 0o755, exist_ok=True)
        self.sock = os.path.join(self.dir, "cgnetnsd.sock")
        self.sock_activated = os.path.join(self.dir, "activated.sock")
        bdir = os.path.join(henv.tdir, "bbuild")
        self.helper = self._variant(bdir, "a", self.sock, 0o4755)
        self.activated_helper = self._variant(bdir, "b", self.sock_activated, 0o4755)
        self.notsetuid = os.path.join(henv.tdir, "bv", "notsetuid", "cgnetns-exec")
        os.makedirs(os.path.dirname(self.notsetuid), exist_ok=True)
        hs.shutil.copy(self.helper, self.notsetuid)
        os.chmod(self.notsetuid, 0o755)
        self.sleeper = os.path.join(henv.bin, "sleeper")
        src = os.path.join(self.dir, "sleeper.c")
        with open(src, "w") as f:
            f.write(SLEEPER_SRC)
        hs.sh(["gcc", "-O1", "-o", self.sleeper, src])
        self.raw_client = os.path.join(self.dir, "raw_client.py")
        with open(self.raw_client, "w") as f:
            f.write(RAW_CLIENT)
        self.allow_line = self.sleeper
        with open(hs.ALLOW, "a") as f:
            f.write(self.sleeper + "\n")

    def _variant(self, bdir, name, sock, mode):
        b = os.path.join(bdir, name)
        hs.sh(["make", "-s", "-C", hs.HELPER_SRC, "B=" + b, "BROKER_SOCKET=" + sock,
               "-j2", "musl"], timeout=300)
        d = os.path.join(self.henv.tdir, "bv", name)
        os.makedirs(d, exist_ok=True)
        dst = os.path.join(d, "cgnetns-exec")
        hs.shutil.copy(os.path.join(b, "musl", "cgnetns-exec"), dst)
        os.chown(dst, 0, 0)
        os.chmod(dst, mode)
        return dst

    def close(self):
        with open(hs.ALLOW) as f:
            kept = [l for l in f.read().splitlines(True) if l.rstrip("\n") != self.allow_line]
        with open(hs.ALLOW + ".brokertest", "w") as f:
            f.write("".join(kept))
        os.chmod(hs.ALLOW + ".brokertest", 0o644)
        os.replace(hs.ALLOW + ".brokertest", hs.ALLOW)


class Broker:
    """cgnetnsd of this checkout, stopped by its pid."""

    def __init__(self, setup, argv=None, extra=(), umask=None):
        self.log_path = os.path.join(setup.dir, "broker-%s.log" % hs.secrets.token_hex(4))
        self.log = open(self.log_path, "wb")
        argv = argv or [PY, "-m", "cgnetns.cli.broker", "--socket", setup.sock,
                        "--helper", setup.helper] + list(extra)
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=repo_env(), cwd="/",
                                     preexec_fn=None if umask is None else lambda: os.umask(umask))
        self.sock = setup.sock

    def wait_ready(self, path=None):
        deadline = time.monotonic() + 20
        while not os.path.exists(path or self.sock):
            assert self.proc.poll() is None, self.text()
            assert time.monotonic() < deadline, "broker did not start: " + self.text()
            time.sleep(0.05)
        return self

    def text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def bsetup(henv):
    s = BrokerSetup(henv)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def broker(bsetup):
    b = Broker(bsetup, extra=["--request-timeout", "2", "--max-connections", "32"])
    try:
        yield b.wait_ready()
    finally:
        b.close()


def caller_env(henv):
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LD_PRELOAD": henv.preload,
            "ODD": "tab\there", "LANG": "C"}


def probe(world, bsetup, helper=None, nnp=True, pre=(), cgroup=None, ns=None, **kw):
    """The probe, through HELPER, as nobody in build a's cgroup and its private
    namespace: (result, report)."""
    report = world.henv.out_path()
    argv = [helper or bsetup.helper, world.henv.probe, "report", report,
            "--connect=%d" % world.port, "--try-root"]
    r = world.henv.run(argv, cgroup=cgroup or world.a.cgroup_path,
                       netns=ns or world.private.path, nnp=nnp, pre=pre, **kw)
    return r, hs.read_report(report)


def assert_serves(world, bsetup):
    """A well-formed request right after an attack: served (joined)."""
    r, got = probe(world, bsetup)
    assert r.returncode == 0, r.stderr
    hs.assert_joined(got, world.host_ns, world.parent_token)


# ---------------------------------------------------------------------------
# what it must do

def test_probe_runs_in_approved_namespace_with_callers_state(henv, world, bsetup, broker):
    launched, report = henv.out_path("launch"), henv.out_path()
    argv = [henv.probe, "launch", launched, "--umask=027", "--ignore=USR1", "--block=USR2",
            "--", bsetup.helper, henv.probe, "report", report, "--connect=%d" % world.port,
            "--try-root"]
    r = world.a.run(argv, netns=world.private.path, nnp=True, env=caller_env(henv),
                    groups=[4242], cwd=henv.out)
    assert r.returncode == 0, r.stderr
    assert r.stderr == b"", r.stderr
    got, want = hs.read_report(report), hs.read_report(launched)
    hs.assert_joined(got, world.host_ns, world.parent_token)
    assert got["uids"] == [hs.NOBODY] * 3 and got["gids"] == [hs.NOGROUP] * 3
    assert got["groups"] == [4242]
    assert got["env_b"] == want["env_b"] and got["preloaded"] == 1
    assert got["fds"] == want["fds"], (got["fds"], want["fds"])
    assert got["cwd"] == want["cwd"] and got["umask"] == want["umask"]
    assert got["cgroup"] == want["cgroup"]
    assert got["rlimits"] == want["rlimits"]
    for key in ("SigBlk", "SigIgn", "CapInh", "CapAmb", "CapEff", "CapPrm"):
        assert _sigmask(got["status"][key]) == _sigmask(want["status"][key]), key
    assert got["status"]["NoNewPrivs"] == "1"
    assert set(got["regain"].values()) == {1}
    assert "join" in broker.text()


def _sigmask(hexmask):
    """A /proc status mask without signals 32-34: glibc and musl reserve them
    for themselves (thread cancellation, setxid) and refuse to change their
    disposition, so an ignored 32/33 (GNU make leaves them ignored in the
    commands it runs) cannot be handed on by any libc program."""
    return int(hexmask, 16) & ~(0b111 << 31)


def test_exit_status_and_signal_death_reach_the_caller(henv, world, bsetup, broker):
    pidfile = henv.out_path("pid")
    r = world.a.run([bsetup.helper, bsetup.sleeper, pidfile, "exit", "7"],
                    netns=world.private.path, nnp=True)
    assert r.returncode == 7, r.stderr
    r = world.a.run([bsetup.helper, bsetup.sleeper, pidfile, "kill", str(int(signal.SIGTERM))],
                    netns=world.private.path, nnp=True)
    assert r.returncode == -signal.SIGTERM, r.stderr


def _start_sleeper(henv, world, bsetup):
    pidfile = henv.out_path("pid")
    cmd = ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" || exit 99; exec "$@"',
           world.a.cgroup_path, "nsenter", "--net=" + world.private.path, "--",
           "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--no-new-privs",
           "--", bsetup.helper, bsetup.sleeper, pidfile, "sleep", "60"]
    p = subprocess.Popen(cmd, start_new_session=True, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin"})
    deadline = time.monotonic() + 20
    while not (os.path.exists(pidfile) and open(pidfile).read().strip()):
        assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.poll() else "timeout"
        time.sleep(0.05)
    return p, int(open(pidfile).read())


def _gone(pid, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open("/proc/%d/stat" % pid) as f:
                if f.read().split(") ")[1].startswith("Z"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_ctrl_c_to_the_process_group_ends_the_program(henv, world, bsetup, broker):
    p, prog = _start_sleeper(henv, world, bsetup)
    try:
        os.killpg(p.pid, signal.SIGINT)
        assert p.wait(20) == -signal.SIGINT
        assert _gone(prog), "the program survived Ctrl-C"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_sigkill_of_the_client_ends_the_program(henv, world, bsetup, broker):
    p, prog = _start_sleeper(henv, world, bsetup)
    try:
        p.kill()
        p.wait(20)
        assert _gone(prog), "the program survived its client"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_outside_any_build_passes_through(henv, world, bsetup, broker):
    r, got = probe(world, bsetup, cgroup=henv.untagged_cgroup())
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    hs.assert_not_joined(got, world.private, world.private_token)


def test_other_build_gets_only_its_own_namespace(henv, world, bsetup, broker, builds, netns):
    other = netns("other")
    b = builds(approved=other.path, name="b")
    r, got = probe(world, bsetup, cgroup=b.cgroup_path)
    assert r.returncode == 0, r.stderr
    assert (got["netns"]["dev"], got["netns"]["ino"]) == tuple(other.identity[:2])


def test_no_setuid_bit_uses_the_broker(henv, world, bsetup, broker):
    r, got = probe(world, bsetup, helper=bsetup.notsetuid, nnp=False)
    assert r.returncode == 0, r.stderr
    hs.assert_joined(got, world.host_ns, world.parent_token)


def test_user_namespace_uses_the_broker(henv, world, bsetup, broker):
    r, got = probe(world, bsetup, pre=["unshare", "-Ur", "--"], nnp=False)
    assert r.returncode == 0, r.stderr
    hs.assert_joined(got, world.host_ns, world.parent_token)
    assert got["uids"] == [0, 0, 0]  # as the caller sees itself in its namespace


def test_no_broker_passes_through_with_one_line(henv, world, bsetup):
    hs.sh(["true"])
    r, got = probe(world, bsetup, helper=bsetup.activated_helper)  # nobody on that socket
    assert r.returncode == 0
    line = hs.one_line(r.stderr)
    assert "no privilege (no_new_privs) and no broker at " + bsetup.sock_activated in line
    hs.assert_not_joined(got, world.private, world.private_token)


# ---------------------------------------------------------------------------
# THREATS.md 15: bad requests

def _raw(broker, data, fds=(), hold=0.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(broker.sock)
    try:
        if data is not None:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("%di" % len(fds), *fds))] if fds else []
            s.sendmsg([data], anc)
        time.sleep(hold)
        s.settimeout(10)
        try:
            return s.recv(4096)
        except ConnectionResetError:
            return b""
    finally:
        s.close()


def _good_request(henv, nfds=None):
    from cgnetns.broker import encode_request
    return encode_request([henv.probe, "report", "/nonexistent"], [b"A=1"],
                          [-1] + ([0] if nfds is None else list(range(nfds))))


@pytest.mark.parametrize("attack", ["garbage", "bad-magic", "truncated", "oversized",
                                    "endless", "too-many-fds", "fd-count-mismatch",
                                    "disconnect-midway", "bad-strings", "flood"])
def test_t15_bad_requests_are_dropped(henv, world, bsetup, broker, attack):
    cwd = os.open("/", os.O_PATH)
    try:
        hdr, payload = _good_request(henv)
        if attack == "garbage":
            assert _raw(broker, os.urandom(64)) == b""
        elif attack == "bad-magic":
            assert _raw(broker, b"XXXX" + hdr[4:] + payload, [cwd, 0]) == b""
        elif attack == "truncated":
            assert _raw(broker, hdr + payload[:-3], [cwd, 0]) == b""  # timeout 2 s
        elif attack == "oversized":
            big = struct.pack("=4sIII", b"CGN1", (4 << 20) + 1, 1, 0)
            assert _raw(broker, big, [cwd]) == b""
        elif attack == "endless":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(broker.sock)
            s.sendall(struct.pack("=4sIII", b"CGN1", 4 << 20, 1, 0))
            s.settimeout(10)
            t0 = time.monotonic()
            try:
                while time.monotonic() - t0 < 8:
                    s.send(b"x")
                    time.sleep(0.2)
                pytest.fail("the broker kept reading a slow request")
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                s.close()
        elif attack == "too-many-fds":
            many = [os.open("/dev/null", os.O_RDONLY) for _ in range(70)]
            try:
                h2, p2 = _good_request(henv, nfds=70)
                assert _raw(broker, h2 + p2, [cwd] + many) == b""
            finally:
                for fd in many:
                    os.close(fd)
        elif attack == "fd-count-mismatch":
            assert _raw(broker, hdr + payload, [cwd]) == b""
        elif attack == "disconnect-midway":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(broker.sock)
            s.sendmsg([hdr + payload[:5]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                             struct.pack("2i", cwd, 0))])
            s.close()
        elif attack == "bad-strings":
            bad = payload[:-1] + b"X"  # last string not NUL-terminated
            assert _raw(broker, hdr + bad, [cwd, 0]) == b""
        elif attack == "flood":
            socks = []
            try:
                for _ in range(60):
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(broker.sock)
                    socks.append(s)
                time.sleep(0.5)
            finally:
                for s in socks:
                    s.close()
            time.sleep(0.3)
    finally:
        os.close(cwd)
    assert broker.proc.poll() is None, broker.text()
    assert_serves(world, bsetup)


# ---------------------------------------------------------------------------
# THREATS.md 16-17: the kernel's word only; not its program, cwd or process

def _raw_client(henv, bsetup, world, mode, cwd, program, cgroup, extra_env=None):
    out = henv.out_path("answer")
    env = {"PATH": "/usr/bin:/bin"}
    env.update(extra_env or {})
    report = henv.out_path()
    r = henv.run([USER_PY, bsetup.raw_client, mode, bsetup.sock, cwd, out, program,
                  "report", report, "--connect=%d" % world.port],
                 cgroup=cgroup, netns=world.private.path, nnp=True, env=env)
    deadline = time.monotonic() + 20
    while not os.path.exists(out) and time.monotonic() < deadline:
        time.sleep(0.05)
    with open(out, "rb") as f:
        return r, f.read(), hs.read_report(report)


def test_t16_peer_that_exits_after_connecting_gets_nothing(henv, world, bsetup, broker):
    r, answer, got = _raw_client(henv, bsetup, world, "peer-exits", henv.out, henv.probe,
                                 world.a.cgroup_path)
    assert answer == b"refuse 125\n", (answer, r.stderr)
    assert got is None, "the program ran for a peer that had gone"
    assert_serves(world, bsetup)


def test_t16_outsider_naming_a_build_process_gets_pass_through(henv, world, bsetup, broker):
    """An outsider passes a pidfd of a process in build a and names its PID:
    the broker asks the kernel who connected and answers for the outsider."""
    member = subprocess.Popen(["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs"; exec sleep 30',
                               world.a.cgroup_path])
    try:
        time.sleep(0.2)
        r, answer, got = _raw_client(henv, bsetup, world, "pidfd", henv.out, henv.probe,
                                     henv.untagged_cgroup(),
                                     extra_env={"OTHER_PID": str(member.pid)})
        assert answer == b"pass %s\n" % henv.probe.encode(), (answer, r.stderr)
        assert got is None  # "pass": the raw client itself runs nothing
    finally:
        member.kill()
        member.wait()
    assert_serves(world, bsetup)


def test_t17_program_not_allow_listed_is_refused(henv, world, bsetup, broker):
    report = henv.out_path()
    r = world.a.run([bsetup.helper, henv.unlisted_probe, "report", report],
                    netns=world.private.path, nnp=True)
    assert r.returncode == hs.EXIT_NOT_USABLE
    assert "not in the allow list" in hs.one_line(r.stderr)
    hs.assert_not_run(report)
    assert_serves(world, bsetup)


def test_t17_cwd_not_its_own_is_refused(henv, world, bsetup, broker):
    """An O_PATH fd of a directory the caller may not search (/root, 0700)
    as the cwd: the agent enters it with the caller's ids and is refused."""
    r, answer, got = _raw_client(henv, bsetup, world, "plain", "/root", henv.probe,
                                 world.a.cgroup_path)
    assert answer == b"refuse 125\n", (answer, r.stderr)
    assert b"working directory" in r.stderr
    assert got is None
    assert_serves(world, bsetup)


# ---------------------------------------------------------------------------
# systemd socket activation

def test_socket_activation(henv, world, bsetup):
    sa = "/usr/bin/systemd-socket-activate"
    # Debian's systemd package (tools/ensure-deps test installs it): a missing
    # tool is a failure, not a skip.
    assert os.path.exists(sa), "no %s: apt-get install systemd" % sa
    b = Broker(bsetup, argv=[sa, "-l", bsetup.sock_activated, PY, "-m", "cgnetns.cli.broker",
                             "--socket", bsetup.sock_activated, "--helper",
                             bsetup.activated_helper],
               umask=0)  # the socket 0777: any build may ask (systemd: SocketMode=0666)
    try:
        b.wait_ready(bsetup.sock_activated)
        # systemd-socket-activate makes the socket 0644 and starts cgnetnsd on
        # the first connection; cgnetnsd makes it 0666 (systemd's unit says
        # SocketMode=0666 itself).  Root knocks first, then the build asks.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as k:
            k.connect(bsetup.sock_activated)
        deadline = time.monotonic() + 20
        while "serving" not in b.text():
            assert time.monotonic() < deadline, b.text()
            time.sleep(0.05)
        r, got = probe(world, bsetup, helper=bsetup.activated_helper)
        assert r.returncode == 0 and r.stderr == b"", (r.stderr, b.text())
        hs.assert_joined(got, world.host_ns, world.parent_token)
    finally:
        b.close()
        if os.path.exists(bsetup.sock_activated):
            os.unlink(bsetup.sock_activated)
