"""cgnetnsd and the broker path (doc/BROKER.rst; doc/THREATS.rst 13, 15-17, 20-27).

Real kernel, root.  The helper and the front are built here with a private
broker socket (so that a broker the tests start never answers the installed
ones of other test modules) and the system's allow list and pins; the helper
is installed set-user-ID root in the test directory, and the front names it.
The broker is `python -m cgnetns.cli.broker` of this checkout on that socket,
with that helper; it is started with a nice value, an oom_score_adj, a signal
mask and a umask of its own, and in a cgroup-v1 hierarchy's cgroup of its
own where the host has one, so that a test notices any of its state reaching
a build.  Callers run as nobody in build a's private network namespace
(only lo, with a decoy server on the parent server's port), under
no_new_privs, where the set-user-ID bit gains nothing.  The attacker's own
client is tests/broker_client.py.  Everything is removed again: the broker
(by its pid), builds, the allow-list lines, the test directory.
"""

import contextlib
import json
import os
import re
import shutil
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

from cgnetns import broker as broker_mod

henv, builds, netns, servers, world = hs.henv, hs.builds, hs.netns, hs.servers, hs.world

HERE = os.path.dirname(os.path.abspath(__file__))
NETPROBE_SRC = os.path.join(hs.HELPER_SRC, "testsupport", "netprobe.c")
ATTACKER_UID = 4242     # another user, outside every build
V1_PIDS = "/sys/fs/cgroup/pids"


class BrokerSetup:
    """The private helper, front, probes and allow-list lines of this module."""

    def __init__(self, henv):
        self.henv = henv
        self.dir = os.path.join(henv.tdir, "broker")
        os.makedirs(self.dir, 0o755, exist_ok=True)
        self.sock = os.path.join(self.dir, "cgnetnsd.sock")
        self.sock_activated = os.path.join(self.dir, "activated.sock")
        self.helper, self.front = self._variant("a", self.sock)
        self.activated_helper, self.activated_front = self._variant("b", self.sock_activated)
        self.bin = os.path.join(self.dir, "bin")
        os.makedirs(self.bin, 0o755)
        self.netprobe = os.path.join(self.bin, "netprobe")
        hs.sh(["gcc", "-O1", "-Wall", "-Werror", "-o", self.netprobe, NETPROBE_SRC])
        self.unlisted = os.path.join(self.dir, "unlisted-netprobe")
        shutil.copy(self.netprobe, self.unlisted)
        self.client = os.path.join(self.dir, "broker_client.py")
        shutil.copy(os.path.join(HERE, "broker_client.py"), self.client)
        os.chmod(self.client, 0o644)
        self.allow_line = self.netprobe
        with open(hs.ALLOW, "a") as f:
            f.write(self.netprobe + "\n")

    def _variant(self, name, sock):
        """(helper, front) built with broker socket SOCK."""
        d = os.path.join(self.henv.tdir, "bv", name)
        os.makedirs(d, exist_ok=True)
        helper = os.path.join(d, "cgnetns-exec")   # a name the helper takes as its own
        b = os.path.join(self.henv.tdir, "bbuild", name)
        hs.sh(["make", "-s", "-C", hs.HELPER_SRC, "B=" + b, "BROKER_SOCKET=" + sock,
               "HELPER_PATH=" + helper, "-j2", "all"], timeout=300)
        shutil.copy(os.path.join(b, "cgnetns-helper"), helper)
        os.chown(helper, 0, 0)
        os.chmod(helper, 0o4755)
        fd = os.path.join(self.henv.tdir, "bv", name + "-front")
        os.makedirs(fd, exist_ok=True)
        front = os.path.join(fd, "cgnetns-exec")
        shutil.copy(os.path.join(b, "cgnetns-exec"), front)
        os.chmod(front, 0o755)
        return helper, front

    def close(self):
        with open(hs.ALLOW) as f:
            kept = [l for l in f.read().splitlines(True) if l.rstrip("\n") != self.allow_line]
        with open(hs.ALLOW + ".brokertest", "w") as f:
            f.write("".join(kept))
        os.chmod(hs.ALLOW + ".brokertest", 0o644)
        os.replace(hs.ALLOW + ".brokertest", hs.ALLOW)


class Broker:
    """cgnetnsd of this checkout, stopped by its pid.  Started with state of
    its own (nice 5, oom_score_adj 300, SIGUSR1 blocked, umask 077, and a v1
    pids cgroup of its own where there is one) that no build may inherit."""

    def __init__(self, setup, argv=None, extra=(), umask=0o077):
        self.log_path = os.path.join(setup.dir, "broker-%s.log" % hs.secrets.token_hex(4))
        self.log = open(self.log_path, "wb")
        argv = argv or [PY, "-m", "cgnetns.cli.broker", "--socket", setup.sock,
                        "--helper", setup.helper] + list(extra)
        self.v1 = None
        if os.path.isdir(V1_PIDS):
            self.v1 = os.path.join(V1_PIDS, "cgnetns-brokertest-" + hs.secrets.token_hex(4))
            os.mkdir(self.v1)

        def prepare():
            os.umask(umask)
            os.nice(5)
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("300")
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
            if self.v1:
                with open(os.path.join(self.v1, "cgroup.procs"), "w") as f:
                    f.write("0")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=repo_env(), cwd="/", preexec_fn=prepare)
        self.sock = setup.sock

    def wait_ready(self, path=None):
        hs.wait_broker_serving(self.proc, self.log_path)
        return self

    def text(self):
        return hs.read_log(self.log_path)

    def fds(self):
        return len(os.listdir("/proc/%d/fd" % self.proc.pid))

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            return int([l for l in f if l.startswith("VmRSS:")][0].split()[1])

    def close(self):
        hs.stop_process(self.proc)
        self.log.close()
        if self.v1:
            with contextlib.suppress(OSError):
                os.rmdir(self.v1)


@pytest.fixture(scope="module")
def bsetup(henv):
    s = BrokerSetup(henv)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def broker(bsetup):
    b = Broker(bsetup, extra=["--max-pending-per-uid", "8"])
    try:
        yield b.wait_ready()
    finally:
        b.close()


def report_of(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        r = json.load(f)
    r["status_d"] = dict(l.split(":", 1) for l in r["status"].splitlines() if ":" in l)
    r["status_d"] = {k: v.strip() for k, v in r["status_d"].items()}
    return r


def netprobe(world, bsetup, *opts, via=None, nnp=True, cgroup=None, ns=None, pre=(),
             launcher=(), program=None, report=None, **kw):
    """The netprobe, through VIA (default: the front), as nobody in build a's
    cgroup and private namespace: (result, report)."""
    report = report or world.henv.out_path()
    argv = list(launcher) + [via or bsetup.front, program or bsetup.netprobe, "report", report,
                             "--connect=%d" % world.port] + list(opts)
    r = world.henv.run(argv, cgroup=cgroup or world.a.cgroup_path,
                       netns=ns or world.private.path, nnp=nnp, pre=pre, **kw)
    return r, report_of(report)


def assert_minted(got, world):
    """Joined the broker's way: the caller's own process, still in its own
    namespace, whose socket was made in the approved one."""
    assert got is not None, "the program did not run"
    assert tuple(got["netns"]) == tuple(world.private.identity[:2]), "left its own netns"
    assert got["connect"] == "token:" + world.parent_token, got["connect"]
    assert got["uid"] == hs.NOBODY and got["euid"] == hs.NOBODY
    assert got["status_d"]["CapEff"] == "0000000000000000"


def assert_serves(world, bsetup):
    """A well-formed request right after an attack: served."""
    r, got = netprobe(world, bsetup)
    assert r.returncode == 0, r.stderr
    assert_minted(got, world)


def client(world, bsetup, mode, *args, user=hs.NOBODY, cgroup=None, sock=None, env=None,
           timeout=60):
    """tests/broker_client.py as USER in build a (or CGROUP), in the private
    namespace: (result, answer bytes)."""
    out = world.henv.out_path("answer")
    argv = [USER_PY, bsetup.client, sock or bsetup.sock, mode, out] + list(args)
    r = world.henv.run(argv, cgroup=cgroup or world.a.cgroup_path, netns=world.private.path,
                       user=user, env=env, timeout=timeout)
    with contextlib.suppress(FileNotFoundError):
        with open(out, "rb") as f:
            return r, f.read()
    return r, None


def supervisors():
    """PIDs of running `cgnetns-helper --supervise` processes."""
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError):
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    if b"--supervise" in f.read():
                        found.append(int(d))
    return found


def wait_for(cond, what, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.02)


# ---------------------------------------------------------------------------
# what it must do

@pytest.mark.parametrize("via", ["front", "helper"])
def test_the_callers_own_process_gets_a_socket_in_the_approved_namespace(
        henv, world, bsetup, broker, via):
    """Under no_new_privs, through the front (what builds call) or the
    set-user-ID helper (which has no privilege then): the program is the very
    process that called (same pid as the launcher that exec'd the front), in
    its own namespace and cgroups, and its socket reaches the parent's
    server."""
    launched = henv.out_path("launch")
    r, got = netprobe(world, bsetup, via=bsetup.front if via == "front" else bsetup.helper,
                      launcher=[bsetup.netprobe, "confine", launched, "--"])
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    want = report_of(launched)
    assert_minted(got, world)
    assert got["pid"] == want["pid"], "the program is not the caller's own process"
    assert got["cgroup"] == want["cgroup"]
    assert got["status_d"]["NoNewPrivs"] == "1"
    assert re.search(r"program=%s: join" % re.escape(bsetup.netprobe), broker.text())


def test_exit_status_is_the_programs(henv, world, bsetup, broker):
    """The program is the caller's own process: its exit status is the
    caller's, with nothing in between."""
    r, got = netprobe(world, bsetup, "--exec", "/bin/sh", "-c", "exit 7")
    assert r.returncode == 7, r.stderr
    assert_minted(got, world)


def test_outside_any_build_passes_through_without_a_filter(henv, world, bsetup, broker):
    r, got = netprobe(world, bsetup, cgroup=henv.untagged_cgroup())
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert tuple(got["netns"]) == tuple(world.private.identity[:2])
    assert got["connect"] == "token:" + world.private_token
    assert got["status_d"]["Seccomp"] == "0", "a filter where nothing is minted"


def test_already_in_the_approved_namespace_passes_through(henv, world, bsetup, broker):
    r, got = netprobe(world, bsetup, ns="/proc/self/ns/net")
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert got["connect"] == "token:" + world.parent_token
    assert got["status_d"]["Seccomp"] == "0"


def test_other_build_gets_only_its_own_namespace(henv, world, builds, netns, servers, bsetup,
                                                 broker):
    n2 = netns("b2")
    other = "OTHER-" + os.urandom(4).hex()
    servers(other, n2.path, world.port)
    b = builds(n2.path, name="b")
    r, got = netprobe(world, bsetup, cgroup=b.cgroup_path)
    assert r.returncode == 0, r.stderr
    assert got["connect"] == "token:" + other


def test_user_namespace_caller_is_served_with_its_own_ids(henv, world, bsetup, broker):
    """In a user namespace of its own (root there): no privilege; the broker
    mints with the ids the kernel recorded in the initial namespace (nobody),
    never root's."""
    r, got = netprobe(world, bsetup, "--raw", pre=["unshare", "-Ur", "--"])
    assert r.returncode == 0, r.stderr
    assert got["connect"] == "token:" + world.parent_token
    assert got["raw"] == "errno:1", "a raw socket was made with more than the caller's rights"


def test_t05_cgroup_namespace_of_its_own_is_refused(henv, world, bsetup, broker):
    """One rule for both paths: a caller whose cgroup namespace is not the
    resolver's is refused, nothing run."""
    r, got = netprobe(world, bsetup, pre=["unshare", "-Ur", "-C", "--"])
    assert r.returncode == hs.EXIT_REFUSE, r.stderr
    assert "cgroup namespace of its own" in hs.one_line(r.stderr)
    assert got is None


def test_no_broker_runs_without_network_and_says_so(henv, world, bsetup):
    """The second front's socket has no listener (unless the socket-activation
    test runs it): the program runs unchanged, one line says why."""
    assert not _answers(bsetup.sock_activated)
    r, got = netprobe(world, bsetup, via=bsetup.activated_front)
    assert r.returncode == 0, r.stderr
    assert "no broker at %s" % bsetup.sock_activated in hs.one_line(r.stderr)
    assert got["connect"] == "token:" + world.private_token


def _answers(path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
            return True
        except OSError:
            return False


# ---------------------------------------------------------------------------
# 20. Credentials that change after connect()

def test_t20_credentials_changed_after_connect_count_for_nothing(henv, world, bsetup, broker):
    """The peer connects as nobody, then execs the set-user-ID helper and
    holds it at euid 0 (blocked on a full stderr pipe) while its child asks.
    Only the connect-time credentials count: the supervisor runs as nobody,
    the socket is nobody's, a raw socket is refused."""
    report = henv.out_path()
    r, answer = client(world, bsetup, "held", bsetup.netprobe, bsetup.helper, "--",
                       bsetup.netprobe, "report", report, "--connect=%d" % world.port, "--raw")
    holder = int(re.match(rb"holder (\d+) euid 0\n", answer).group(1))
    try:
        # (the run's own status is the holder's: it dies of the closed pipe)
        assert answer.endswith(b"ok\n"), (answer, r.stderr)
        got = report_of(report)
        assert_minted(got, world)
        assert got["raw"] == "errno:1"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(holder, signal.SIGKILL)


# ---------------------------------------------------------------------------
# 21 and 26. Confinement the caller carries, state the broker has

def test_t21_t26_the_program_keeps_the_callers_confinement(henv, world, bsetup, broker):
    """nice, oom_score_adj, a seccomp filter, a Landlock domain, every cgroup
    line (v1 too): the program has the caller's, not the broker's (nice 5,
    oom_score_adj 300, its own v1 pids cgroup)."""
    allowed = henv.attacker_dir()
    launched = henv.out_path("launch")
    outside = os.path.join(henv.out, "landlock-denied-" + os.urandom(4).hex())
    r, got = netprobe(world, bsetup, "--write=" + outside,
                      launcher=[bsetup.netprobe, "confine", launched, "--nice=10", "--oom=500",
                                "--seccomp", "--landlock=" + allowed, "--"],
                      report=os.path.join(allowed, "report.json"))
    assert r.returncode == 0, r.stderr
    want = report_of(launched)
    assert_minted(got, world)
    assert got["nice"] == 10 and got["oom_score_adj"].strip() == "500"
    assert got["write"] == "errno:13" and not os.path.exists(outside), "Landlock domain lost"
    assert int(got["status_d"]["Seccomp_filters"]) == int(want["status_d"]["Seccomp_filters"]) + 1
    assert got["cgroup"] == want["cgroup"], "a cgroup line differs from the caller's"
    if broker.v1:
        assert os.path.basename(broker.v1) not in got["cgroup"]


# ---------------------------------------------------------------------------
# 22. Sockets made for the caller carry the caller's credentials and cgroup

def test_t22_a_minted_socket_is_the_callers(henv, world, bsetup, broker):
    """/proc/net/tcp (ss -e) shows the caller's uid for the connection and
    its cgroup is the build's; SOCK_RAW is refused as for the caller; netlink
    is never minted (a dump sees only the caller's own lo)."""
    report = henv.out_path()
    argv = [bsetup.front, bsetup.netprobe, "report", report, "--connect=%d" % world.port,
            "--raw", "--netlink", "--hold=3000"]
    p = subprocess.Popen(["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"',
                          world.a.cgroup_path, "nsenter", "--net=" + world.private.path, "--",
                          "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          "--no-new-privs", "--"] + argv,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=henv.out)
    try:
        got = wait_for(lambda: report_of(report), "the report")
        assert_minted(got, world)
        # the server has closed its side already: CLOSE_WAIT, not established
        ss = subprocess.run(["ss", "-tanHe", "--cgroup", "( dport = :%d )" % world.port],
                            capture_output=True, text=True)
        lines = [l for l in ss.stdout.splitlines() if "127.0.0.1:%d" % world.port in l]
        assert len(lines) == 1, ss.stdout
        assert " uid:65534 " in lines[0], lines[0]
        cg = re.search(r"cgroup:(\S+)", lines[0]).group(1)
        rel = "/" + os.path.relpath(world.a.cgroup_path, henv.cgroot)
        assert cg == rel or cg.startswith(rel + "/"), (cg, rel)
        assert got["raw"] == "errno:1"
        assert got["netlink"] == "lo"
    finally:
        p.wait(30)
    assert p.returncode == 0, p.stderr.read()


def test_the_supervisor_is_the_caller_without_capabilities(henv, world, bsetup, broker):
    """While a program runs, its supervisor: in the build cgroup, the
    caller's uid, no capability, no_new_privs, not dumpable (so that the
    caller cannot ptrace it), in the approved namespace."""
    report = henv.out_path()
    before = set(supervisors())
    p = subprocess.Popen(["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"',
                          world.a.cgroup_path, "nsenter", "--net=" + world.private.path, "--",
                          "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          "--no-new-privs", "--", bsetup.front, bsetup.netprobe, "report",
                          report, "--connect=%d" % world.port, "--hold=4000"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: report_of(report), "the report")
        rel = "::/" + os.path.relpath(world.a.cgroup_path, henv.cgroot) + "\n"

        def ours():
            found = set()
            for pid in set(supervisors()) - before:
                with contextlib.suppress(OSError):
                    with open("/proc/%d/cgroup" % pid) as f:
                        if rel in f.read():
                            found.add(pid)
            return found
        sup = wait_for(ours, "the supervisor").pop()
        with open("/proc/%d/status" % sup) as f:
            st = dict(l.split(":", 1) for l in f)
        st = {k: v.split() for k, v in st.items()}
        assert st["Uid"] == ["65534"] * 4 and st["Gid"] == ["65534"] * 4
        assert st["CapEff"] == st["CapPrm"] == ["0000000000000000"]
        assert st["NoNewPrivs"] == ["1"]
        # not dumpable: its /proc files are root's, and the caller's uid
        # cannot attach to it
        assert os.stat("/proc/%d/mem" % sup).st_uid == 0, "dumpable: the caller could ptrace it"
        tr = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             "strace", "-p", str(sup), "-e", "trace=none"],
                            capture_output=True, text=True, timeout=10)
        assert "Operation not permitted" in tr.stderr, tr.stderr
        with open("/proc/%d/cgroup" % sup) as f:
            assert "::/" + os.path.relpath(world.a.cgroup_path, henv.cgroot) in f.read()
        assert os.stat("/proc/%d/ns/net" % sup).st_ino == world.host_ns[1]
        # and it goes away with the program
    finally:
        p.wait(30)
    wait_for(lambda: sup not in supervisors(), "the supervisor to exit")


# ---------------------------------------------------------------------------
# 23. What an allow-listed program runs gets no network

def test_t23_programs_run_by_an_allow_listed_program_get_no_network(henv, world, bsetup, broker):
    """The allow-listed netprobe execs an unlisted one (as distcc runs
    `python3 -c`, or gcc its -wrapper): the unlisted executable's socket is
    made in its own namespace and reaches only the decoy."""
    report = henv.out_path()
    r, got = netprobe(world, bsetup, "--exec", bsetup.unlisted, "report", report,
                      "--connect=%d" % world.port)
    assert r.returncode == 0, r.stderr
    assert_minted(got, world)
    child = report_of(report)
    assert child["exe"] == bsetup.unlisted
    assert child["connect"] == "token:" + world.private_token


def test_membership_a_listener_of_a_process_outside_the_build_is_not_served(
        henv, world, bsetup, broker):
    """A build process relays the listener of an outsider (same uid, no
    build) instead of its own: the supervisor serves only tasks of its build,
    so the outsider's allow-listed program still reaches only the decoy."""
    unixpath = os.path.join(henv.attacker_dir(), "offer.sock")
    report = henv.out_path()
    outsider = subprocess.Popen(
        ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', henv.untagged_cgroup(),
         "nsenter", "--net=" + world.private.path, "--", "setpriv", "--reuid=65534",
         "--regid=65534", "--clear-groups", "--", USER_PY, bsetup.client, "-", "offer",
         unixpath, "--", bsetup.netprobe, "report", report, "--connect=%d" % world.port],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
    try:
        r, answer = client(world, bsetup, "relay", bsetup.netprobe, unixpath)
        assert answer.startswith(b"join ") and answer.endswith(b"ok\n"), (answer, r.stderr)
        outsider.wait(30)
        got = report_of(report)
        assert got is not None, outsider.stderr.read()
        assert got["connect"] == "token:" + world.private_token
    finally:
        if outsider.poll() is None:
            outsider.kill()
            outsider.wait()


# ---------------------------------------------------------------------------
# 25. Exhaustion from outside every build

def test_t25_idle_connections_from_another_user_do_not_lock_anyone_out(
        henv, world, bsetup, broker):
    """A user outside every build parks 64 connections (8 may be pending per
    uid here, the rest wait in that uid's queue): the build is served all
    along, each parked request ends within the deadline (closed, or answered
    busy), and the broker holds no more descriptors than before."""
    fds_before = broker.fds()
    attacker = subprocess.Popen(
        ["setpriv", "--reuid=%d" % ATTACKER_UID, "--regid=%d" % ATTACKER_UID, "--clear-groups",
         "--", USER_PY, "-c", "import socket,sys,time\n"
         "ss=[]\n"
         "for i in range(64):\n"
         "    s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); ss.append(s)\n"
         "print('parked', flush=True)\n"
         "t=time.monotonic()\n"
         "closed=0\n"
         "for s in ss:\n"
         "    s.settimeout(max(0.1, 15-(time.monotonic()-t)))\n"
         "    try:\n"
         "        a = s.recv(4096)\n"
         "        closed += a == b'' or a.startswith(b'refuse 125 cgnetnsd is busy')\n"
         "    except OSError:\n"
         "        pass\n"
         "print('closed', closed, round(time.monotonic()-t, 1), flush=True)\n",
         bsetup.sock], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert attacker.stdout.readline().strip() == "parked", attacker.stderr.read()
        for _ in range(3):
            assert_serves(world, bsetup)
        out = attacker.stdout.readline().split()
        assert out[:2] == ["closed", "64"], (out, attacker.stderr.read())
        assert float(out[2]) <= 2 * broker_mod.HANDSHAKE_SECONDS + 2
    finally:
        attacker.kill()
        attacker.wait()
    assert broker.proc.poll() is None, broker.text()
    wait_for(lambda: broker.fds() <= fds_before + 2, "the broker to let go of descriptors")


def test_t25_descriptors_before_a_header_are_never_received(henv, world, bsetup, broker):
    """20 clients each send 65 descriptors before their header: the kernel
    discards them (the broker's side reads with recv), the broker's
    descriptor count does not grow, and everyone is served."""
    fds_before = broker.fds()
    for _ in range(20):
        r, answer = client(world, bsetup, "fds", bsetup.netprobe, "65",
                           cgroup=henv.untagged_cgroup())
        assert answer == b"pass %s\n" % bsetup.netprobe.encode(), (answer, r.stderr)
    assert broker.fds() <= fds_before + 2
    assert_serves(world, bsetup)


@pytest.mark.parametrize("attack", ["garbage", "bad-magic", "oversized-name", "zero-name",
                                    "nul-in-name", "bad-flags", "truncated"])
def test_t15_bad_requests_are_refused_and_the_broker_serves_on(henv, world, bsetup, broker,
                                                               attack):
    good = broker_mod.encode_request(bsetup.netprobe)
    raw = {
        "garbage": os.urandom(64),
        "bad-magic": b"XXXX" + good[4:],
        "oversized-name": struct.pack("=4sII", b"CGN2", 0, 4 << 20) + b"x" * 20000,
        "zero-name": struct.pack("=4sII", b"CGN2", 0, 0),
        "nul-in-name": broker_mod.encode_request("net\0probe"),
        "bad-flags": broker_mod.encode_request(bsetup.netprobe, flags=1),
        "truncated": good[:-3],
    }[attack]
    rss_before = broker.rss_kib()
    t0 = time.monotonic()
    r, answer = client(world, bsetup, "raw", raw.hex())
    took = time.monotonic() - t0
    assert answer == b"" or answer.startswith(b"refuse 125 "), answer
    assert b"join" not in answer and b"pass" not in answer
    assert took < 2 * broker_mod.HANDSHAKE_SECONDS + 5
    assert broker.proc.poll() is None, broker.text()
    assert broker.rss_kib() < rss_before + 4096, "the broker kept what a client sent"
    assert_serves(world, bsetup)


# ---------------------------------------------------------------------------
# 7 and 27. What is written, and where

def test_refusal_text_is_written_by_the_caller_not_by_root(henv, world, bsetup, broker):
    """The caller's stderr is a unix datagram socket whose reader receives
    SCM_CREDENTIALS: the refusal line arrives with the caller's uid, written by
    the caller's own process (the broker writes into no descriptor of its)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as rd, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as wr:
        path = os.path.join(henv.attacker_dir(), "log.sock")
        rd.bind(path)
        os.chmod(path, 0o666)
        rd.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        wr.connect(path)
        report = henv.out_path()
        r = world.a.run([bsetup.front, bsetup.unlisted, "report", report],
                        netns=world.private.path, nnp=True, stderr=wr.fileno())
        assert r.returncode == hs.EXIT_NOT_USABLE
        rd.settimeout(5)
        msg, anc, _, _ = rd.recvmsg(4096, socket.CMSG_SPACE(12))
        assert msg.startswith(b"cgnetns-exec: ") and b"not in the allow list" in msg, msg
        pid, uid, gid = struct.unpack("3i", anc[0][2][:12])
        assert uid == hs.NOBODY, "written with uid %d" % uid
        hs.assert_not_run(report)


def test_t27_a_program_name_cannot_forge_log_lines(henv, world, bsetup, broker):
    forged = "x\ncgnetnsd: pid=1 uid=0 program=/bin/sh: join /bin/sh\x1b[2J"
    before = broker.text().count("\n")
    r, answer = client(world, bsetup, "answer", forged)
    assert answer.startswith(b"refuse 126 "), answer
    wait_for(lambda: broker.text().count("\n") > before, "the log line")
    new = broker.text().splitlines()[before:]
    assert len(new) == 1, new
    assert "\\x0a" in new[0] and "\\x1b" in new[0]
    assert not any(l.startswith("cgnetnsd: pid=1 ") for l in broker.text().splitlines())


def test_a_connection_closed_before_its_first_byte_is_not_logged(henv, world, bsetup, broker):
    """cgnetns-run connects and closes to see whether a broker answers: no
    request, no log line.  A connection closed part way through its header
    is still refused and logged, and the broker serves on."""
    before = broker.text().count("\n")
    for _ in range(3):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(bsetup.sock)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(bsetup.sock)
        s.sendall(b"CGN2")
    wait_for(lambda: "before its request was complete" in
             "\n".join(broker.text().splitlines()[before:]), "the partial request's line")
    assert_serves(world, bsetup)
    new = [l for l in broker.text().splitlines()[before:] if ": refuse " in l]
    assert len(new) == 1 and "client went away before its request was complete" in new[0], new


# ---------------------------------------------------------------------------
# 16-17. The kernel's word only; nothing the client names

@pytest.mark.parametrize("auth", ["pidfd", "peercred"])
def test_t16_a_peer_that_exits_after_connecting_gets_nothing(henv, world, bsetup, broker, auth):
    b = broker
    if auth == "peercred":   # the pre-6.5 check, forced
        b = Broker(bsetup, extra=["--peer-auth", "peercred", "--socket",
                                  bsetup.sock + ".pc"])
        b.sock = bsetup.sock + ".pc"
    try:
        if auth == "peercred":
            b.wait_ready()
        r, answer = client(world, bsetup, "peer-exits", bsetup.netprobe, sock=b.sock)
        assert answer.startswith(b"refuse 125 "), (answer, r.stderr)
        assert b"peer has gone" in answer
    finally:
        if b is not broker:
            b.close()


def test_t16_peercred_fallback_serves_a_live_peer(henv, world, bsetup):
    sock = bsetup.sock + ".pc2"
    b = Broker(bsetup, extra=["--peer-auth", "peercred", "--socket", sock]).wait_ready()
    try:
        report = henv.out_path()
        r, answer = client(world, bsetup, "join", bsetup.netprobe, "--", bsetup.netprobe,
                           "report", report, "--connect=%d" % world.port, sock=sock)
        assert answer.startswith(b"join ") and answer.endswith(b"ok\n"), (answer, r.stderr)
        assert_minted(report_of(report), world)
    finally:
        b.close()


def test_t16_descriptors_naming_another_process_are_not_received(henv, world, bsetup, broker):
    """An outsider attaches descriptors (a pidfd of a build member would be
    one) to its request: they never reach the broker's side, which asks the
    kernel who connected and answers for the outsider."""
    r, answer = client(world, bsetup, "fds", bsetup.netprobe, "3",
                       cgroup=henv.untagged_cgroup())
    assert answer == b"pass %s\n" % bsetup.netprobe.encode(), (answer, r.stderr)


def test_t17_program_not_allow_listed_is_refused(henv, world, bsetup, broker):
    report = henv.out_path()
    r = world.a.run([bsetup.front, bsetup.unlisted, "report", report],
                    netns=world.private.path, nnp=True)
    assert r.returncode == hs.EXIT_NOT_USABLE
    assert "not in the allow list" in hs.one_line(r.stderr)
    hs.assert_not_run(report)
    r, answer = client(world, bsetup, "answer", "bin/netprobe")
    assert answer.startswith(b"refuse 126 "), answer


def test_t17_a_joined_client_that_runs_another_program_gets_nothing_for_it(
        henv, world, bsetup, broker):
    """The client asks for the allow-listed netprobe, then execs an unlisted
    program under the filter: that executable gets no minted socket."""
    report = henv.out_path()
    r, answer = client(world, bsetup, "join", bsetup.netprobe, "--", bsetup.unlisted,
                       "report", report, "--connect=%d" % world.port)
    assert answer.startswith(b"join ") and answer.endswith(b"ok\n"), answer
    got = report_of(report)
    assert got["connect"] == "token:" + world.private_token


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
        wait_for(lambda: os.path.exists(bsetup.sock_activated), "the activation socket")
        # systemd-socket-activate makes the socket 0644 and starts cgnetnsd on
        # the first connection; cgnetnsd makes it 0666 (systemd's unit says
        # SocketMode=0666 itself).  Root knocks first, then the build asks.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as k:
            k.connect(bsetup.sock_activated)
        b.wait_ready()
        r, got = netprobe(world, bsetup, via=bsetup.activated_front)
        assert r.returncode == 0 and r.stderr == b"", (r.stderr, b.text())
        assert_minted(got, world)
    finally:
        b.close()
        if os.path.exists(bsetup.sock_activated):
            os.unlink(bsetup.sock_activated)


def test_t22_a_root_caller_gets_no_capability_in_its_sockets(henv, world, bsetup, broker):
    """A root caller under no_new_privs (its own bounding set reduced, so it
    cannot make a raw socket itself): its supervisor keeps uid 0 but no
    capability, so the minted socket has no more than the caller's."""
    report = henv.out_path()
    argv = ["setpriv", "--no-new-privs", "--bounding-set=-net_raw", "--inh-caps=-net_raw", "--",
            bsetup.front, bsetup.netprobe, "report", report, "--connect=%d" % world.port, "--raw"]
    r = world.a.run(argv, netns=world.private.path, user=None)
    assert r.returncode == 0, r.stderr
    got = report_of(report)
    assert got["uid"] == 0
    assert got["connect"] == "token:" + world.parent_token
    assert got["raw"] == "errno:1", "the supervisor made a raw socket the caller could not"


def test_a_stuck_broker_costs_a_refusal_not_a_hang(henv, world, bsetup, broker):
    """The broker stops answering (SIGSTOP: connections queue in the kernel's
    backlog, nobody accepts): the client gives up after its deadline (twice the
    broker's) with one line and 125, and runs nothing."""
    os.kill(broker.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        r, got = netprobe(world, bsetup, timeout=60)
        took = time.monotonic() - t0
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    assert r.returncode == hs.EXIT_REFUSE, r.stderr
    assert "did not answer within %d s" % (2 * broker_mod.HANDSHAKE_SECONDS) in \
        hs.one_line(r.stderr)
    assert got is None
    assert 2 * broker_mod.HANDSHAKE_SECONDS - 1 <= took < 2 * broker_mod.HANDSHAKE_SECONDS + 10
    assert_serves(world, bsetup)


def test_t22_only_inet_sockets_are_ever_minted(henv, world, bsetup, broker):
    """The listener is the caller's: an attacker's own filter also sends
    socket(AF_UNIX) to the supervisor.  It is never made in the approved
    namespace (abstract unix names are per network namespace): the abstract
    socket listening there stays out of reach, while AF_INET is minted."""
    name = "cgnetns-test-" + os.urandom(4).hex()
    token = "UNIX-" + os.urandom(4).hex()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind("\0" + name)
    srv.listen(4)
    srv.settimeout(0.2)
    stop = []

    def serve():
        while not stop:
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            with c:
                c.sendall(token.encode() + b"\n")
    import threading
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        report = henv.out_path()
        r, answer = client(world, bsetup, "join-unix", bsetup.netprobe, "--", bsetup.netprobe,
                           "report", report, "--connect=%d" % world.port, "--unix=" + name)
        assert answer.startswith(b"join ") and answer.endswith(b"ok\n"), (answer, r.stderr)
        got = report_of(report)
        assert got["connect"] == "token:" + world.parent_token
        assert got["unix"] == "connect:111", got["unix"]   # ECONNREFUSED: its own netns
    finally:
        stop.append(1)
        t.join(5)
        srv.close()


def _fork_servers(broker):
    return hs.fork_servers(broker.proc.pid)


def test_the_fork_server_is_started_again_when_it_ends(henv, world, bsetup):
    """cgnetnsd forks each request's supervise process from one helper it
    started (--fork-server), which is real root and runs no request itself.
    Killed, it is started again for the next request (and the log says so),
    and the broker's per-uid count comes back: more joins than the uid's
    share are served afterwards, one after another."""
    sock = bsetup.sock + ".fs"
    b = Broker(bsetup, extra=["--max-pending-per-uid", "2", "--socket", sock]).wait_ready()

    def joined():
        report = henv.out_path()
        r, answer = client(world, bsetup, "join", bsetup.netprobe, "--", bsetup.netprobe,
                           "report", report, "--connect=%d" % world.port, sock=sock)
        assert answer and answer.startswith(b"join ") and answer.endswith(b"ok\n"), \
            (answer, r.stderr, b.text())   # the log says what went wrong
        assert_minted(report_of(report), world)

    try:
        joined()
        (srv,) = wait_for(lambda: _fork_servers(b), "the fork server")
        with open("/proc/%d/status" % srv) as f:
            st = dict(l.split(":", 1) for l in f if ":" in l)
        assert st["Uid"].split() == ["0"] * 4
        with open("/proc/%d/cmdline" % srv, "rb") as f:
            assert f.read().split(b"\0")[1] == b"--fork-server"
        os.kill(srv, signal.SIGKILL)
        wait_for(lambda: "fork server (pid %d) ended" % srv in b.text(), "the broker to notice")
        for _ in range(4):
            joined()
        (again,) = _fork_servers(b)
        assert again != srv
    finally:
        b.close()
    assert not _fork_servers(b), "the fork server outlived its broker"


def test_the_fork_server_takes_only_its_socket_pair(henv, world, bsetup):
    """Run by root by hand with a stream socket (not cgnetnsd's socket pair)
    on fd 3: refused with one line, nothing forked or answered."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        on_fd3 = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.execv(sys.argv[2], sys.argv[2:])"
        r = subprocess.run([PY, "-c", on_fd3, str(theirs.fileno()), bsetup.helper,
                            "--fork-server"], pass_fds=(theirs.fileno(),),
                           capture_output=True, timeout=30)
        theirs.close()
        mine.settimeout(5)
        answered = mine.recv(64)
    finally:
        mine.close()
        theirs.close()
    assert r.returncode == hs.EXIT_REFUSE, r
    assert hs.one_line(r.stderr) == ("cgnetns-exec: --fork-server: fd 3 is not cgnetnsd's "
                                     "socket pair")
    assert answered == b""


def test_a_helper_that_cannot_start_is_reported_at_once(henv, bsetup):
    """--helper naming no program: cgnetnsd says so in one line and exits 1
    at start, not at the first request, and leaves no socket behind."""
    sock = os.path.join(bsetup.dir, "nohelper.sock")
    missing = os.path.join(bsetup.dir, "no-such-helper")
    r = subprocess.run([PY, "-m", "cgnetns.cli.broker", "--socket", sock, "--helper", missing],
                       env=repo_env(), cwd="/", capture_output=True, timeout=60)
    assert r.returncode == 1, r
    assert r.stderr.decode() == (
        "cgnetnsd: cannot start %s --fork-server: No such file or directory (is --helper the "
        "installed cgnetns-helper?)\n" % missing)
    assert not os.path.exists(sock)


def test_a_stuck_fork_server_is_replaced(henv, world, bsetup):
    """The fork server stops answering (SIGSTOP): the request handed to it is
    refused at its deadline (125, the broker closed the connection), the
    broker kills and reaps the stuck server, says so, and serves the next
    request with a new one."""
    sock = bsetup.sock + ".stuck"
    b = Broker(bsetup, extra=["--socket", sock]).wait_ready()
    srv = None
    try:
        (srv,) = wait_for(lambda: _fork_servers(b), "the fork server")
        os.kill(srv, signal.SIGSTOP)
        r, answer = client(world, bsetup, "join", bsetup.netprobe, "--", bsetup.netprobe,
                           "report", henv.out_path(), "--connect=%d" % world.port, sock=sock)
        assert not answer, (answer, r.stderr)
        wait_for(lambda: "fork server (pid %d) did not answer within %ds" % (
            srv, broker_mod.HANDSHAKE_SECONDS) in b.text(), "the broker to give up on it")
        wait_for(lambda: not os.path.exists("/proc/%d" % srv), "the stuck server to be reaped")
        report = henv.out_path()
        r, answer = client(world, bsetup, "join", bsetup.netprobe, "--", bsetup.netprobe,
                           "report", report, "--connect=%d" % world.port, sock=sock)
        assert answer and answer.endswith(b"ok\n"), (answer, r.stderr, b.text())
        assert_minted(report_of(report), world)
    finally:
        if srv is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(srv, signal.SIGCONT)
        b.close()
