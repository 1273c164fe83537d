"""doc/THREATS.rst items 1-17 against cgnetns-exec, each played by an
attacker on the real kernel (setpriv as nobody, unshare, ip netns, nsenter),
on both paths:

- the set-user-ID path: the installed front (which execs the installed
  set-user-ID helper) or a private variant of the helper;
- the broker path: the private musl variant under no_new_privs (its
  set-user-ID bit then gains nothing: it is the broker's client), answered
  by a cgnetnsd of this checkout on the private variants' own broker socket
  (PrivateBroker below, `--helper henv.variants["musl"]`, whose --supervise
  mode has the private allow list and pins compiled in).  Nothing shared is
  used on that path: the system's broker, allow list and pins may change
  under these tests.

Most tests take a parameter `via` ("installed", "musl", "glibc": the
set-user-ID path through that helper; "broker": the broker path), so the
same attack is played on both.  What a join is differs, and so does the
assertion: on the set-user-ID path the program runs in the approved
namespace (hs.assert_joined); on the broker path it stays the caller's own
process in its own namespace and its AF_INET socket, minted by the
supervisor, reaches the approved one (hs.assert_minted).  A refusal is the
same line and exit status on both, and on the broker path the broker's log
must show that it decided it (not the client's own fallback when no broker
answers).  Where an item cannot apply to one path (the privileged window of
item 12, the inherited privileged descriptors of item 11, the requests of
items 15-17), the test says so and plays the counterpart that can fail
there.  The matrix is the docstring of each test and tools/mutants_table.py.

Every test checks what happened, not only the exit status: the program the
attacker tried to run would have written a report (the marker) naming the
network namespace it ran in; it must be absent, or name the attacker's own
namespace and no privilege.  A server that listens only in the approved
namespace, and a decoy on the same port in the attacker's private one, tell
which namespace was reached.

Tests that change the allow list or the pins directory use the private
variants of the helper (same sources, compiled with paths inside the test
directory), so that nothing shared is made unsafe even for a moment.  The
tests that `make mutants` (tools/mutants_table.py) relies on run against a
variant too: built from helper/, they carry the mutant (the private broker's
supervise mode included).

Where the kernel would protect anyway, the test takes that protection away
first (fs.suid_dumpable and kernel.core_pattern for core dumps, restored
afterwards also on failure), and each refusal is asserted by its exact
message, so that another check printing a similar line cannot stand in for
it.  Checks that no real kernel state reaches (the drop's verification) are
reached through a root ptrace tracer compiled here that changes one system
call's result.
"""

import contextlib
import fcntl
import json
import os
import re
import resource
import shutil
import signal
import socket
import stat
import struct
import subprocess
import threading
import time

import pytest

try:
    from . import helper_support as hs
    from .conftest import PY, USER_PY, repo_env
except ImportError:
    import helper_support as hs
    from conftest import PY, USER_PY, repo_env

henv, builds, netns, servers, world = hs.henv, hs.builds, hs.netns, hs.servers, hs.world

HERE = os.path.dirname(os.path.abspath(__file__))
NOTICE = "no privilege"
# the pins directory each helper reads (a private variant's is compiled in)
PINS_OF = {"installed": lambda henv: hs.PINS, "musl": lambda henv: henv.private_pins,
           "glibc": lambda henv: henv.private_pins, "broker": lambda henv: henv.private_pins}


# ---------------------------------------------------------------------------
# The broker path, made real for the private variants

class PrivateBroker:
    """cgnetnsd of this checkout on the private variants' broker socket
    (henv.private_broker), serving with `henv.variants["musl"] --supervise`
    (private allow list and pins compiled in).  Started with RLIMIT_CORE
    unlimited, which its supervise processes and supervisors inherit: only
    their own PR_SET_DUMPABLE can keep them from dumping core (item 12).
    Started and stopped on demand (a test of the no-broker line wants it
    stopped); stopped by its pid; a fresh log for each start."""

    def __init__(self, henv):
        self.henv = henv
        self.proc = None
        self.log = None
        self.log_path = os.path.join(henv.tdir, "private-broker.log")

    def start(self):
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.stop()
        self.log = open(self.log_path, "wb")

        def prepare():
            resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2)
        self.proc = subprocess.Popen(
            [PY, "-m", "cgnetns.cli.broker", "--socket", self.henv.private_broker,
             "--helper", self.henv.variants["musl"]],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=repo_env(), cwd="/", preexec_fn=prepare)
        hs.wait_broker_serving(self.proc, self.log_path, "the private broker")
        return self

    def stop(self):
        if self.proc is not None:
            hs.stop_process(self.proc)
            self.proc = None
        if self.log is not None:
            self.log.close()
            self.log = None
        assert not os.path.exists(self.henv.private_broker)

    def text(self):
        return hs.read_log(self.log_path)

    def mark(self):
        return len(self.text())

    def wait_line(self, pattern, mark=0, timeout=10):
        """The first log line after `mark` that pattern (a regex) searches;
        supervise writes it right after its answer, so it may lag."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.text()[mark:].splitlines():
                if rx.search(line):
                    return line
            assert time.monotonic() < deadline, "no log line %r in:\n%s" % (
                pattern, self.text()[mark:])
            time.sleep(0.02)

    def supervise_children(self):
        """PIDs of the supervise processes it runs now: the children of its
        fork server (helper/spawner.c), the one child of its own whose
        command line says --fork-server."""
        table = hs.process_table()
        servers = set(hs.fork_servers(self.proc.pid, table))
        return [pid for pid, (ppid, _) in table.items()
                if ppid in servers or (ppid == self.proc.pid and pid not in servers)]


@pytest.fixture(scope="module")
def private_broker(henv):
    b = PrivateBroker(henv)
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def pbroker(private_broker):
    """The private broker, running."""
    return private_broker.start()


@pytest.fixture
def no_pbroker(private_broker):
    """No broker on the private socket: the private variants' no-privilege
    path says so and runs the program unchanged."""
    private_broker.stop()


def wait_for(cond, what, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.01)


def assert_minted(report, private_ns, token, unprivileged=True):
    """hs.assert_minted; unprivileged=False: a caller in a user namespace of
    its own, whose capabilities there are its own."""
    if unprivileged:
        hs.assert_minted(report, private_ns, token)
        return
    assert report is not None, "the program did not run"
    assert (report["netns"]["dev"], report["netns"]["ino"]) == tuple(private_ns.identity[:2]), \
        "the program left its own network namespace"
    assert report["connect"] == {"token": token}, report.get("connect")


class Via:
    """How one test calls, for tests parametrised over both paths.

    "installed", "musl", "glibc": the set-user-ID path through that helper
    (the installed front, or a private variant), with a build approving the
    host namespace in the pins directory that helper reads (the installed
    one: the shared build `world.a`).  "broker": the broker path -- the
    private musl variant under no_new_privs, the private broker running, a
    build in the private pins directory."""

    def __init__(self, request, via, name="v", approved=None):
        self._request = request
        self.henv = request.getfixturevalue("henv")
        self.world = request.getfixturevalue("world")
        self.builds = request.getfixturevalue("builds")
        self.via = via
        self.broker = via == "broker"
        self.helper = "musl" if self.broker else via
        self.pb = request.getfixturevalue("pbroker") if self.broker else None
        self.mark = self.pb.mark() if self.broker else 0
        self.pins = PINS_OF[via](self.henv)
        if approved is None:
            self.exe, self.build = _build_for(self.henv, self.world, self.builds, self.helper, name)
        else:  # a build of its own approving that namespace
            self.exe = (self.henv.installed if via == "installed"
                        else self.henv.variants[self.helper])
            self.build = self.builds(approved, name=name, pins=self.pins)
        self.allow = hs.ALLOW if via == "installed" else self.henv.private_allow

    def run(self, argv, build=None, **kw):
        """argv as nobody (no_new_privs on the broker path) in `build` (or
        the cgroup given) and the private namespace (or the netns given)."""
        kw.setdefault("netns", self.world.private.path)
        kw.setdefault("nnp", self.broker)
        if "cgroup" not in kw:
            kw["cgroup"] = (build or self.build).cgroup_path
        return self.henv.run(argv, **kw)

    def probe_argv(self, report, *extra):
        return self.world.probe_argv(report, self.exe, *extra)

    def setpriv_nobody(self, groups=()):
        """The drop to nobody for a script that does something as root first."""
        sp = ["setpriv", "--reuid=65534", "--regid=65534"]
        sp += ["--groups=" + ",".join(map(str, groups))] if groups else ["--clear-groups"]
        return sp + (["--no-new-privs"] if self.broker else []) + ["--"]

    def other_build(self, name="b"):
        """A second build B (in the same pins directory), approving a
        namespace of its own whose server on the world's port sends
        "OTHER-..."."""
        return other_build(self.world, self.builds, self._request.getfixturevalue("netns"),
                           self._request.getfixturevalue("servers"), name=name, pins=self.pins)

    def assert_joined(self, report, ns_identity, token, unprivileged=True):
        """Set-user-ID path: the program ran in the namespace ns_identity;
        broker path: it stayed in the private one and its socket reached
        the approved one (token: the server there)."""
        if self.broker:
            assert_minted(report, self.world.private, token, unprivileged)
            self.said(r": join %s \(supervisor \d+\)$" % re.escape(report["exe"]))
        else:
            hs.assert_joined(report, ns_identity, token)

    def assert_unchanged(self, report, unprivileged=True, program=None):
        """Ran, but as the caller could itself: its own namespace, no
        privilege; on the broker path passed through ("pass", so no filter)."""
        hs.assert_not_joined(report, self.world.private, self.world.private_token, unprivileged)
        if self.broker:
            assert report["status"]["Seccomp"] == "0", "a filter where nothing is minted"
            self.said(r": pass %s$" % re.escape(program or report["exe"]))

    def assert_refused(self, r, status, line, report=None, by_broker=True):
        """Exit status and the one line, exactly (a str), or fully matched
        (a compiled regex), or containing it (a str in a tuple); nothing run.
        On the broker path the broker decided it (by_broker): its log has
        the refusal."""
        assert r.returncode == status, (r.returncode, r.stderr)
        got = hs.one_line(r.stderr)
        if isinstance(line, tuple):
            assert line[0] in got, (line[0], got)
        elif isinstance(line, str):
            assert got == line, got
        else:
            assert line.fullmatch(got), got
        if report is not None:
            hs.assert_not_run(report)
        if self.broker and by_broker:
            self.said(r": refuse %d: %s$" % (status, re.escape(got[len(hs.PREFIX):])))

    def said(self, pattern):
        """Broker path: a line of the broker's log since this Via was made."""
        if self.broker:
            return self.pb.wait_line(pattern, self.mark)


ATTACKER_PY = r'''"""The attacker's own tools for tests/test_helper_threats.py (broker path),
run as an unprivileged user with Debian's /usr/bin/python3 (standard library
and ctypes only), beside a copy of tests/broker_client.py.

  attacker.py proc PID OUT          what this uid can do to process PID
  attacker.py supervisor CGDIR OUT  the same to its own supervisor (the one in
                                    cgroup directory CGDIR), then SIGABRT it
  attacker.py stall SOCK            connect, say "connected", send nothing
  attacker.py zombie SOCK NAME OUT  connect; exit; a child, once the connector
                                    is a zombie (nobody has reaped it), asks
  attacker.py connector SOCK UNIX   connect, hand the connection over UNIX
  attacker.py outsider UNIX NAME OUT -- CMD...
                                    take a connection handed over UNIX and ask
                                    on it; on "join" send this process's
                                    listener; on "ok" exec CMD
  attacker.py client SOCK OUT NAME [--attach=FD|--attach-pidfd=PID]... [-- CMD...]
                                    ask with descriptors attached (SCM_RIGHTS
                                    with the header); on "join"/"ok" exec CMD
  attacker.py sigsocket GO PORT OUT with a SIGUSR1 handler, once GO exists:
                                    socket(AF_INET), connect to 127.0.0.1:PORT
OUT gets JSON (proc, supervisor, sigsocket) or the answer lines.
"""
import ctypes
import json
import os
import signal
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import broker_client as bc  # noqa: E402

libc = ctypes.CDLL(None, use_errno=True)
PTRACE_ATTACH, PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT = 16, 17, 0x4206, 0x4207
WALL = 0x40000000


class IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def errno_of(fn):
    try:
        fn()
        return 0
    except OSError as e:
        return e.errno


def ptrace(req, pid):
    return libc.ptrace(ctypes.c_long(req), ctypes.c_long(pid), None, None)


def proc_attacks(pid):
    """0 for each attack that worked, else its errno."""
    r = {}
    for name, req in (("attach", PTRACE_ATTACH), ("seize", PTRACE_SEIZE)):
        if ptrace(req, pid) == 0:
            r[name] = 0
            if req == PTRACE_SEIZE:
                ptrace(PTRACE_INTERRUPT, pid)
            try:
                os.waitpid(pid, WALL)
            except ChildProcessError:
                pass
            ptrace(PTRACE_DETACH, pid)
        else:
            r[name] = ctypes.get_errno()
    for name in ("mem", "environ"):
        r[name] = errno_of(lambda: os.close(os.open("/proc/%d/%s" % (pid, name), os.O_RDONLY)))
    r["fd"] = errno_of(lambda: os.listdir("/proc/%d/fd" % pid))
    for name in ("cwd", "exe", "root"):
        r[name] = errno_of(lambda: os.readlink("/proc/%d/%s" % (pid, name)))
    buf = ctypes.create_string_buffer(64)
    local, remote = IOVec(ctypes.addressof(buf), 64), IOVec(0x10000, 64)
    n = libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    r["vm_readv"] = 0 if n >= 0 else ctypes.get_errno()
    r["signal"] = errno_of(lambda: os.kill(pid, 0))
    r["mem_uid"] = os.stat("/proc/%d/mem" % pid).st_uid
    with open("/proc/%d/status" % pid) as f:
        r["Uid"] = [ln.split()[1:] for ln in f if ln.startswith("Uid:")][0]
    return r


def write_json(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.rename(path + ".tmp", path)


def write_bytes(path, data):
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.rename(path + ".tmp", path)


def own_supervisor(cgdir):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with open(os.path.join(cgdir, "cgroup.procs")) as f:
            pids = [int(p) for p in f.read().split()]
        for p in pids:
            try:
                with open("/proc/%d/cmdline" % p, "rb") as f:
                    if b"--supervise" in f.read().split(b"\0"):
                        return p
            except OSError:
                pass
        time.sleep(0.01)
    raise SystemExit("no supervisor in " + cgdir)


def exchange(s, name, fds=(), out=None, cmd=None):
    """The request on s (with fds attached), the answers; exec cmd on ok."""
    req = bc.request(name)
    if fds:
        s.sendmsg([req[:12]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                struct.pack("%di" % len(fds), *fds))])
        s.sendall(req[12:])
    else:
        s.sendall(req)
    answers = bc.read_line(s)
    if answers.startswith(b"join "):
        fd = bc.install_listener()
        bc.send_fd(s, fd)
        os.close(fd)
        answers += bc.read_line(s)
    write_bytes(out, answers)
    if cmd and answers.endswith(b"ok\n"):
        s.close()
        os.execv(cmd[0], cmd)


def main(argv):
    mode = argv[1]
    cmd = argv[argv.index("--") + 1:] if "--" in argv else None
    if mode == "proc":
        write_json(argv[3], proc_attacks(int(argv[2])))
    elif mode == "supervisor":
        pid = own_supervisor(argv[2])
        r = proc_attacks(pid)
        r["pid"] = pid
        r["abort"] = errno_of(lambda: os.kill(pid, signal.SIGABRT))
        deadline = time.monotonic() + 10
        while os.path.exists("/proc/%d" % pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        r["gone"] = not os.path.exists("/proc/%d" % pid)
        write_json(argv[3], r)
    elif mode == "stall":
        s = bc.connect(argv[2])
        print("connected", flush=True)
        s.settimeout(30)
        try:
            s.recv(1)
        except OSError:
            pass
    elif mode == "zombie":
        s = bc.connect(argv[2])
        parent = os.getpid()
        if os.fork() != 0:
            os._exit(0)
        stat = "/proc/%d/stat" % parent
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with open(stat, "rb") as f:
                data = f.read()
            if data[data.rindex(b")") + 2:][:1] == b"Z":
                break
            time.sleep(0.005)
        s.sendall(bc.request(argv[3]))
        write_bytes(argv[4], b"zombie\n" + bc.read_line(s))
    elif mode == "connector":
        s = bc.connect(argv[2])
        deadline = time.monotonic() + 20
        while not os.path.exists(argv[3]) and time.monotonic() < deadline:
            time.sleep(0.01)
        u = bc.connect(argv[3])
        bc.send_fd(u, s.fileno())
        u.settimeout(30)
        try:
            u.recv(1)   # until the outsider has exec'd (its end is close-on-exec)
        except OSError:
            pass
    elif mode == "outsider":
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(argv[2] + ".tmp")
        os.rename(argv[2] + ".tmp", argv[2])
        srv.listen(1)
        srv.settimeout(30)
        u, _ = srv.accept()
        _, anc, _, _ = u.recvmsg(1, socket.CMSG_SPACE(4))
        s = socket.socket(fileno=struct.unpack("i", anc[0][2][:4])[0])
        s.settimeout(20)
        exchange(s, argv[3], out=argv[4], cmd=cmd)
    elif mode == "client":
        s = bc.connect(argv[2])
        fds = []
        for a in argv[5:]:
            if a == "--":
                break
            if a.startswith("--attach="):
                fds.append(int(a.split("=", 1)[1]))
            elif a.startswith("--attach-pidfd="):
                fds.append(os.pidfd_open(int(a.split("=", 1)[1])))
        exchange(s, argv[4], fds, out=argv[3], cmd=cmd)
    elif mode == "sigsocket":
        handled = []
        signal.signal(signal.SIGUSR1, lambda *_: handled.append(1))
        while not os.path.exists(argv[2]):
            time.sleep(0.01)
        while True:
            try:   # a handled signal interrupts a socket() that waits for the
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)   # supervisor
                break
            except InterruptedError:
                pass
        s.settimeout(10)
        s.connect(("127.0.0.1", int(argv[3])))
        token = s.recv(100).decode().strip()
        write_json(argv[4], {"token": token, "handled": len(handled)})
    else:
        raise SystemExit("unknown mode " + mode)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
'''


@pytest.fixture(scope="module")
def attacker_py(henv):
    """ATTACKER_PY and a copy of tests/broker_client.py, readable by nobody."""
    d = os.path.join(henv.tdir, "attacker-py")
    os.makedirs(d, 0o755, exist_ok=True)
    shutil.copy(os.path.join(HERE, "broker_client.py"), os.path.join(d, "broker_client.py"))
    path = os.path.join(d, "attacker.py")
    with open(path, "w") as f:
        f.write(ATTACKER_PY)
    for n in os.listdir(d):
        os.chmod(os.path.join(d, n), 0o644)
    return path


def in_background(fn, *args, **kw):
    """Run fn in a thread; returns a function that joins it and returns
    fn's result (or raises its exception)."""
    box = {}

    def body():
        try:
            box["value"] = fn(*args, **kw)
        except BaseException as e:  # re-raised in the caller
            box["error"] = e
    t = threading.Thread(target=body, daemon=True)
    t.start()

    def join(timeout=60):
        t.join(timeout)
        assert not t.is_alive(), "still running after %d s" % timeout
        if "error" in box:
            raise box["error"]
        return box["value"]
    return join


def supervisor_in(cgroup_path, timeout=20):
    """The supervisor that the broker started in this cgroup (its cmdline is
    the supervise mode's)."""
    def find():
        with open(os.path.join(cgroup_path, "cgroup.procs")) as f:
            pids = [int(p) for p in f.read().split()]
        for p in pids:
            with contextlib.suppress(OSError):
                with open("/proc/%d/cmdline" % p, "rb") as f:
                    if b"--supervise" in f.read().split(b"\0"):
                        return p
        return None
    return wait_for(find, "the supervisor in " + cgroup_path, timeout)


def holder(go):
    """A command that runs until the file `go` exists: what keeps a filter,
    and so its supervisor, alive while a test looks at it."""
    return ["/bin/sh", "-c", 'until [ -e "$0" ]; do sleep 0.02; done', go]


def proc_status(pid):
    with open("/proc/%d/status" % pid) as f:
        return {k: v.split() for k, v in (ln.split(":", 1) for ln in f)}


def other_build(world, builds, netns, servers, name="b", pins=hs.PINS):
    """A second build B approving another namespace, with a server that sends
    "OTHER-..." on the same port there."""
    n = netns(name)
    token = "OTHER-" + os.urandom(4).hex()
    servers(token, n.path, world.port)
    b = builds(n.path, name=name, pins=pins)
    return b, n, token


def compile_attacker_lib(henv, d):
    """A library that, wherever it is loaded, appends /proc/self/exe to a
    marker in the attacker's directory."""
    src = os.path.join(d, "evil.c")
    with open(src, "w") as f:
        f.write('#include <stdio.h>\n#include <unistd.h>\n'
                '__attribute__((constructor)) static void evil(void) {\n'
                ' char b[512] = ""; ssize_t n = readlink("/proc/self/exe", b, 511);\n'
                ' if (n > 0) b[n] = 0; FILE *f = fopen("%s/loaded-in", "a");\n'
                ' if (f) { fprintf(f, "%%s\\n", b); fclose(f); } }\n' % d)
    lib = os.path.join(d, "libevil.so")
    hs.sh(["gcc", "-shared", "-fPIC", "-o", lib, src])
    marker = os.path.join(d, "loaded-in")
    with open(marker, "w"):
        pass
    os.chmod(marker, 0o666)  # root's sh/nsenter/setpriv load it too
    return lib


def fake_program(d, name, marker):
    """An attacker's program named like a listed one: writes marker if run."""
    p = os.path.join(d, name)
    with open(p, "w") as f:
        f.write("#!/bin/sh\necho ran > %s\n" % marker)
    os.chmod(p, 0o755)
    os.chown(p, hs.NOBODY, hs.NOGROUP)
    return p


# ---------------------------------------------------------------------------
# 1. Forged environment variables

def forged_env(henv, world, b, attacker):
    lib = compile_attacker_lib(henv, attacker)
    return {
        "PATH": attacker + ":/usr/bin:/bin",
        "CGNETNS_PIN": b.pin_path, "CGNETNS_ID": b.id, "CGNETNS_TAG": b.tag(),
        "CGNETNS_CGROUP": b.cgroup_path, "CGNETNS_EXEC": attacker + "/probe",
        "CGNETNS_ALLOW": attacker + "/allow", "CGNETNS_PINS": attacker,
        "IFS": "/ \t", "LD_PRELOAD": lib, "LD_LIBRARY_PATH": attacker,
        "LD_AUDIT": lib, "LD_DEBUG": "all", "LD_DEBUG_OUTPUT": attacker + "/ld",
        "GLIBC_TUNABLES": "glibc.malloc.check=3:glibc.malloc.mmap_threshold=1",
        "MALLOC_CHECK_": "3", "MALLOC_PERTURB_": "165",
        "LANG": "xx_XX.UTF-8", "LC_ALL": "xx_XX", "LANGUAGE": "xx", "LOCPATH": attacker,
        "NLSPATH": attacker + "/%N", "GCONV_PATH": attacker, "TZ": attacker + "/tz",
        "TMPDIR": attacker, "HOSTALIASES": attacker + "/hosts", "RES_OPTIONS": "debug",
    }


@pytest.mark.parametrize("via", ["installed", "glibc", "broker"])
def test_t01_forged_environment_in_a_build(request, henv, world, via):
    """Inside build A, env naming build B's pin, tag and cgroup, a PATH with a
    fake "probe", loader and libc variables: the helper still joins A's
    namespace (never B's), runs the listed probe (never the PATH one), and the
    attacker's library is never loaded into the helper itself.  Broker path:
    the client sends the program's name and nothing else, the broker's side
    runs with an empty environment: the same outcome, minted."""
    v = Via(request, via, "ga")
    b, _, other = v.other_build("gb")
    attacker = henv.attacker_dir()
    fake_marker = os.path.join(attacker, "fake-ran")
    fake_program(attacker, henv.probe_name, fake_marker)
    report = henv.out_path()
    env = forged_env(henv, world, b, attacker)
    r = v.run([v.exe, henv.probe_name, "report", report, "--connect=%d" % world.port], env=env)
    assert r.returncode == 0, r.stderr
    got = hs.read_report(report)
    v.assert_joined(got, world.host_ns, world.parent_token)
    assert got["connect"]["token"] != other
    assert got["exe"] == henv.probe
    hs.assert_not_run(fake_marker)
    with open(os.path.join(attacker, "loaded-in")) as f:
        loaded = set(f.read().split())
    # Never into the set-user-ID helper.  The installed front (not set-user-ID,
    # no privilege) is an ordinary program of the caller's: it may load what
    # the caller's environment names, as the program itself may.
    setuid_helper = henv.helper if via == "installed" else v.exe
    assert setuid_helper not in loaded and os.path.realpath(setuid_helper) not in loaded
    assert henv.probe in loaded  # the program may load it: the boundary (README)


@pytest.mark.parametrize("via", ["installed", "broker"])
def test_t01_forged_environment_outside_a_build(request, henv, world, via):
    """Outside every build, env naming build A's pin and tag gains nothing
    (broker path: passed through, no filter)."""
    v = Via(request, via)
    attacker = henv.attacker_dir()
    report = henv.out_path()
    env = forged_env(henv, world, v.build, attacker)
    r = v.run([v.exe, henv.probe_name, "report", report, "--connect=%d" % world.port],
              cgroup=henv.untagged_cgroup(), env=env)
    assert r.returncode == 0, r.stderr
    v.assert_unchanged(hs.read_report(report))


# ---------------------------------------------------------------------------
# 2. Forged files

def _own_mount_namespace_script(henv, b, attacker, over):
    """sh -c SCRIPT sh CMD...: in the attacker's own user+mount namespace,
    mount a tmpfs over `over` (the private run directory, or just its pins
    directory), put a pin of its choosing for build b there (its own
    namespace), and mount its own allow list (the probe and the unlisted
    probe) over the private one; then exec CMD."""
    pins = os.path.join(over, "pins") if over != henv.private_pins else over
    return ["/bin/sh", "-c",
            'set -e; mount -t tmpfs none %(over)s; mkdir -p %(pins)s; '
            'touch %(pins)s/%(id)s; mount --bind %(ns)s %(pins)s/%(id)s; '
            'printf "%(probe)s\\n%(unlisted)s\\n" > %(a)s/allow; '
            'mount --bind %(a)s/allow %(allow)s; exec "$@"'
            % {"id": b.id, "ns": "/proc/self/ns/net", "probe": henv.probe,
               "unlisted": henv.unlisted_probe, "a": attacker, "over": over, "pins": pins,
               "allow": henv.private_allow}, "sh"]


@pytest.mark.parametrize("via", ["musl", "broker"])
def test_t02_own_mount_namespace_over_run_cgnetns(request, henv, world, via):
    """As nobody in its own user+mount namespace, with its own pins directory
    (a pin of its choosing: its own namespace) and its own allow list (also
    naming the unlisted probe) mounted over the real ones.

    musl (set-user-ID path): no privilege there; the whole private run
    directory is covered, broker socket included: one line says so, and
    the probe runs in the attacker's namespace.

    broker: only the pins directory is covered, the socket stays reachable.
    The broker reads the pins and the allow list in its own mount namespace:
    the probe is minted through the real pin (the forged one, the caller's
    own namespace, would have made it a pass), and the unlisted probe,
    listed only in the forged list, is refused naming the real one."""
    v = Via(request, via, "mnt")
    attacker = henv.attacker_dir()
    report = henv.out_path()
    over = os.path.dirname(henv.private_pins) if via == "musl" else henv.private_pins
    script = _own_mount_namespace_script(henv, v.build, attacker, over)
    r = v.run(script + v.probe_argv(report), pre=["unshare", "-Urm", "--"])
    assert r.returncode == 0, r.stderr
    if via == "musl":
        assert NOTICE in hs.one_line(r.stderr)
        hs.assert_not_joined(hs.read_report(report), world.private, world.private_token,
                             unprivileged=False)
        return
    assert r.stderr == b""
    v.assert_joined(hs.read_report(report), world.host_ns, world.parent_token,
                    unprivileged=False)
    report = henv.out_path()
    r = v.run(script + [v.exe, henv.unlisted_probe, "report", report],
              pre=["unshare", "-Urm", "--"])
    v.assert_refused(r, hs.EXIT_NOT_USABLE, "cgnetns-exec: %s: not in the allow list; root may "
                     "add its canonical path to %s" % (henv.unlisted_probe, v.allow), report)


def _pin_cases(world, netns):
    def symlink(b):
        b.unpin()
        os.symlink("/proc/self/ns/net", b.pin_path)

    def regular(b):
        b.unpin(remove=False)  # the empty file stays

    def uts(b):
        b.unpin(remove=False)
        b.pin("/proc/self/ns/uts")
        dev, ino, nsid = hs.ns_identity(b.pin_path)
        b.set_tag(hs.tag_value(b.id, dev, ino, nsid))

    def fifo(b):
        b.unpin()
        os.mkfifo(b.pin_path, 0o600)

    return {"symlink": (symlink, "Too many levels of symbolic links"),
            "regular-file": (regular, "not a namespace file"),
            "uts-namespace": (uts, "not a network namespace"),
            "fifo": (fifo, "not a namespace file")}


@pytest.mark.parametrize("case", ["symlink", "regular-file", "uts-namespace", "fifo"])
@pytest.mark.parametrize("via", ["installed", "broker"])
def test_t02_forged_pin(request, henv, world, netns, via, case):
    """The build's pin is not a network namespace file: refused, nothing run
    (broker path: by the broker, which checks the pin the same way)."""
    v = Via(request, via, "fp")
    make, reason = _pin_cases(world, netns)[case]
    make(v.build)
    report = henv.out_path()
    r = v.run(v.probe_argv(report))
    v.assert_refused(r, hs.EXIT_REFUSE, (reason,), report)


@pytest.mark.parametrize("case", ["mode-0777", "mode-0770", "owner-nobody", "symlink",
                                  "parent-writable"])
@pytest.mark.parametrize("via", ["musl", "broker"])
def test_t02_unsafe_pins_directory(request, henv, world, via, case):
    """The pins directory (private variant): not root's, writable by others,
    or reached through a symlink: refuse (broker path: the broker refuses)."""
    v = Via(request, via, "p")
    pins, parent = henv.private_pins, os.path.dirname(henv.private_pins)
    moved = pins + ".real"
    try:
        if case == "mode-0777":
            os.chmod(pins, 0o777)
        elif case == "mode-0770":
            os.chmod(pins, 0o770)
        elif case == "owner-nobody":
            os.chown(pins, hs.NOBODY, hs.NOGROUP)
        elif case == "symlink":
            os.rename(pins, moved)
            os.symlink(moved, pins)
        elif case == "parent-writable":
            os.chmod(parent, 0o777)
        report = henv.out_path()
        r = v.run(v.probe_argv(report))
        v.assert_refused(r, hs.EXIT_REFUSE, ("unsafe pins directory",), report)
    finally:
        if os.path.islink(pins):
            os.unlink(pins)
            os.rename(moved, pins)
        os.chmod(pins, 0o700)
        os.chown(pins, 0, 0)
        os.chmod(parent, 0o755)
    # and the same build works again once it is safe
    report = henv.out_path()
    r = v.run(v.probe_argv(report))
    assert r.returncode == 0, r.stderr
    v.assert_joined(hs.read_report(report), world.host_ns, world.parent_token)


# ---------------------------------------------------------------------------
# 3. Forged tags

def _build_for(henv, world, builds, helper, name):
    """(helper path, build approving the host namespace) for one helper: the
    installed one with the shared build A, or a private variant (built from
    this checkout's helper/, with its own pins directory) with a build of its
    own in that directory."""
    if helper == "installed":
        return henv.installed, world.a
    return henv.variants[helper], builds(name=name, pins=henv.private_pins)


@pytest.mark.parametrize("via", ["installed", "musl", "broker"])
def test_t03_user_xattr_on_own_cgroup_is_not_a_tag(request, henv, world, via):
    """nobody owns a delegated cgroup and writes a build's exact tag there as
    user.cgnetns (trusted.cgnetns is refused to it): not a tag, no join
    (broker path: passed through)."""
    v = Via(request, via, "ux")
    d = henv.untagged_cgroup(owner=hs.NOBODY)
    report = henv.out_path()
    script = ('setfattr -n trusted.cgnetns -v "$1" "$2" 2>/dev/null && echo TRUSTED-SET; '
              'setfattr -n user.cgnetns -v "$1" "$2" || exit 98; shift 2; exec "$@"')
    r = v.run(["/bin/sh", "-c", script, "sh", v.build.tag(), d, v.exe, henv.probe_name,
               "report", report, "--connect=%d" % world.port], cgroup=d)
    assert r.returncode == 0, r.stderr
    assert r.stderr == b""
    assert b"TRUSTED-SET" not in r.stdout
    assert os.getxattr(d, "user.cgnetns").decode() == v.build.tag()  # it was really there
    v.assert_unchanged(hs.read_report(report))


@pytest.mark.parametrize("via", ["installed", "musl", "broker"])
def test_t03_tag_on_cgroup_not_owned_by_root(request, henv, world, via):
    """A trusted tag (root's mistake) on a cgroup that nobody owns: refuse,
    also from a child cgroup the owner made and moved itself into."""
    v = Via(request, via, "own")
    a = v.build
    d = a.child("delegated", owner=hs.NOBODY)
    a.set_tag(a.tag(), path=d)
    want = "cgnetns-exec: tagged cgroup /cgnetns/%s/delegated is not owned by root" % a.id
    report = henv.out_path()
    r = v.run(v.probe_argv(report), cgroup=d)
    v.assert_refused(r, hs.EXIT_REFUSE, want, report)
    # the owner makes a child and moves itself there: the walk finds the tag
    script = 'mkdir "$0/x" && echo $$ > "$0/x/cgroup.procs" && exec "$@"'
    r = v.run(["/bin/sh", "-c", script, d] + v.probe_argv(report), cgroup=d)
    v.assert_refused(r, hs.EXIT_REFUSE, want, report)


# ---------------------------------------------------------------------------
# 4. Moving between cgroups

@pytest.mark.parametrize("via", ["installed", "broker"])
def test_t04_cannot_move_to_sibling_parent_or_root(request, henv, world, via):
    """A member of A cannot move to build B, to their parent or to the root:
    it is joined (minted) for A, never B, and stays in A's cgroup."""
    v = Via(request, via, "mv")
    b, _, other = v.other_build()
    targets = [b.cgroup_path, os.path.dirname(b.cgroup_path), henv.cgroot]
    script = ('for t in "$@"; do case $t in --) break;; esac; '
              'echo $$ > "$t/cgroup.procs" 2>/dev/null && echo "MOVED $t"; shift; done; '
              'shift; exec "$@"')
    report = henv.out_path()
    r = v.run(["/bin/sh", "-c", script, "sh"] + targets + ["--"] + v.probe_argv(report))
    assert r.returncode == 0, r.stderr
    assert b"MOVED" not in r.stdout
    got = hs.read_report(report)
    v.assert_joined(got, world.host_ns, world.parent_token)
    assert got["cgroup"] == "/cgnetns/" + v.build.id


@pytest.mark.parametrize("owner", [None, hs.NOBODY])
@pytest.mark.parametrize("via", ["installed", "broker"])
def test_t04_outsider_cannot_move_into_a_build(request, henv, world, via, owner):
    """From a root-owned or an own (delegated) cgroup, nobody cannot enter A
    (broker path: passed through).  The supervisor's own rule, that it
    serves only tasks of its build, is played by
    test_t16_a_connection_handed_to_a_process_outside_the_build."""
    v = Via(request, via, "out")
    u = henv.untagged_cgroup(owner=owner)
    script = 'echo $$ > "$0/cgroup.procs" 2>/dev/null && echo MOVED; exec "$@"'
    report = henv.out_path()
    r = v.run(["/bin/sh", "-c", script, v.build.cgroup_path] + v.probe_argv(report), cgroup=u)
    assert r.returncode == 0, r.stderr
    assert b"MOVED" not in r.stdout
    v.assert_unchanged(hs.read_report(report))


# ---------------------------------------------------------------------------
# 5. cgroup namespace, user namespace, cgroup v1

CGROUPNS_OWN = ("cgnetns-exec: process \\d+ is in a cgroup namespace of its own: its cgroup "
                "cannot be told; call the program from the build's own cgroup namespace")


@pytest.mark.parametrize("via", ["installed", "musl", "broker"])
def test_t05_own_cgroup_namespace(request, henv, world, via):
    """A caller in a cgroup namespace rooted at A (root made it, then became
    nobody): one rule on both paths, refused (125), nothing run.

    Set-user-ID path: the helper is its own subject, in that namespace too;
    it reads "0::/", which means something else on the cgroup2 mount, and
    the membership check, made at once outside the initial cgroup
    namespace, refuses.  Broker path: step 0 of resolve.c -- the peer's
    cgroup namespace is not the broker's -- refuses before anything is read."""
    v = Via(request, via, "cgns")
    report = henv.out_path()
    r = v.run(v.probe_argv(report), unshare=["-C"])
    if v.broker:
        want = re.compile(CGROUPNS_OWN)
    else:
        want = re.compile(r"cgnetns-exec: process \d+ is not in cgroup / of the cgroup2 mount "
                          r"\(cgroup namespace or mount mismatch\)")
    v.assert_refused(r, hs.EXIT_REFUSE, want, report)


@pytest.mark.parametrize("via", ["installed", "broker"])
def test_t05_cgroup_namespace_path_confusion(request, henv, world, via):
    """In A/<x> with a cgroup namespace rooted at A, /proc/self/cgroup says
    "/<x>"; a top-level cgroup /<x> carries build B's valid tag.  Following
    the path would join B's namespace: the membership check refuses
    (set-user-ID path); the broker refuses the peer's cgroup namespace."""
    v = Via(request, via, "conf")
    b, _, other = v.other_build()
    name = "confuse-" + os.urandom(4).hex()
    top = os.path.join(henv.cgroot, name)
    os.mkdir(top)
    henv.untagged_cgroups.append(top)
    os.setxattr(top, hs.TAG, b.tag().encode())
    inner = v.build.child(name)
    report = henv.out_path()
    script = ('echo $$ > "$0/cgroup.procs" || exit 97; '
              'grep -qx "0::/%s" /proc/self/cgroup || exit 96; exec "$@"' % name)
    r = v.run(["/bin/sh", "-c", script, inner] + v.setpriv_nobody() + v.probe_argv(report),
              unshare=["-C"], user=None)
    if v.broker:
        want = re.compile(CGROUPNS_OWN)
    else:
        want = ("is not in cgroup /%s" % name,)
    v.assert_refused(r, hs.EXIT_REFUSE, want, report)


@pytest.mark.parametrize("via", ["installed", "musl", "broker"])
def test_t05_cgroup2_mount_of_another_subtree(request, henv, world, via):
    """In the initial cgroup namespace, but in a mount namespace (root's, as a
    container runtime makes it) whose cgroup2 mount shows another subtree T:
    /proc/self/cgroup says /cgnetns/<A>, which there is T/cgnetns/<A>, tagged
    for build B.  Following the path would join B's namespace: the
    membership check on the tagged walk refuses (cgroup namespace checks do
    not apply: there is none).  Broker path: the broker reads cgroup2 in its
    own mount namespace, so the caller's mounts change nothing: minted for
    A, never B."""
    v = Via(request, via, "mm")
    a = v.build
    b, _, other = v.other_build("mmb")
    t = henv.untagged_cgroup()
    decoy = os.path.join(t, "cgnetns", a.id)
    os.makedirs(decoy)
    os.setxattr(decoy, hs.TAG, b.tag().encode())
    report = henv.out_path()
    script = ('c=$1; shift; mount --make-rprivate / && mount --bind "$0" "$c" || exit 97; '
              'grep -qx "0::/cgnetns/%s" /proc/self/cgroup || exit 96; '
              'test -n "$(getfattr --absolute-names --only-values -n %s "$c/cgnetns/%s")" '
              '|| exit 95; exec "$@"' % (a.id, hs.TAG, a.id))
    r = v.run(["/bin/sh", "-c", script, t, henv.cgroot] + v.setpriv_nobody() + v.probe_argv(report),
              unshare=["-m"], user=None)
    if v.broker:
        assert r.returncode == 0, r.stderr
        got = hs.read_report(report)
        v.assert_joined(got, world.host_ns, world.parent_token)
        assert got["connect"]["token"] != other
        return
    v.assert_refused(r, hs.EXIT_REFUSE, re.compile(
        r"cgnetns-exec: process \d+ is not in cgroup /cgnetns/%s of the cgroup2 "
        r"mount \(cgroup namespace or mount mismatch\)" % re.escape(a.id)), report)


@pytest.mark.parametrize("via", ["musl", "broker"])
def test_t05_user_namespace(request, henv, world, via):
    """In its own user namespace the set-user-ID bit gives nothing.  musl, no
    broker on its socket: no join, one line saying so.  broker: served as
    the ids the kernel recorded in the initial namespace (nobody), minted."""
    if via == "musl":
        request.getfixturevalue("no_pbroker")
    v = Via(request, via, "userns")
    report = henv.out_path()
    r = v.run(v.probe_argv(report), pre=["unshare", "-Ur", "--"])
    assert r.returncode == 0, r.stderr
    got = hs.read_report(report)
    if v.broker:
        assert r.stderr == b""
        v.assert_joined(got, world.host_ns, world.parent_token, unprivileged=False)
        return
    assert NOTICE in hs.one_line(r.stderr)
    hs.assert_not_joined(got, world.private, world.private_token, unprivileged=False)


@pytest.mark.parametrize("via", ["installed", "broker"])
def test_t05_cgroup_v1_hierarchy_disagrees(request, henv, world, via):
    """A v1 hierarchy that places the caller at A's path is not believed:
    only the 0:: line counts (broker path: passed through)."""
    v1 = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] == "cgroup" and "pids" in fields[-1].split(","):
                v1 = fields[4]
    if v1 is None:
        pytest.skip("no cgroup v1 pids hierarchy on this host (not hybrid)")
    v = Via(request, via, "v1")
    d = os.path.join(v1, "cgnetns", v.build.id)
    made = []
    try:
        for p in (os.path.dirname(d), d):
            if not os.path.isdir(p):
                os.mkdir(p)
                made.append(p)
        u = henv.untagged_cgroup()
        report = henv.out_path()
        script = 'echo $$ > "$0/cgroup.procs" || exit 97; exec "$@"'
        r = v.run(["/bin/sh", "-c", script, d] + v.setpriv_nobody() + v.probe_argv(report),
                  cgroup=u, user=None)
        assert r.returncode == 0, r.stderr
        v.assert_unchanged(hs.read_report(report))
    finally:
        for p in reversed(made):
            with open(os.path.join(p, "cgroup.procs")) as f:
                for pid in f.read().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            for _ in range(200):
                try:
                    os.rmdir(p)
                    break
                except OSError:
                    time.sleep(0.02)


# ---------------------------------------------------------------------------
# 6. Two builds whose parents sit in different namespaces

@pytest.mark.parametrize("via", ["installed", "broker"])
def test_t06_two_builds_each_get_their_own_parent(request, henv, world, builds, netns, servers,
                                                  via):
    """Two builds approving two namespaces, four calls of each at once: each
    call joins (is minted for) its own build's namespace."""
    v = Via(request, via, "six")
    n1, n2 = netns("p1"), netns("p2")
    t1, t2 = "ONE-" + os.urandom(4).hex(), "TWO-" + os.urandom(4).hex()
    servers(t1, n1.path, world.port)
    servers(t2, n2.path, world.port)
    b1, b2 = builds(n1.path, name="one", pins=v.pins), builds(n2.path, name="two", pins=v.pins)
    results = {}

    def call(build, key):
        report = henv.out_path(key)
        r = v.run(v.probe_argv(report), build=build)
        results[key] = (r, hs.read_report(report))

    threads = [threading.Thread(target=call, args=(b, "%s-%d" % (name, i)))
               for i in range(4) for b, name in ((b1, "one"), (b2, "two"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 8
    for key, (r, got) in results.items():
        assert r.returncode == 0, r.stderr
        if key.startswith("one"):
            v.assert_joined(got, n1.identity, t1)
        else:
            v.assert_joined(got, n2.identity, t2)


# ---------------------------------------------------------------------------
# 7. The approved namespace died, the pin is gone, the tag outlived its run

@pytest.mark.parametrize("via", ["installed", "broker"])
def test_t07_pin_removed(request, henv, world, via):
    v = Via(request, via, "gone")
    v.build.unpin()
    report = henv.out_path()
    r = v.run(v.probe_argv(report))
    v.assert_refused(r, hs.EXIT_REFUSE, "cgnetns-exec: pin %s is gone (its build has ended?)"
                     % v.build.id, report)


@pytest.mark.parametrize("via", ["installed", "broker"])
def test_t07_pin_replaced_by_another_namespace(request, henv, world, netns, servers, via):
    v = Via(request, via, "repl")
    n = netns("other")
    servers("OTHER", n.path, world.port)
    v.build.unpin(remove=False)
    v.build.pin(n.path)
    report = henv.out_path()
    r = v.run(v.probe_argv(report))
    v.assert_refused(r, hs.EXIT_REFUSE, "cgnetns-exec: pin %s holds another namespace than its "
                     "tag names" % v.build.id, report)


def _nsid_differs(build):
    return ("cgnetns-exec: pin %s: namespace id differs from its tag (namespace replaced)"
            % build.id)


@pytest.mark.parametrize("via", ["installed", "musl", "broker"])
def test_t07_namespace_id_differs(request, henv, world, via):
    """Same st_dev/st_ino, another kernel namespace id: what inode reuse looks
    like.  Refused."""
    v = Via(request, via, "nsid")
    a = v.build
    dev, ino, nsid = a.identity
    a.set_tag(hs.tag_value(a.id, dev, ino, nsid + 1))
    report = henv.out_path()
    r = v.run(v.probe_argv(report))
    v.assert_refused(r, hs.EXIT_REFUSE, _nsid_differs(a), report)


def test_t07_real_inode_reuse(request, henv, world, netns, servers):
    """The approved namespace dies and a new one gets its inode number, and
    is pinned under the build's ID: the tag's namespace id tells them apart.
    Both paths in one test (the reuse is found once): three builds approve
    the same namespace -- one in the system's pins directory (the installed
    helper), two in the private one (the musl variant's set-user-ID path, the
    broker path) -- and all three are refused once it is replaced."""
    # nsfs inode numbers come from an IDA (proc_inum_ida), lowest free first,
    # shared with /proc entries, and namespaces are freed asynchronously
    # (cleanup_net).  So: fill the holes that earlier tests left below the
    # frontier (kept until the test ends), make the old namespace there, free
    # it, then make namespaces until one gets its number -- keeping any that
    # land below it (a hole we missed), closing those above it (the old
    # number is not free yet; theirs are freed above it).
    fillers = [netns("fill") for _ in range(40)]
    old = netns("old")
    vias = [Via(request, via, "reuse", approved=old.path)
            for via in ("installed", "musl", "broker")]
    identity = vias[0].build.identity
    tags = [v.build.tag() for v in vias]
    for v in vias:
        v.build.unpin()
    old.close()  # the namespace is freed: its inode number is free again
    reused = None
    tries = 0
    deadline = time.monotonic() + 60
    while reused is None and time.monotonic() < deadline:
        n = netns("new")
        tries += 1
        if n.identity[1] == identity[1]:
            reused = n
        elif n.identity[1] > identity[1]:
            n.close()
        else:
            fillers.append(n)
    assert reused is not None, "no inode reuse observed within 60 s (%d tries)" % tries
    assert reused.identity[2] != identity[2]
    servers("REUSED", reused.path, world.port)
    for v, tag in zip(vias, tags):
        v.build.pin(reused.path)
        assert v.build.tag() == tag
        report = henv.out_path()
        r = v.run(v.probe_argv(report))
        v.assert_refused(r, hs.EXIT_REFUSE, _nsid_differs(v.build), report)


BAD_TAGS = {
    "v2": ("v2 pin={id} dev={dev} ino={ino} nsid={nsid}", "unsupported"),
    "v10": ("v10 pin={id}", "unsupported"),
    "newline": ("v1 pin={id} dev={dev} ino={ino} nsid={nsid}\n", "malformed"),
    "leading-zero": ("v1 pin={id} dev=0{dev} ino={ino} nsid={nsid}", "malformed"),
    "overflow": ("v1 pin={id} dev={dev} ino=18446744073709551616 nsid={nsid}", "malformed"),
    "order": ("v1 pin={id} ino={ino} dev={dev} nsid={nsid}", "malformed"),
    "two-spaces": ("v1  pin={id} dev={dev} ino={ino} nsid={nsid}", "malformed"),
    "dotdot-id": ("v1 pin=../pins/{id} dev={dev} ino={ino} nsid={nsid}", "malformed"),
    "json-id": ("v1 pin={id}.json dev={dev} ino={ino} nsid={nsid}", "malformed"),
    "empty": ("", "malformed"),
    "long": ("v1 pin={id} dev={dev} ino={ino} nsid={nsid}" + " " * 200, "longer than"),
    "negative": ("v1 pin={id} dev=-{dev} ino={ino} nsid={nsid}", "malformed"),
}


@pytest.mark.parametrize("case", sorted(BAD_TAGS))
@pytest.mark.parametrize("via", ["installed", "broker"])
def test_t07_bad_tag_is_refused_not_passed(request, henv, world, via, case):
    """A tag that does not parse refuses (a pass-through would take the
    build's network away silently, or worse)."""
    v = Via(request, via, "tag")
    fmt, reason = BAD_TAGS[case]
    dev, ino, nsid = v.build.identity
    v.build.set_tag(fmt.format(id=v.build.id, dev=dev, ino=ino, nsid=nsid))
    report = henv.out_path()
    r = v.run(v.probe_argv(report))
    v.assert_refused(r, hs.EXIT_REFUSE, (reason,), report)


# ---------------------------------------------------------------------------
# 8. argc == 0, empty argv[0], huge argv and environment, closed fds 0-2

@pytest.mark.parametrize("opt", ["--empty-argv", "--argv0="])
@pytest.mark.parametrize("via", ["installed", "broker"])
def test_t08_no_or_empty_argv0(request, henv, world, via, opt):
    """No name to run by: refused before anything else (broker path: by the
    client, before it asks)."""
    v = Via(request, via, "argv0")
    launched, report = henv.out_path("launch"), henv.out_path()
    r = v.run([henv.probe, "launch", launched, opt, "--"] + v.probe_argv(report))
    v.assert_refused(r, hs.EXIT_REFUSE, "cgnetns-exec: refusing to run with an empty argv[0]",
                     report, by_broker=False)
    assert os.path.exists(launched)  # the attacker ran ...
    hs.assert_not_run(report)        # ... the probe did not


@pytest.mark.parametrize("via", ["installed", "broker"])
def test_t08_huge_argv_and_environment(request, henv, world, via):
    """20,000 arguments, one of 128 KiB, 600 KB of environment: arrive byte
    for byte (broker path: the client sends only the name, and execs the
    program with its own argv and environment)."""
    v = Via(request, via, "huge")
    launched, report = henv.out_path("launch"), henv.out_path()
    args = ["a%d" % i for i in range(20000)] + ["x" * 131071]
    env = {"PATH": "/usr/bin:/bin"}
    env.update({"BIG%d" % i: "y" * 4000 for i in range(150)})
    r = v.run([henv.probe, "launch", launched, "--"] + v.probe_argv(report) + args, env=env)
    assert r.returncode == 0, r.stderr[:500]
    assert r.stderr == b""
    got, want = hs.read_report(report), hs.read_report(launched)
    v.assert_joined(got, world.host_ns, world.parent_token)
    assert got["argv_b"] == want["argv_b"] and len(got["argv_b"]) > 20000
    assert got["env_b"] == want["env_b"] and len(got["env_b"]) > 150


@pytest.mark.parametrize("via", ["installed", "broker"])
def test_t08_closed_standard_fds(request, henv, world, via):
    """fds 0-2 closed: the helper's own files never land there (libc opens
    /dev/null in secure mode, and the helper checks); nothing is written.
    Broker path (no secure mode there): the client's connection and listener
    take the lowest numbers and are closed before the exec, so the program
    gets exactly the caller's descriptors (none); a refusal's line goes to
    a closed fd 2, nowhere else."""
    v = Via(request, via, "fds")
    with open(v.allow, "rb") as f:
        allow_before = f.read()
    launched, report = henv.out_path("launch"), henv.out_path()
    close = ["--close=0", "--close=1", "--close=2"]
    r = v.run([henv.probe, "launch", launched] + close + ["--"] + v.probe_argv(report))
    assert r.returncode == 0
    got = hs.read_report(report)
    v.assert_joined(got, world.host_ns, world.parent_token)
    want = {} if v.broker else {"0": "/dev/null", "1": "/dev/null", "2": "/dev/null"}
    assert {fd: x["target"] for fd, x in got["fds"].items()} == want
    # a refusal with fds 0-2 closed: nothing run, nothing written anywhere
    r = v.run([henv.probe, "launch", launched] + close + ["--", v.exe, henv.unlisted_probe,
              "report", report + "2"])
    assert r.returncode == hs.EXIT_NOT_USABLE
    assert r.stderr == b""
    hs.assert_not_run(report + "2")
    v.said(": refuse 126: %s: not in the allow list" % re.escape(henv.unlisted_probe))
    with open(v.allow, "rb") as f:
        assert f.read() == allow_before
    with open(os.path.join(v.build.cgroup_path, "cgroup.procs")) as f:
        assert f.read() == ""


def test_t08_broker_client_with_only_stderr_closed(request, henv, world):
    """Broker path, only fd 2 closed: the client's connection to the broker
    takes fd 2 (no secure mode here, so nothing fills it first).  A refusal
    must still exit 126 without writing its line anywhere.  Made
    deterministic with a tracer that delays each write(2) by 0.3 s, so that
    supervise has answered and gone before the client writes its line: the
    line then goes into the closed connection, and the client dies of
    SIGPIPE instead of exiting 126 (without the tracer: about one call in
    three here)."""
    v = Via(request, "broker", "fd2")
    launched, report = henv.out_path("launch"), henv.out_path()
    r = v.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=write", "-e",
               "inject=write:delay_enter=300ms", "--", henv.probe, "launch", launched,
               "--close=2", "--", v.exe, henv.unlisted_probe, "report", report])
    v.said(": refuse 126: %s: not in the allow list" % re.escape(henv.unlisted_probe))
    hs.assert_not_run(report)
    assert r.returncode == hs.EXIT_NOT_USABLE, "died of signal %d" % -r.returncode


# ---------------------------------------------------------------------------
# 9. Programs that are not allow-listed

def _not_listed_cases(henv, attacker, exe=None):
    """case -> (argv, the program the helper refuses, as its message names it).
    Whatever would run instead writes a marker: the unlisted probe its report,
    the attacker's programs (also found first in PATH as "python3" and
    "unlisted-name") attacker/evil-ran, python3 itself the report.  exe: the
    helper called (default: the installed front)."""
    exe = exe or henv.installed
    link = os.path.join(attacker, "probe")
    os.symlink(henv.unlisted_probe, link)
    marker = os.path.join(attacker, "evil-ran")
    evil = fake_program(attacker, "evil", marker)
    masq_evil = os.path.join(attacker, "unlisted-name")
    os.symlink(exe, masq_evil)
    path_dir = os.path.join(attacker, "path")
    os.mkdir(path_dir)
    os.chown(path_dir, hs.NOBODY, hs.NOGROUP)
    for name in ("python3", "unlisted-name", "evil"):
        fake_program(path_dir, name, marker)
    dotdot = os.path.join(henv.bin, "..", "unlisted", "probe")
    listed_link = os.path.join(henv.bin, "probe-link")
    with contextlib.suppress(FileExistsError):
        os.symlink(henv.probe, listed_link)
    # python3 -c CODE report OUT ...: sys.argv[2] is OUT, the marker
    py = ["python3", "-c", "import sys; open(sys.argv[2], 'w').write('ran')"]
    return {
        "absolute": ([exe, henv.unlisted_probe], henv.unlisted_probe),
        "bare-name-via-PATH": ([exe, "evil"], "evil"),
        "dotdot": ([exe, dotdot], dotdot),
        "relative": ([exe, "bin/probe"], "bin/probe"),
        "dot-relative": ([exe, "./probe"], "./probe"),
        "attacker-symlink": ([exe, link], link),
        "attacker-program": ([exe, evil], evil),
        "double-slash": ([exe, henv.bin + "//probe"], henv.bin + "//probe"),
        "masquerade-unlisted-name": ([masq_evil], "unlisted-name"),
        "python": ([exe] + py, "python3"),
    }, path_dir


@pytest.mark.parametrize("case", ["absolute", "bare-name-via-PATH", "dotdot", "relative",
                                  "dot-relative", "attacker-symlink", "attacker-program",
                                  "double-slash", "masquerade-unlisted-name", "python"])
@pytest.mark.parametrize("via", ["installed", "broker"])
def test_t09_not_allow_listed(request, henv, world, via, case):
    """Refused with 126 and exactly the message for that program; nothing ran
    (neither the named program, nor anything of the attacker's that PATH
    would have found first).  Broker path: the client sends the name as
    given, the broker refuses it with the same words."""
    v = Via(request, via, "nl")
    attacker = henv.attacker_dir()
    cases, path_dir = _not_listed_cases(henv, attacker, v.exe)
    argv, program = cases[case]
    report = henv.out_path()
    env = {"PATH": path_dir + ":" + attacker + ":" + henv.unlisted + ":/usr/bin:/bin"}
    r = v.run(argv + ["report", report, "--connect=%d" % world.port], env=env,
              cwd=henv.tdir if "relative" in case
              else (henv.bin if case == "dot-relative" else None))
    if "relative" in case:
        want = "%s: name a program by absolute path or bare name" % program
    else:
        want = ("%s: not in the allow list; root may add its canonical path to %s"
                % (program, v.allow))
    v.assert_refused(r, hs.EXIT_NOT_USABLE, "cgnetns-exec: " + want, report)
    hs.assert_not_run(os.path.join(attacker, "evil-ran"))


def test_t09_markers_are_written_when_the_program_runs(henv, world):
    """Control for the test above: the programs it offers do write their
    markers when they run (python3's code, the attacker's PATH programs)."""
    attacker = henv.attacker_dir()
    cases, path_dir = _not_listed_cases(henv, attacker)
    report = henv.out_path()
    argv = cases["python"][0][1:] + ["report", report]
    r = henv.run(argv, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert os.path.exists(report)
    for name in ("python3", "unlisted-name", "evil"):
        r = henv.run([name], env={"PATH": path_dir + ":/usr/bin:/bin"})
        assert r.returncode == 0, r.stderr
        os.unlink(os.path.join(attacker, "evil-ran"))


@pytest.mark.parametrize("via", ["musl", "broker"])
def test_t09_listed_entry_that_is_a_symlink(request, henv, world, via):
    """An allow-list entry through a symlink is not canonical: refused."""
    v = Via(request, via, "l")
    link = os.path.join(henv.bin, "probe-link")
    with contextlib.suppress(FileExistsError):
        os.symlink(henv.probe, link)
    henv.write_private_allow(henv.private_allow_text + link + "\n")
    try:
        report = henv.out_path()
        r = v.run([v.exe, link, "report", report])
        v.assert_refused(r, hs.EXIT_NOT_USABLE, ("symbolic link",), report)
    finally:
        henv.write_private_allow(henv.private_allow_text)


@pytest.mark.parametrize("via", ["installed", "broker"])
def test_t09_masquerade_named_after_a_listed_program_runs_only_that(request, henv, world, via):
    """The attacker names a symlink "probe" and puts its own "probe" first in
    PATH: the listed probe runs, the attacker's never (broker path: the
    client executes the canonical path the broker answered)."""
    v = Via(request, via, "masq")
    attacker = henv.attacker_dir()
    fake = fake_program(attacker, "probe-fake", os.path.join(attacker, "fake-ran"))
    os.rename(fake, os.path.join(attacker, "probe-bin"))
    masq = os.path.join(attacker, "m")
    os.mkdir(masq)
    os.symlink(v.exe, os.path.join(masq, henv.probe_name))
    pathdir = os.path.join(attacker, "p")
    os.mkdir(pathdir)
    fake_program(pathdir, henv.probe_name, os.path.join(attacker, "fake-ran"))
    report = henv.out_path()
    r = v.run([os.path.join(masq, henv.probe_name), "report", report,
               "--connect=%d" % world.port], env={"PATH": pathdir + ":/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    got = hs.read_report(report)
    v.assert_joined(got, world.host_ns, world.parent_token)
    assert got["exe"] == henv.probe
    hs.assert_not_run(os.path.join(attacker, "fake-ran"))


# ---------------------------------------------------------------------------
# 10. Unsafe allow list or program (private variant: its own allow list)

@contextlib.contextmanager
def changed(henv, case):
    """Make one thing unsafe; yield (argv program, expected status, reason)."""
    etc = henv.etc
    allow = henv.private_allow
    prog_dir = os.path.join(henv.tdir, "prog-" + os.urandom(3).hex())
    os.mkdir(prog_dir)
    prog = os.path.join(prog_dir, "probe")
    shutil.copy(henv.probe, prog)
    henv.write_private_allow(henv.private_allow_text + prog + "\n")
    allow_cases = {
        "allow-0664": lambda: os.chmod(allow, 0o664),
        "allow-0646": lambda: os.chmod(allow, 0o646),
        "allow-owner-nobody": lambda: os.chown(allow, hs.NOBODY, hs.NOGROUP),
        "allow-dir-0775": lambda: os.chmod(etc, 0o775),
        "allow-dir-1777": lambda: os.chmod(etc, 0o1777),
        "allow-dir-owner-nobody": lambda: os.chown(etc, hs.NOBODY, hs.NOGROUP),
        "allow-grandparent-0777": lambda: os.chmod(os.path.dirname(etc), 0o777),
        "allow-symlink": lambda: (os.rename(allow, allow + ".real"),
                                  os.symlink(allow + ".real", allow)),
        "allow-missing": lambda: os.unlink(allow),
        "allow-directory": lambda: (os.unlink(allow), os.mkdir(allow)),
        "allow-bad-line": lambda: henv.write_private_allow(
            henv.private_allow_text + prog + "\n/usr/bin/../bin/x\n"),
        "allow-fifo": lambda: (os.unlink(allow), os.mkfifo(allow, 0o644)),
    }
    prog_cases = {
        "prog-0775": lambda: os.chmod(prog, 0o775),
        "prog-0757": lambda: os.chmod(prog, 0o757),
        "prog-owner-nobody": lambda: os.chown(prog, hs.NOBODY, hs.NOGROUP),
        "prog-dir-0775": lambda: os.chmod(prog_dir, 0o775),
        "prog-dir-1777": lambda: os.chmod(prog_dir, 0o1777),
        "prog-dir-owner-nobody": lambda: os.chown(prog_dir, hs.NOBODY, hs.NOGROUP),
        "prog-is-directory": lambda: (os.unlink(prog), os.mkdir(prog)),
    }
    try:
        if case in allow_cases:
            allow_cases[case]()
            yield prog, hs.EXIT_REFUSE, "allow list"
        else:
            prog_cases[case]()
            yield prog, hs.EXIT_NOT_USABLE, "not safe to run"
    finally:
        for p in (allow,):
            if os.path.islink(p) or os.path.isfile(p) and not os.path.isfile(allow + ".real"):
                pass
            if os.path.islink(p):
                os.unlink(p)
            elif os.path.isdir(p):
                os.rmdir(p)
            elif os.path.exists(p) and not os.path.isfile(p):
                os.unlink(p)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(allow + ".real")
        os.chmod(etc, 0o755)
        os.chown(etc, 0, 0)
        os.chmod(os.path.dirname(etc), 0o755)
        henv.write_private_allow(henv.private_allow_text)
        os.chown(allow, 0, 0)
        shutil.rmtree(prog_dir)


UNSAFE = ["allow-0664", "allow-0646", "allow-owner-nobody", "allow-dir-0775", "allow-dir-1777",
          "allow-dir-owner-nobody", "allow-grandparent-0777", "allow-symlink", "allow-missing",
          "allow-directory", "allow-bad-line", "allow-fifo", "prog-0775", "prog-0757",
          "prog-owner-nobody", "prog-dir-0775", "prog-dir-1777", "prog-dir-owner-nobody",
          "prog-is-directory"]


@pytest.mark.parametrize("case", UNSAFE)
@pytest.mark.parametrize("via", ["musl", "broker"])
def test_t10_unsafe_allow_list_or_program(request, henv, world, via, case):
    """An unsafe allow list refuses everything (125), an unsafe program is
    not run (126), inside a build and outside every build.  Broker path: the
    broker's side checks the list and the program exactly as the privileged
    helper does (and its log says it refused, not the client's own
    no-broker check)."""
    v = Via(request, via, "u")
    with changed(henv, case) as (prog, status, reason):
        report = henv.out_path()
        r = v.run([v.exe, prog, "report", report])
        v.assert_refused(r, status, (reason,), report)
    # outside any build too: an unsafe policy refuses everything
    with changed(henv, case) as (prog, status, reason):
        report = henv.out_path()
        r = v.run([v.exe, prog, "report", report], cgroup=henv.untagged_cgroup())
        v.assert_refused(r, status, (reason,), report)


@pytest.mark.parametrize("via", ["musl", "broker"])
def test_t10_allow_list_may_be_0600(request, henv, world, via):
    """Root's own list, readable by root alone: the privileged helper (and
    the broker's side, as root) reads it."""
    v = Via(request, via, "s")
    os.chmod(henv.private_allow, 0o600)
    try:
        report = henv.out_path()
        r = v.run(v.probe_argv(report))
        assert r.returncode == 0, r.stderr
        v.assert_joined(hs.read_report(report), world.host_ns, world.parent_token)
    finally:
        os.chmod(henv.private_allow, 0o644)


# ---------------------------------------------------------------------------
# 11. Inherited fds of privileged files

@pytest.mark.parametrize("via", ["installed", "broker"])
def test_t11_inherited_privileged_fds(request, henv, world, via):
    """Root hands the attacker write fds of build B's and the root cgroup's
    cgroup.procs (as its stderr and as another fd): the helper writes nothing
    into them but its line (which cgroup.procs rejects), so neither it nor
    the program ends up in B or the root cgroup.  Broker path: the client
    holds no privilege, so these are only the caller's own descriptors,
    passed on to the program as they are; the broker receives none of them
    (test_t11_descriptors_sent_with_a_request_are_never_received)."""
    v = Via(request, via, "fd11")
    b, _, other = v.other_build()
    b_procs = os.open(os.path.join(b.cgroup_path, "cgroup.procs"), os.O_WRONLY)
    root_procs = os.open(os.path.join(henv.cgroot, "cgroup.procs"), os.O_WRONLY)
    try:
        refused, report = henv.out_path("refused"), henv.out_path()
        # a refusal: its message goes to fd 2
        r = v.run([v.exe, henv.unlisted_probe, "report", refused], stderr=b_procs,
                  pass_fds=(root_procs,))
        assert r.returncode == hs.EXIT_NOT_USABLE
        hs.assert_not_run(refused)
        v.said(": refuse 126: %s: not in the allow list" % re.escape(henv.unlisted_probe))
        # a join
        r = v.run(v.probe_argv(report), stderr=b_procs, pass_fds=(root_procs,))
        assert r.returncode == 0
        got = hs.read_report(report)
        v.assert_joined(got, world.host_ns, world.parent_token)
        assert got["cgroup"] == "/cgnetns/" + v.build.id
        fd = str(root_procs)
        assert got["fds"][fd]["target"] == os.path.join(henv.cgroot, "cgroup.procs")
        assert got["fds"]["2"]["target"] == os.path.join(b.cgroup_path, "cgroup.procs")
        with open(os.path.join(b.cgroup_path, "cgroup.procs")) as f:
            assert f.read() == ""
    finally:
        os.close(b_procs)
        os.close(root_procs)


def test_t11_descriptors_sent_with_a_request_are_never_received(request, henv, world,
                                                                 attacker_py):
    """Broker path only (the set-user-ID helper reads no request: what it
    inherits is the test above).  A member of build A, handed write fds of
    build B's and the root cgroup's cgroup.procs, attaches them to its
    request (SCM_RIGHTS with the header).  The broker's side reads with
    recv(): the kernel discards them.  The answer is A's own join; the
    supervisor -- which lives on, in the build, with the caller's ids --
    holds no cgroup.procs descriptor (looked at while the caller's program
    holds the filter), and B's cgroup.procs stays empty."""
    v = Via(request, "broker", "fd11r")
    b, _, other = v.other_build()
    b_procs = os.open(os.path.join(b.cgroup_path, "cgroup.procs"), os.O_WRONLY)
    root_procs = os.open(os.path.join(henv.cgroot, "cgroup.procs"), os.O_WRONLY)
    go, answer = henv.out_path("go"), henv.out_path("answer")
    try:
        done = in_background(
            v.run, [USER_PY, attacker_py, "client", henv.private_broker, answer, henv.probe,
                    "--attach=%d" % b_procs, "--attach=%d" % root_procs, "--"] + holder(go),
            pass_fds=(b_procs, root_procs))
        sup = supervisor_in(v.build.cgroup_path)
        # once the client has its "ok" the supervisor is what it stays
        wait_for(lambda: os.path.exists(answer), "the answers")
        targets = {}
        for fd in os.listdir("/proc/%d/fd" % sup):
            with contextlib.suppress(OSError):
                targets[fd] = os.readlink("/proc/%d/fd/%s" % (sup, fd))
        with open(go, "w"):
            pass
        r = done()
    finally:
        os.close(b_procs)
        os.close(root_procs)
    assert r.returncode == 0, r.stderr
    with open(answer, "rb") as f:
        assert f.read() == b"join %s\nok\n" % henv.probe.encode()
    assert targets and not [t for t in targets.values() if "cgroup.procs" in t], targets
    with open(os.path.join(b.cgroup_path, "cgroup.procs")) as f:
        assert f.read() == ""


# ---------------------------------------------------------------------------
# 12. Signals, SIGSTOP, ptrace, /proc/PID/mem, core dumps in the privileged window

def _sysctl_path(name):
    return "/proc/sys/" + name.replace(".", "/")


@contextlib.contextmanager
def sysctls(*settings):
    """Set (name, value) pairs in this order; the old values come back in the
    reverse order when the block ends, also when it fails."""
    done = []
    try:
        for name, value in settings:
            with open(_sysctl_path(name)) as f:
                old = f.read().rstrip("\n")
            with open(_sysctl_path(name), "w") as f:
                f.write(str(value))
            done.append((name, old))
        yield
    finally:
        errors = []
        for name, old in reversed(done):
            try:
                with open(_sysctl_path(name), "w") as f:
                    f.write(old)
            except OSError as e:
                errors.append(e)
        if errors:
            raise errors[0]


@contextlib.contextmanager
def core_dumps(henv, suid_dumpable):
    """Where the kernel dumps cores of set-user-ID processes too:
    fs.suid_dumpable=N (1: as the process is, 2: root's alone) and an absolute
    kernel.core_pattern into a directory of the test (with 2 a relative
    pattern makes the kernel refuse such dumps itself).  Yields the
    directory; the sysctls come back and the directory goes, also on failure."""
    d = os.path.join(henv.tdir, "cores-" + os.urandom(4).hex())
    os.mkdir(d)
    os.chmod(d, 0o1777)
    try:
        # the pattern first: suid_dumpable=2 with a relative one is refused
        with sysctls(("kernel.core_pattern", d + "/core.%e.%p"),
                     ("fs.suid_dumpable", suid_dumpable)):
            yield d
    finally:
        shutil.rmtree(d)


def _cores_in(d):
    return sorted(n for n in os.listdir(d) if n.startswith("core"))


@pytest.mark.parametrize("mode", ["cont", "kill", "abort"])
def test_t12_attacks_during_privileged_window(henv, world, mode):
    """Set-user-ID path only (the broker path's client never holds
    privilege: its counterparts are test_t12_broker_*).

    The attacker stops the helper while its effective uid is 0 (checked in
    /proc/PID/status), then tries ptrace attach/seize, /proc/PID/mem,
    environ, fd, cwd and process_vm_readv: all refused.  Then it lets it go
    on (it joins A, correctly), kills it (nothing runs) or sends SIGABRT.

    Run with fs.suid_dumpable=2 and an absolute core_pattern, where the
    kernel dumps set-user-ID processes.  What refuses the attacks then is
    the kernel's credential rule, whatever the helper's dumpable flag says:
    __ptrace_may_access() wants the caller's uid equal to the target's real,
    effective and saved uid (0 here) before it looks at dumpable at all.
    The race stops the helper as soon as the exec made it root, before its
    first instruction and so before its own PR_SET_DUMPABLE: the SIGABRT may
    leave a core, and it must be root's alone (SUID_DUMP_ROOT: uid 0, mode
    0600, in root's directory), never in the attacker's.  The helper's own
    prctl is tested by test_t12_no_core_dump_once_privileged below."""
    attacker = henv.attacker_dir()
    result, report = henv.out_path("race"), henv.out_path()
    with core_dumps(henv, 2) as cores:
        r = world.a.run([henv.probe, "launch", henv.out_path("launch"), "--core=unlimited", "--",
                         henv.probe, "race", result, mode, "--"] + world.probe_argv(report),
                        netns=world.private.path, cwd=attacker, timeout=120)
        dumped = {n: os.stat(os.path.join(cores, n)) for n in _cores_in(cores)}
    assert r.returncode == 0, r.stderr
    with open(result) as f:
        race = json.load(f)
    assert race["caught"] == 1, race
    for attack in ("attach", "seize", "mem", "environ", "fd", "cwd", "vm_readv"):
        assert race[attack] not in (0, -1), (attack, race)
    assert not _cores_in(attacker)
    if mode == "cont":
        assert race["exited"] == 1 and race["status"] == 0
        hs.assert_joined(hs.read_report(report), world.host_ns, world.parent_token)
    else:
        assert race["signaled"] == 1
        assert race["signal"] == (signal.SIGKILL if mode == "kill" else signal.SIGABRT)
        hs.assert_not_run(report)
        assert race["core"] == (1 if dumped else 0), (race, dumped)
        for name, st in dumped.items():
            assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600, \
                (name, st.st_uid, oct(st.st_mode))
    if mode != "abort":
        assert not dumped


BLOCKER_C = r"""
/* A set-user-ID root program WITHOUT the helper's PR_SET_DUMPABLE that blocks
 * in write(2) on fd 2, as the helper does on a full stderr pipe. */
#include <string.h>
#include <unistd.h>
int main(void)
{
    static char msg[256];
    memset(msg, 'x', sizeof msg - 1);
    msg[sizeof msg - 1] = '\n';
    return write(2, msg, sizeof msg) < 0;
}
"""


@pytest.fixture(scope="module")
def setuid_blocker(henv):
    d = os.path.join(henv.tdir, "blocker-" + os.urandom(3).hex())
    os.mkdir(d, 0o755)
    try:
        src, exe = os.path.join(d, "blocker.c"), os.path.join(d, "blocker")
        with open(src, "w") as f:
            f.write(BLOCKER_C)
        hs.sh(["gcc", "-O1", "-Wall", "-Werror", "-o", exe, src])
        os.chown(exe, 0, 0)
        os.chmod(exe, 0o4755)
        yield exe
    finally:
        shutil.rmtree(d)


def _full_pipe():
    """A pipe whose buffer is full: a write to its write end blocks."""
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETFL, os.O_NONBLOCK)
    for size in (65536, 4096, 1):
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(w, b"f" * size)
    fcntl.fcntl(w, fcntl.F_SETFL, 0)
    return r, w


def _abort_while_blocked(henv, argv, exe, cwd, cgroup=None, netns=None):
    """Run argv as nobody (RLIMIT_CORE unlimited) with a full pipe as its
    stderr; once `exe` (the resolved binary) is blocked in write(2, ...),
    the attacker (nobody) sends it SIGABRT.  Returns (wait status, the
    effective uid it had while blocked)."""
    cmd = ["prlimit", "--core=unlimited", "--", "setpriv", "--reuid=65534", "--regid=65534",
           "--clear-groups", "--"] + list(argv)
    if netns:
        cmd = ["nsenter", "--net=" + netns, "--"] + cmd
    if cgroup:
        cmd = ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" || exit 99; exec "$@"', cgroup] + cmd
    r, w = _full_pipe()
    p = None
    try:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=w,
                             cwd=cwd, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        deadline = time.monotonic() + 30
        while True:
            assert p.poll() is None, "exited (%s) before blocking in write(2)" % p.returncode
            assert time.monotonic() < deadline, "never blocked in write(2)"
            with contextlib.suppress(OSError):
                if (os.path.realpath("/proc/%d/exe" % p.pid) == os.path.realpath(exe) and
                        open("/proc/%d/syscall" % p.pid).read().split()[:2] == ["1", "0x2"]):
                    break
            time.sleep(0.005)
        with open("/proc/%d/status" % p.pid) as f:
            euid = int([ln for ln in f if ln.startswith("Uid:")][0].split()[2])
        hs.sh(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
               "kill", "-ABRT", str(p.pid)])
        _, status = os.waitpid(p.pid, 0)
        p.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        return status, euid
    finally:
        if p is not None and p.returncode is None:
            p.kill()
            p.wait()
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("suid_dumpable", [1, 2])
@pytest.mark.parametrize("helper", ["installed", "musl", "glibc"])
def test_t12_no_core_dump_once_privileged(henv, world, builds, setuid_blocker, helper,
                                          suid_dumpable):
    """Set-user-ID path only (see test_t12_broker_*).

    The helper's own PR_SET_DUMPABLE, alone.  With fs.suid_dumpable 1 or 2
    and an absolute core_pattern the kernel dumps set-user-ID processes: the
    control, a set-user-ID root program without the prctl, blocked as below,
    dumps a core.  The attacker makes the helper block while root, after it
    has read root's files: its stderr is a full pipe, so the refusal message
    cannot be written (an unlisted program: after the allow list; a
    namespace id that differs: after the tag, the cgroup and the pin).
    SIGABRT then: no core anywhere, nothing run."""
    exe, b = _build_for(henv, world, builds, helper, "core")
    binary = henv.helper if helper == "installed" else exe
    attacker = henv.attacker_dir()
    with core_dumps(henv, suid_dumpable) as cores:
        status, euid = _abort_while_blocked(henv, [setuid_blocker], setuid_blocker, attacker)
        assert euid == 0 and os.WIFSIGNALED(status) and os.WCOREDUMP(status), status
        assert len(_cores_in(cores)) == 1  # the control dumped
        for n in _cores_in(cores):
            os.unlink(os.path.join(cores, n))

        report = henv.out_path()
        status, euid = _abort_while_blocked(henv, [exe, henv.unlisted_probe, "report", report],
                                            binary, attacker, netns=world.private.path)
        assert euid == 0
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGABRT, status
        assert not os.WCOREDUMP(status) and _cores_in(cores) == []
        hs.assert_not_run(report)

        dev, ino, nsid = b.identity
        b.set_tag(hs.tag_value(b.id, dev, ino, nsid + 1))
        status, euid = _abort_while_blocked(henv, world.probe_argv(report, exe), binary, attacker,
                                            cgroup=b.cgroup_path, netns=world.private.path)
        assert euid == 0
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGABRT, status
        assert not os.WCOREDUMP(status) and _cores_in(cores) == []
        hs.assert_not_run(report)
    assert not _cores_in(attacker)


def test_t12_core_dump_control(henv):
    """Control for the test above: an ordinary process aborted the same way
    does dump core here, so the absence above means something."""
    with open("/proc/sys/kernel/core_pattern") as f:
        pattern = f.read().strip()
    attacker = henv.attacker_dir()
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
                        henv.probe, "launch", henv.out_path("launch"), "--core=unlimited", "--",
                        "/bin/sh", "-c", "kill -ABRT $$"], cwd=attacker,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == -signal.SIGABRT
    if not pattern.startswith("|"):
        assert [n for n in os.listdir(attacker) if n.startswith("core")], pattern


# The broker path's counterparts.  Its client never holds privilege (no_new_privs,
# or the helper's privilege given back before it connects): there is no
# privileged window of the caller's to attack.  What a peer can reach is the
# supervise process cgnetnsd starts for its connection (real root, until it
# answers) and the supervisor (the caller's ids, for as long as the program
# uses the filter).  Both must refuse the peer everything the privileged
# window refuses, and dump no core.

# what the attacker gets from a process it may not trace (proc_attacks)
REFUSED = {"attach": 1, "seize": 1, "mem": 13, "environ": 13, "fd": 13, "cwd": 13, "exe": 13,
           "root": 13, "vm_readv": 1}


def _in_recv(pid):
    with contextlib.suppress(OSError):
        with open("/proc/%d/syscall" % pid) as f:
            return f.read().split()[0] == "45"   # recvfrom (x86_64), musl's recv()
    return False


def test_t12_broker_supervise_process_is_root_and_not_dumpable(request, henv, world,
                                                                 attacker_py):
    """A peer connects and sends nothing: cgnetnsd's supervise process for it
    is root and waits in recv() (for up to 5 s).  As the peer's uid, ptrace
    attach and seize, /proc/PID/mem, environ, fd, cwd, exe, root,
    process_vm_readv and signals are all refused (it is root's).  And it is
    not dumpable: with fs.suid_dumpable=1 and RLIMIT_CORE unlimited (the
    private broker's), a SIGABRT (root's: a stand-in for a crash while it
    holds what it read as root) leaves no core anywhere."""
    v = Via(request, "broker", "t12s")
    attacker = henv.attacker_dir()
    with core_dumps(henv, 1) as cores:
        before = set(v.pb.supervise_children())
        done = in_background(v.run, [USER_PY, attacker_py, "stall", henv.private_broker])
        sup = wait_for(lambda: set(v.pb.supervise_children()) - before, "supervise").pop()
        wait_for(lambda: _in_recv(sup), "supervise to wait for the request")
        out = henv.out_path("attack")
        r = v.run([USER_PY, attacker_py, "proc", str(sup), out], cwd=attacker)
        assert r.returncode == 0, r.stderr
        os.kill(sup, signal.SIGABRT)
        wait_for(lambda: not os.path.exists("/proc/%d" % sup), "supervise to end")
        r = done()
        assert r.stdout == b"connected\n", r
        dumped = _cores_in(cores)
    with open(out) as f:
        got = json.load(f)
    assert got["Uid"] == ["0", "0", "0", "0"], got
    assert {k: got[k] for k in REFUSED} == REFUSED, got
    assert got["signal"] == 1 and got["mem_uid"] == 0, got
    assert dumped == [] and _cores_in(attacker) == []


def test_t12_broker_supervisor_is_not_dumpable(request, henv, world, attacker_py):
    """The supervisor runs as the caller's uid for as long as the program uses
    the filter.  The caller (its program: python here, exec'd by the probe)
    may signal it -- its own uid: that ends only its own minting --, but
    ptrace attach and seize,
    /proc/PID/mem, environ, fd, cwd, exe, root and process_vm_readv are
    refused, because it is not dumpable: under fs.suid_dumpable=1, where the
    credential change alone would have left it dumpable.  Its SIGABRT (the
    caller's) leaves no core."""
    v = Via(request, "broker", "t12v")
    attacker = henv.attacker_dir()
    out, launched = henv.out_path("attack"), henv.out_path("launch")
    with core_dumps(henv, 1) as cores:
        r = v.run([v.exe, henv.probe, "launch", launched, "--", USER_PY, attacker_py,
                   "supervisor", v.build.cgroup_path, out], cwd=attacker)
        dumped = _cores_in(cores)
    assert r.returncode == 0, r.stderr
    assert os.path.exists(launched)  # joined: the client executed the probe
    v.said(r": join %s " % re.escape(henv.probe))
    with open(out) as f:
        got = json.load(f)
    assert got["Uid"] == ["65534"] * 4, got
    assert {k: got[k] for k in REFUSED} == REFUSED, got
    assert got["mem_uid"] == 0, got
    assert got["signal"] == 0 and got["abort"] == 0 and got["gone"], got
    assert dumped == [] and _cores_in(attacker) == []


# ---------------------------------------------------------------------------
# 13. No privilege: no_new_privs, nosuid mount, ptraced exec, user namespace

def _nosuid_copy(henv):
    d = os.path.join(henv.tdir, "nosuid")
    if not os.path.ismount(d):
        os.makedirs(d, exist_ok=True)
        hs.sh(["mount", "-t", "tmpfs", "-o", "nosuid,mode=0755", "cgnetns-test", d])
    p = os.path.join(d, "cgnetns-exec")
    if not os.path.exists(p):
        shutil.copy(henv.variants["musl"], p)
        os.chmod(p, 0o4755)
    return p


def _not_setuid_copy(henv):
    d = os.path.join(henv.tdir, "v", "notsetuid")
    p = os.path.join(d, "cgnetns-exec")
    if not os.path.exists(p):
        os.makedirs(d, exist_ok=True)
        shutil.copy(henv.variants["musl"], p)
        os.chmod(p, 0o755)
    return p


NO_PRIVILEGE = ["no_new_privs", "nosuid-mount", "ptrace", "user-namespace", "not-setuid",
                "securebit-noroot"]


def _no_privilege_run(henv, world, build, helper, case, report):
    kw, pre = {}, []
    if case == "no_new_privs":
        kw["nnp"] = True
    elif case == "ptrace":
        pre = ["strace", "-f", "-qq", "-o", "/dev/null", "--"]
    elif case == "user-namespace":
        pre = ["unshare", "-Ur", "--"]
    argv = world.probe_argv(report, helper, "--try-root")
    if case == "securebit-noroot":
        return build.run(["setpriv", "--securebits=+noroot,+noroot_locked", "--reuid=65534",
                          "--regid=65534", "--clear-groups", "--"] + argv,
                         netns=world.private.path, user=None)
    return build.run(argv, netns=world.private.path, pre=pre, **kw)


def _no_privilege_helper(henv, case):
    if case == "nosuid-mount":
        return _nosuid_copy(henv)
    if case == "not-setuid":
        return _not_setuid_copy(henv)
    return henv.variants["musl"]


@pytest.mark.parametrize("case", NO_PRIVILEGE)
def test_t13_no_privilege_no_join(henv, world, builds, no_pbroker, case):
    """Private variant, no broker on its socket: no privilege is gained,
    nothing is joined, one line says why."""
    b = builds(name="np", pins=henv.private_pins)
    report = henv.out_path()
    r = _no_privilege_run(henv, world, b, _no_privilege_helper(henv, case), case, report)
    assert r.returncode == 0, r.stderr
    assert NOTICE in hs.one_line(r.stderr)
    got = hs.read_report(report)
    hs.assert_not_joined(got, world.private, world.private_token,
                         unprivileged=case != "user-namespace")
    if case != "user-namespace":
        assert got["uids"] == [hs.NOBODY] * 3
        assert set(got["regain"].values()) == {1}


@pytest.mark.parametrize("case", NO_PRIVILEGE)
def test_t13_no_privilege_takes_the_broker_path(request, henv, world, case):
    """The same states with the private broker running: the set-user-ID bit
    still gains nothing (the caller's ids, no capability, root cannot be
    regained), and the broker path is taken: minted, silently."""
    v = Via(request, "broker", "npb")
    report = henv.out_path()
    r = _no_privilege_run(henv, world, v.build, _no_privilege_helper(henv, case), case, report)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    got = hs.read_report(report)
    userns = case == "user-namespace"
    assert_minted(got, world.private, world.parent_token, unprivileged=not userns)
    v.said(r"uid=65534 program=%s: join " % re.escape(henv.probe))
    if not userns:
        assert got["uids"] == [hs.NOBODY] * 3
        assert set(got["regain"].values()) == {1}


SUPERVISE_NOT_FOR_USERS = ("cgnetns-exec: %s is the mode cgnetnsd runs as real root; "
                           "it is not for users")


@pytest.mark.parametrize("mode", ["--supervise", "--fork-server"])
def test_t13_supervise_mode_is_not_reached_through_the_set_user_id_bit(henv, world, builds,
                                                                       mode):
    """The broker's side runs as root, so the set-user-ID bit must never
    reach it: nobody runs the (set-user-ID) helper's --supervise mode with a
    connection on fd 3 whose other end has already sent a request, nor its
    fork server (--fork-server, which would fork one such process per
    descriptor it receives) with a socket pair on fd 3 whose other end has
    sent a connection.  Refused at once (125, one line on stderr): nothing
    is read from fd 3, nothing is answered on it."""
    b = builds(name="sup", pins=henv.private_pins)
    kind = socket.SOCK_STREAM if mode == "--supervise" else socket.SOCK_SEQPACKET
    mine, theirs = socket.socketpair(socket.AF_UNIX, kind)
    try:
        name = henv.unlisted_probe.encode()
        request = struct.pack("=4sII", b"CGN2", 0, len(name)) + name
        if mode == "--supervise":
            mine.sendall(request)
        else:
            conn_mine, conn_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            conn_mine.sendall(request)
            mine.sendmsg([struct.pack("=Q", 1)],
                         [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                           struct.pack("i", conn_theirs.fileno()))])
            conn_mine.close()
            conn_theirs.close()
        n = theirs.fileno()
        on_fd3 = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.execv(sys.argv[2], sys.argv[2:])"
        r = b.run([USER_PY, "-c", on_fd3, str(n), henv.variants["musl"], mode],
                  netns=world.private.path, pass_fds=(n,))
        theirs.close()
        mine.settimeout(10)
        try:
            answered = mine.recv(4096)
        except ConnectionResetError:   # closed with our request unread
            answered = b""
    finally:
        mine.close()
        theirs.close()
    assert r.returncode == hs.EXIT_REFUSE, (r.returncode, r.stderr)
    assert hs.one_line(r.stderr) == SUPERVISE_NOT_FOR_USERS % mode
    assert answered == b""


@pytest.mark.parametrize("case", ["no_new_privs", "ptrace", "securebit-noroot"])
def test_t13_installed_no_privilege_gains_nothing(henv, world, case):
    """The installed helper, whether or not a broker (cgnetnsd) runs here:
    either the broker path joined A's namespace for the caller, with the
    caller's ids and no capability, or nothing was joined and one line says
    so.  Never another namespace, never privilege."""
    report = henv.out_path()
    r = _no_privilege_run(henv, world, world.a, henv.installed, case, report)
    assert r.returncode == 0, r.stderr
    got = hs.read_report(report)
    assert got is not None
    assert got["uids"] == [hs.NOBODY] * 3 and got["gids"] == [hs.NOGROUP] * 3
    assert got["status"]["CapEff"] == got["status"]["CapPrm"] == "0000000000000000"
    assert set(got["regain"].values()) == {1}
    if got["connect"] == {"token": world.parent_token}:
        # through a broker: the program stays in its own namespace, its
        # socket was minted in the approved one
        hs.assert_minted(got, world.private, world.parent_token)
    else:
        assert NOTICE in hs.one_line(r.stderr)
        hs.assert_not_joined(got, world.private, world.private_token)


# ---------------------------------------------------------------------------
# 14. After the drop

@pytest.mark.parametrize("via", ["installed", "broker"])
def test_t14_after_the_drop(request, henv, world, via):
    """Regaining root fails, no capability is left, no fd of the helper leaks,
    the caller's environment (LD_PRELOAD included) and fds arrive.  Broker
    path: the program is the caller's own process (the launcher's pid), and
    no descriptor of the client's (connection, listener) reaches it."""
    v = Via(request, via, "drop")
    launched, report = henv.out_path("launch"), henv.out_path()
    env = {"PATH": "/usr/bin:/bin", "LD_PRELOAD": henv.preload, "TMPDIR": "/x"}
    r = v.run([henv.probe, "launch", launched, "--"] + v.probe_argv(report, "--try-root"),
              env=env, groups=[4242])
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    got, want = hs.read_report(report), hs.read_report(launched)
    v.assert_joined(got, world.host_ns, world.parent_token)
    assert got["regain"] == {"setuid0": 1, "seteuid0": 1, "setresuid0": 1, "setgid0": 1,
                             "setgroups0": 1}
    for cap in ("CapEff", "CapPrm", "CapAmb", "CapInh"):
        assert got["status"][cap] == "0000000000000000", cap
    assert got["status"]["Uid"] == "65534 65534 65534 65534"
    assert got["status"]["Gid"] == "65534 65534 65534 65534"
    assert got["groups"] == [4242]
    assert got["fds"] == want["fds"]
    assert got["env_b"] == want["env_b"] and got["preloaded"] == 1
    if v.broker:
        assert got["pid"] == want["pid"], "the program is not the caller's own process"
        assert got["status"]["NoNewPrivs"] == "1"


@pytest.mark.parametrize("caller", ["nobody", "root"])
def test_t14_broker_supervisor_is_the_caller(request, henv, world, caller):
    """Broker path: the client holds no privilege to drop (the tests above
    drop the set-user-ID helper's); what drops is the supervisor, which
    mints with the credentials the kernel recorded at connect.  Looked at
    while the caller's program holds the filter: nobody with group 4242 ->
    uid and gid 65534 (real, effective, saved, fs), groups 4242, no
    capability; a root caller whose bounding set lacks CAP_SYS_ADMIN (so it
    takes the broker path) -> uid 0, and of root's capabilities only
    CAP_SYS_PTRACE (bounding set too), to read its tasks' /proc/PID/exe.
    Both: no_new_privs, not dumpable (its /proc files root's), in the build's
    cgroup and the approved namespace."""
    v = Via(request, "broker", "sv")
    go, launched = henv.out_path("go"), henv.out_path("launch")
    argv = [v.exe, henv.probe, "launch", launched, "--"] + holder(go)
    if caller == "root":
        done = in_background(v.run, ["setpriv", "--no-new-privs", "--bounding-set=-sys_admin",
                                     "--inh-caps=-sys_admin", "--"] + argv, user=None)
    else:
        done = in_background(v.run, argv, groups=[4242])
    try:
        sup = supervisor_in(v.build.cgroup_path)
        # the probe ran: the client had its "ok", the supervisor is what it stays
        wait_for(lambda: os.path.exists(launched), "the program")
        st = proc_status(sup)
        mem_uid = os.stat("/proc/%d/mem" % sup).st_uid
        netns_ino = os.stat("/proc/%d/ns/net" % sup).st_ino
        with open("/proc/%d/cgroup" % sup) as f:
            cgroup = [ln for ln in f.read().splitlines() if ln.startswith("0::")]
    finally:
        with open(go, "w"):
            pass
        r = done()
    assert r.returncode == 0, r.stderr
    assert os.path.exists(launched)
    assert st["Groups"] == [str(g) for g in hs.read_report(launched)["groups"]], st
    if caller == "root":
        assert st["Uid"] == ["0"] * 4 and st["Gid"] == ["0"] * 4, st
        ptrace_only = "%016x" % (1 << 19)   # CAP_SYS_PTRACE
        assert st["CapEff"] == st["CapPrm"] == st["CapBnd"] == [ptrace_only], st
    else:
        assert st["Uid"] == ["65534"] * 4 and st["Gid"] == ["65534"] * 4, st
        assert st["Groups"] == ["4242"], st
        assert st["CapEff"] == st["CapPrm"] == [ZERO_CAPS], st
    assert st["CapInh"] == st["CapAmb"] == [ZERO_CAPS], st
    assert st["NoNewPrivs"] == ["1"], st
    assert mem_uid == 0, "dumpable: the caller could ptrace it"
    assert cgroup == ["0::/cgnetns/" + v.build.id], cgroup
    assert netns_ino == world.host_ns[1]


# The drop made to fail halfway (set-user-ID path only: the broker path's
# client has nothing to drop; its supervisor's drop is
# test_t14_broker_supervisor_is_the_caller).  Each check of drop.c is reached,
# and named exactly: through a state the kernel really produces where there
# is one (securebits, bounding set, as an ancestor of the caller can leave
# them), else through a root ptrace tracer that changes one system call's
# result in the helper (a kernel or LSM that lies, the only way to reach
# those checks).  The program's report is the marker: it must not exist.

TRACER_C = r"""
/* tracer OUT [--uid=U --gid=G [--group=G]...] [--bound-drop=CAP]...
 *            [--securebits=N] [--tracer-uid=U] [--fault=NR:K:skip|ret:RET]...
 *            -- PROG [ARG...]
 * Runs PROG as a traced child (PTRACE_TRACEME while root, so that a
 * set-user-ID exec keeps its effect: the kernel checks the tracer's
 * CAP_SYS_PTRACE), after dropping CAPs from the bounding set, setting the
 * securebits and the ids (in that order).  With --tracer-uid the tracer
 * itself first becomes that user (an unprivileged tracer).  Writes JSON to
 * OUT: /proc/PID/status fields at each exec event (PROG's image, then the
 * image PROG executes, where tracing ends) and at the entry of every execve
 * and execveat that PROG's image makes ("exec_calls": what it holds just
 * before exec).  A fault changes the K-th call of syscall NR in PROG's
 * image: "skip" does not run it and returns RET, "ret" runs it and returns
 * RET (RET as the kernel returns it: -errno for an error). */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAXF 8
static struct fault { long nr; int k, seen, applied, skip; long ret; } faults[MAXF];
static int nfaults;
static FILE *out;

static void snapshot(pid_t pid)
{
    static const char *keys[] = { "Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff",
                      "CapBnd", "CapAmb", "NoNewPrivs" };
    char p[64], line[4096];
    snprintf(p, sizeof p, "/proc/%d/status", (int)pid);
    FILE *f = fopen(p, "re");
    int first = 1;
    fputc('{', out);
    while (f && fgets(line, sizeof line, f)) {
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
            size_t k = strlen(keys[i]);
            if (strncmp(line, keys[i], k) || line[k] != ':')
                continue;
            char *v = line + k + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            v[strcspn(v, "\n")] = 0;
            for (char *c = v; *c; c++)
                if (*c == '\t')
                    *c = ' ';
            fprintf(out, "%s\"%s\": \"%s\"", first ? "" : ", ", keys[i], v);
            first = 0;
        }
    }
    if (f)
        fclose(f);
    fputc('}', out);
}

int main(int argc, char **argv)
{
    long uid = -1, gid = -1, tracer_uid = -1, securebits = -1;
    gid_t groups[64];
    int ngroups = 0, nbound = 0, bound[64], i;
    if (argc < 3) {
        fprintf(stderr, "usage: tracer OUT [options] -- PROG [ARG...]\n");
        return 2;
    }
    const char *outpath = argv[1];
    for (i = 2; i < argc && strcmp(argv[i], "--"); i++) {
        const char *a = argv[i];
        if (!strncmp(a, "--uid=", 6)) uid = atol(a + 6);
        else if (!strncmp(a, "--gid=", 6)) gid = atol(a + 6);
        else if (!strncmp(a, "--group=", 8) && ngroups < 64) groups[ngroups++] = (gid_t)atol(a + 8);
        else if (!strncmp(a, "--bound-drop=", 13) && nbound < 64) bound[nbound++] = atoi(a + 13);
        else if (!strncmp(a, "--securebits=", 13)) securebits = strtol(a + 13, NULL, 0);
        else if (!strncmp(a, "--tracer-uid=", 13)) tracer_uid = atol(a + 13);
        else if (!strncmp(a, "--fault=", 8) && nfaults < MAXF) {
            /* NR:K:skip|ret:RET: the K-th call of syscall NR in the first image */
            char act[8] = "";
            struct fault *f = &faults[nfaults++];
            if (sscanf(a + 8, "%ld:%d:%7[a-z]:%ld", &f->nr, &f->k, act, &f->ret) != 4)
                return 2;
            f->skip = !strcmp(act, "skip");
        } else {
            fprintf(stderr, "tracer: bad option %s\n", a);
            return 2;
        }
    }
    if (i + 1 >= argc)
        return 2;
    char **cmd = argv + i + 1;
    out = fopen(outpath, "we");
    if (!out)
        return 2;
    if (tracer_uid >= 0 && (setgroups(0, NULL) || setresgid(tracer_uid, tracer_uid, tracer_uid) ||
                setresuid(tracer_uid, tracer_uid, tracer_uid))) {
        perror("tracer: drop");
        return 2;
    }
    pid_t pid = fork();
    if (pid < 0)
        return 2;
    if (pid == 0) {
        if (ptrace(PTRACE_TRACEME, 0, 0, 0) < 0)
            _exit(120);
        raise(SIGSTOP);
        for (int b = 0; b < nbound; b++)
            if (prctl(PR_CAPBSET_DROP, bound[b], 0, 0, 0) < 0)
                _exit(121);
        if (securebits >= 0 && prctl(PR_SET_SECUREBITS, securebits, 0, 0, 0) < 0)
            _exit(122);
        if (gid >= 0 && (setgroups((size_t)ngroups, groups) || setresgid(gid, gid, gid)))
            _exit(123);
        if (uid >= 0 && setresuid(uid, uid, uid))
            _exit(124);
        execv(cmd[0], cmd);
        _exit(127);
    }
    fprintf(out, "{\"tracer_uid\": %d, \"execs\": [", (int)geteuid());
    int st, execs = 0, nexec_calls = 0, in_call = 0;
    long cur_nr = -1;
    struct fault *pending = NULL;
    if (waitpid(pid, &st, 0) != pid || !WIFSTOPPED(st))
        return 3;
    ptrace(PTRACE_SETOPTIONS, pid, 0,
           PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACEEXEC | PTRACE_O_EXITKILL);
    char calls[65536] = "";
    size_t clen = 0;
    int sig = 0;
    for (;;) {
        if (ptrace(PTRACE_SYSCALL, pid, 0, sig) < 0)
            break;
        sig = 0;
        if (waitpid(pid, &st, 0) != pid)
            break;
        if (WIFEXITED(st) || WIFSIGNALED(st))
            break;
        if (!WIFSTOPPED(st))
            continue;
        if (st >> 8 == (SIGTRAP | (PTRACE_EVENT_EXEC << 8))) {
            fprintf(out, "%s", execs ? ", " : "");
            snapshot(pid);
            execs++;
            if (execs == 2) {
                /* the program: let it run untraced */
                ptrace(PTRACE_DETACH, pid, 0, 0);
                while (waitpid(pid, &st, 0) == pid && !WIFEXITED(st) && !WIFSIGNALED(st))
                    ;
                break;
            }
            continue;
        }
        if (WSTOPSIG(st) == (SIGTRAP | 0x80)) {
            struct __ptrace_syscall_info info;
            if (ptrace(PTRACE_GET_SYSCALL_INFO, pid, sizeof info, &info) <= 0)
                return 4;
            if (info.op == PTRACE_SYSCALL_INFO_ENTRY) {
                cur_nr = (long)info.entry.nr;
                in_call = 1;
                if (execs >= 1 && (cur_nr == 59 || cur_nr == 322)) {
                    /* the image is about to exec: what it holds now */
                    FILE *keep = out;
                    char *buf = NULL;
                    size_t blen = 0;
                    out = open_memstream(&buf, &blen);
                    snapshot(pid);
                    fclose(out);
                    out = keep;
                    clen += (size_t)snprintf(calls + clen, sizeof calls - clen,
                        "%s{\"nr\": %ld, \"status\": %s}", nexec_calls++ ? ", " : "",
                        cur_nr, buf);
                    free(buf);
                }
                if (execs == 1) {
                    for (int f = 0; f < nfaults; f++) {
                        if (faults[f].nr != cur_nr || ++faults[f].seen != faults[f].k)
                            continue;
                        pending = &faults[f];
                        if (faults[f].skip) {
                            struct user_regs_struct r;
                            ptrace(PTRACE_GETREGS, pid, 0, &r);
                            r.orig_rax = (unsigned long long)-1;
                            ptrace(PTRACE_SETREGS, pid, 0, &r);
                        }
                    }
                }
            } else if (info.op == PTRACE_SYSCALL_INFO_EXIT && in_call) {
                in_call = 0;
                if (pending) {
                    struct user_regs_struct r;
                    ptrace(PTRACE_GETREGS, pid, 0, &r);
                    r.rax = (unsigned long long)pending->ret;
                    ptrace(PTRACE_SETREGS, pid, 0, &r);
                    pending->applied++;
                    pending = NULL;
                }
            }
            continue;
        }
        sig = WSTOPSIG(st) == SIGTRAP ? 0 : WSTOPSIG(st);
    }
    fprintf(out, "], \"exec_calls\": [%s], \"faults\": [", calls);
    for (int f = 0; f < nfaults; f++)
        fprintf(out, "%s{\"nr\": %ld, \"k\": %d, \"seen\": %d, \"applied\": %d}", f ? ", " : "",
            faults[f].nr, faults[f].k, faults[f].seen, faults[f].applied);
    fprintf(out, "], \"exited\": %d, \"status\": %d, \"signaled\": %d, \"signal\": %d}\n",
        WIFEXITED(st), WIFEXITED(st) ? WEXITSTATUS(st) : -1, WIFSIGNALED(st),
        WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    fclose(out);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
"""


@pytest.fixture(scope="module")
def tracer(henv):
    d = os.path.join(henv.tdir, "tracer-" + os.urandom(3).hex())
    os.mkdir(d, 0o755)
    try:
        src, exe = os.path.join(d, "tracer.c"), os.path.join(d, "tracer")
        with open(src, "w") as f:
            f.write(TRACER_C)
        hs.sh(["gcc", "-O1", "-Wall", "-Werror", "-o", exe, src])
        yield exe
    finally:
        shutil.rmtree(d)


SECBIT_NO_SETUID_FIXUP = 1 << 2
CAP_NUMBERS = {"setgid": 6, "setuid": 7, "sys_admin": 21}
# x86_64 system call numbers
SYS = {"getgroups": 115, "setgroups": 116, "setresuid": 117, "setresgid": 119, "setuid": 105,
       "setgid": 106, "capget": 125, "execve": 59, "execveat": 322}
ZERO_CAPS = "0000000000000000"


def _helper_and_build(henv, world, builds, helper, name):
    """(what the caller runs, the set-user-ID binary itself, a build approving
    the host namespace) for the installed helper or a private variant."""
    exe, b = _build_for(henv, world, builds, helper, name)
    return exe, (henv.helper if helper == "installed" else exe), b


def _traced(henv, build, world, tracer, binary, argv, opts=(), groups=(4242,)):
    """Run binary argv under the root tracer in build, in the private
    namespace, the traced child dropped to nobody; (result, trace)."""
    out = henv.out_path("trace")
    cmd = [tracer, out] + list(opts)
    if not any(o.startswith("--tracer-uid=") for o in opts):
        cmd += ["--uid=%d" % hs.NOBODY, "--gid=%d" % hs.NOGROUP]
        cmd += ["--group=%d" % g for g in groups]
    r = build.run(cmd + ["--", binary] + list(argv), netns=world.private.path, user=None)
    with open(out) as f:
        trace = json.load(f)
    return r, trace


def _setpriv_opts_for_tracer(setpriv_opts):
    """The tracer's options for the same securebits and bounding set."""
    opts = []
    for o in setpriv_opts:
        if o == "--securebits=+no_setuid_fixup":
            opts.append("--securebits=%d" % SECBIT_NO_SETUID_FIXUP)
        elif o.startswith("--bounding-set="):
            opts += ["--bound-drop=%d" % CAP_NUMBERS[c.lstrip("-")]
                     for c in o.split("=", 1)[1].split(",")]
        else:
            raise AssertionError(o)
    return opts


DROP_STATES = {
    # SECBIT_NO_SETUID_FIXUP: setresuid() keeps every capability, so
    # setuid(0) works again: the first check after the ids says so
    "no_setuid_fixup": (["--securebits=+no_setuid_fixup"], "root could be regained"),
    # the same without CAP_SETUID in the bounding set: setuid(0) fails, the
    # capabilities are still there
    "no_setuid_fixup-without-setuid": (
        ["--securebits=+no_setuid_fixup", "--bounding-set=-setuid"], "capabilities left"),
    "no_setuid_fixup-without-setuid-setgid": (
        ["--securebits=+no_setuid_fixup", "--bounding-set=-setuid,-setgid"],
        "capabilities left"),
    # without CAP_SYS_ADMIN: not privileged, but the set-user-ID exec is
    # given back through the same drop and the same checks
    "no_setuid_fixup-unprivileged": (
        ["--securebits=+no_setuid_fixup", "--bounding-set=-sys_admin"], "root could be regained"),
    "no_setuid_fixup-unprivileged-without-setuid": (
        ["--securebits=+no_setuid_fixup", "--bounding-set=-sys_admin,-setuid"],
        "capabilities left"),
}


@pytest.mark.parametrize("case", sorted(DROP_STATES))
@pytest.mark.parametrize("helper", ["installed", "musl", "glibc"])
def test_t14_drop_checks_refuse_what_the_kernel_leaves(henv, world, builds, tracer, helper, case):
    """Securebits and a bounding set that an ancestor of the caller left: the
    helper refuses with exactly the check that failed, the program does not
    run, and under the root tracer its image never even calls exec."""
    opts, reason = DROP_STATES[case]
    exe, binary, b = _helper_and_build(henv, world, builds, helper, "drop")
    want = "cgnetns-exec: privilege drop failed: " + reason
    report = henv.out_path()
    r = b.run(["setpriv"] + opts + ["--reuid=65534", "--regid=65534", "--clear-groups", "--"]
              + world.probe_argv(report, exe), netns=world.private.path, user=None)
    assert r.returncode == hs.EXIT_REFUSE, r.stderr
    assert hs.one_line(r.stderr) == want
    hs.assert_not_run(report)
    r, trace = _traced(henv, b, world, tracer, binary, world.probe_argv(report)[1:],
                       _setpriv_opts_for_tracer(opts))
    assert r.returncode == hs.EXIT_REFUSE, r.stderr
    assert hs.one_line(r.stderr) == want
    assert trace["exited"] == 1 and trace["status"] == hs.EXIT_REFUSE
    assert [e["Uid"] for e in trace["execs"]] == ["65534 0 0 0"]  # set-user-ID took effect
    assert trace["exec_calls"] == []
    hs.assert_not_run(report)


DROP_FAULTS = {
    # name: (syscall, K-th call in the helper, skip|ret, return value, message)
    "setgroups-einval": ("setgroups", 1, "skip", -22, "setgroups: Invalid argument"),
    "setresgid-eperm": ("setresgid", 1, "skip", -1, "setresgid: Operation not permitted"),
    "setresuid-eperm": ("setresuid", 1, "skip", -1, "setresuid: Operation not permitted"),
    "setresuid-does-nothing": ("setresuid", 1, "skip", 0,
                               "privilege drop failed: ids not the caller's"),
    "groups-differ": ("getgroups", 2, "ret", 2, "privilege drop failed: groups not the caller's"),
    "setuid0-succeeds": ("setuid", 1, "ret", 0, "privilege drop failed: root could be regained"),
    "seteuid0-succeeds": ("setresuid", 2, "ret", 0,
                          "privilege drop failed: root could be regained"),
    "setresuid000-succeeds": ("setresuid", 3, "ret", 0,
                              "privilege drop failed: root could be regained"),
    "capget-fails": ("capget", 2, "skip", -1, "capget: Operation not permitted"),
    "setgid0-succeeds": ("setgid", 1, "ret", 0,
                         "privilege drop failed: group root could be regained"),
    "setegid0-succeeds": ("setresgid", 2, "ret", 0,
                          "privilege drop failed: group root could be regained"),
}


@pytest.mark.parametrize("fault", sorted(DROP_FAULTS))
@pytest.mark.parametrize("helper", ["installed", "musl", "glibc"])
def test_t14_drop_checks_refuse_a_lying_kernel(henv, world, builds, tracer, helper, fault):
    """One system call of the drop or of its verification answers wrongly
    (the root tracer changes its result; the caller, nobody, has the
    supplementary group 4242): refused with exactly that check's message,
    nothing run, no exec called.  (The K-th call counts the helper's calls:
    seteuid() and setegid() are setresuid()/setresgid() underneath, capget()
    first served have_privilege().)"""
    name, k, how, ret, message = DROP_FAULTS[fault]
    exe, binary, b = _helper_and_build(henv, world, builds, helper, "fault")
    report = henv.out_path()
    r, trace = _traced(henv, b, world, tracer, binary, world.probe_argv(report)[1:],
                       ["--fault=%d:%d:%s:%d" % (SYS[name], k, how, ret)])
    assert r.returncode == hs.EXIT_REFUSE, r.stderr
    assert hs.one_line(r.stderr) == "cgnetns-exec: " + message
    assert trace["faults"] == [{"nr": SYS[name], "k": k, "seen": k, "applied": 1}], trace
    assert [e["Uid"] for e in trace["execs"]] == ["65534 0 0 0"]
    assert trace["exec_calls"] == []
    hs.assert_not_run(report)


def _assert_caller_without_privilege(status, groups=("4242",)):
    assert status["Uid"] == "65534 65534 65534 65534", status
    assert status["Gid"] == "65534 65534 65534 65534", status
    assert status["Groups"].split() == list(groups), status
    for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert status[cap] == ZERO_CAPS, (cap, status)


@pytest.mark.parametrize("helper", ["installed", "musl", "glibc"])
def test_t14_capabilities_just_before_the_exec(henv, world, builds, tracer, helper):
    """A root tracer (CAP_SYS_PTRACE: the set-user-ID exec keeps its effect,
    checked) stops the helper at the entry of its exec system call: it holds
    the caller's ids and groups and no capability at all, in the approved
    namespace; the program's image, just executed, the same."""
    exe, binary, b = _helper_and_build(henv, world, builds, helper, "caps")
    report = henv.out_path()
    r, trace = _traced(henv, b, world, tracer, binary, world.probe_argv(report, exe)[1:])
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    helper_image, program_image = trace["execs"]
    assert helper_image["Uid"] == "65534 0 0 0"
    assert helper_image["CapEff"] != ZERO_CAPS and helper_image["CapPrm"] != ZERO_CAPS
    assert [c["nr"] for c in trace["exec_calls"]] == [SYS["execveat"]]
    _assert_caller_without_privilege(trace["exec_calls"][0]["status"])
    _assert_caller_without_privilege(program_image)
    got = hs.read_report(report)
    hs.assert_joined(got, world.host_ns, world.parent_token)
    assert got["groups"] == [4242]


def test_t14_unprivileged_tracer_cancels_set_user_id(henv, world, builds, tracer, no_pbroker):
    """Control for the tests above: traced by nobody (no CAP_SYS_PTRACE), the
    kernel does not give the set-user-ID effect; the helper (private variant:
    no broker answers) says so and runs the program unchanged."""
    b = builds(name="utr", pins=henv.private_pins)
    report = henv.out_path()
    r, trace = _traced(henv, b, world, tracer, henv.variants["musl"],
                       world.probe_argv(report)[1:], ["--tracer-uid=%d" % hs.NOBODY])
    assert r.returncode == 0, r.stderr
    assert NOTICE in hs.one_line(r.stderr)
    assert trace["tracer_uid"] == hs.NOBODY
    assert trace["execs"][0]["Uid"] == "65534 65534 65534 65534"
    assert trace["execs"][0]["CapEff"] == ZERO_CAPS
    hs.assert_not_joined(hs.read_report(report), world.private, world.private_token)


@pytest.mark.parametrize("bounding", ["-setuid", "-setgid", "-setuid,-setgid"])
@pytest.mark.parametrize("helper", ["installed", "musl", "glibc"])
def test_t14_drop_needs_neither_setuid_nor_setgid(henv, world, builds, tracer, helper, bounding):
    """Without CAP_SETUID and/or CAP_SETGID in the bounding set (root's
    container, say): the set-user-ID exec still gives root and CAP_SYS_ADMIN,
    and the drop still works, because its targets are the caller's own real
    ids (which need no capability), and a setgroups() refused with EPERM is
    checked by reading the groups back.  The program runs joined, as the
    caller, without capability, unable to regain root; the same just
    before its exec under the root tracer."""
    exe, binary, b = _helper_and_build(henv, world, builds, helper, "bnd")
    opts = ["--bounding-set=" + bounding]
    report = henv.out_path()
    r = b.run(["setpriv"] + opts + ["--reuid=65534", "--regid=65534", "--groups=4242", "--"]
              + world.probe_argv(report, exe, "--try-root"), netns=world.private.path, user=None)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    got = hs.read_report(report)
    hs.assert_joined(got, world.host_ns, world.parent_token)
    assert got["uids"] == [hs.NOBODY] * 3 and got["gids"] == [hs.NOGROUP] * 3
    assert got["groups"] == [4242]
    assert got["status"]["CapEff"] == got["status"]["CapPrm"] == ZERO_CAPS
    assert set(got["regain"].values()) == {1}
    os.unlink(report)
    r, trace = _traced(henv, b, world, tracer, binary, world.probe_argv(report)[1:],
                       _setpriv_opts_for_tracer(opts))
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert trace["execs"][0]["Uid"] == "65534 0 0 0"
    _assert_caller_without_privilege(trace["exec_calls"][0]["status"])
    hs.assert_joined(hs.read_report(report), world.host_ns, world.parent_token)


def test_t14_keep_caps_left_by_an_ancestor(henv, world, builds, tracer):
    """SECBIT_KEEP_CAPS (locked) set by a root ancestor before it became
    nobody: the exec clears it (setpriv refuses to set it for that reason),
    so the drop still clears every capability: none just before the exec."""
    b = builds(name="kc", pins=henv.private_pins)
    report = henv.out_path()
    keep_caps, keep_caps_locked = 1 << 4, 1 << 5
    r, trace = _traced(henv, b, world, tracer, henv.variants["musl"],
                       world.probe_argv(report)[1:],
                       ["--securebits=%d" % (keep_caps | keep_caps_locked)])
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert trace["execs"][0]["Uid"] == "65534 0 0 0"
    _assert_caller_without_privilege(trace["exec_calls"][0]["status"])
    _assert_caller_without_privilege(trace["execs"][1])
    hs.assert_joined(hs.read_report(report), world.host_ns, world.parent_token)


# ---------------------------------------------------------------------------
# 15-17. The broker's requests (broker path only: the set-user-ID helper reads
# no request -- what it is given is argv and its environment, items 1 and 8
# -- has no peer but itself -- resolve.c's subject is /proc/self, opened by
# the helper's own process -- and runs the program itself)

def _answer_of(path):
    with open(path, "rb") as f:
        return f.read()


def _request(name, magic=b"CGN2", flags=0, n=None):
    name = name.encode() if isinstance(name, str) else name
    return struct.pack("=4sII", magic, flags, len(name) if n is None else n) + name


BAD_REQUESTS = {
    # a listed name, then a NUL and more: a C string would stop at the NUL
    "nul-after-a-listed-name": (lambda h: _request(h.probe.encode() + b"\0/x"),
                                "bad request: NUL in the program name"),
    "nul-in-name": (lambda h: _request(b"pro\0be"), "bad request: NUL in the program name"),
    "bad-magic": (lambda h: _request(h.probe, magic=b"CGN1"),
                  "bad request (magic or flags): this cgnetns-exec does not match the broker; "
                  "reinstall both"),
    "bad-flags": (lambda h: _request(h.probe, flags=1),
                  "bad request (magic or flags): this cgnetns-exec does not match the broker; "
                  "reinstall both"),
    "zero-name": (lambda h: _request(b""), "bad request: program name of 0 bytes"),
    "oversized-name": (lambda h: _request(b"", n=4096), "bad request: program name of 4096 bytes"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_t15_malformed_requests_are_refused_exactly(request, henv, world, attacker_py, case):
    """A member of a build sends a malformed request on its own connection:
    refused (125) with exactly that check's words, never a pass or a join,
    and the broker serves on.  (Truncated and endless requests, floods and
    descriptors: test_broker.py and test_hostile.py.)"""
    v = Via(request, "broker", "t15")
    make, text = BAD_REQUESTS[case]
    out = henv.out_path("answer")
    client = os.path.join(os.path.dirname(attacker_py), "broker_client.py")
    r = v.run([USER_PY, client, henv.private_broker, "raw", out, make(henv).hex()])
    assert r.returncode == 0, r.stderr
    assert _answer_of(out) == b"refuse 125 %s\n" % text.encode()
    v.said(r"uid=65534: refuse 125: %s$" % re.escape(text))
    report = henv.out_path()
    r = v.run(v.probe_argv(report))
    assert r.returncode == 0, r.stderr
    v.assert_joined(hs.read_report(report), world.host_ns, world.parent_token)


def test_t16_a_peer_that_exited_after_connecting_gets_nothing(request, henv, world, attacker_py):
    """The process that connected exits, and a child that inherited the
    connection asks (the connector is a zombie: nobody has reaped it yet, so
    its pid names it still).  Only the connector counts, and it has gone:
    refused, with exactly that reason -- not judged by the /proc directory
    or namespaces of a process that no longer runs."""
    v = Via(request, "broker", "t16z")
    out = henv.out_path("answer")
    # the connector is the process henv.run starts; subprocess reaps it only
    # after its pipes close, which the child holds until it has its answer
    r = v.run([USER_PY, attacker_py, "zombie", henv.private_broker, henv.probe, out])
    assert r.returncode == 0, r.stderr
    wait_for(lambda: os.path.exists(out), "the child's answer")
    assert _answer_of(out) == b"zombie\nrefuse 125 the peer has gone (it exited after connecting)\n"
    v.said(r"uid=65534 program=%s: refuse 125: the peer has gone \(it exited after "
           r"connecting\)$" % re.escape(henv.probe))


def test_t16_a_connection_handed_to_a_process_outside_the_build(request, henv, world,
                                                                attacker_py):
    """A member of build A connects and hands the connection to a process of
    the same uid outside every build, which asks for the probe on it, gets
    A's "join" (only the connector counts), installs its own filter, sends
    its listener and runs the probe.  The supervisor serves only tasks whose
    cgroup is A's or below it: the outsider's probe gets no minted socket and
    reaches only the decoy."""
    v = Via(request, "broker", "t16h")
    unix = os.path.join(henv.attacker_dir(), "handover.sock")
    answer, report = henv.out_path("answer"), henv.out_path()
    outsider = in_background(
        v.run, [USER_PY, attacker_py, "outsider", unix, henv.probe, answer, "--", henv.probe,
                "report", report, "--connect=%d" % world.port], cgroup=henv.untagged_cgroup())
    r = v.run([USER_PY, attacker_py, "connector", henv.private_broker, unix])
    assert r.returncode == 0, r.stderr
    r = outsider()
    assert r.returncode == 0, r.stderr
    assert _answer_of(answer) == b"join %s\nok\n" % henv.probe.encode()
    got = hs.read_report(report)
    assert got["cgroup"] != "/cgnetns/" + v.build.id
    hs.assert_not_joined(got, world.private, world.private_token)
    assert got["connect"] == {"token": world.private_token}, "minted for a task outside the build"


SECCOMP_IOCTL_NOTIF_RECV = 0xc0502100


def _syscall_of(pid):
    with contextlib.suppress(OSError):
        with open("/proc/%d/syscall" % pid) as f:
            return f.read().split()
    return []


def test_t16_a_notification_no_longer_pending_is_not_acted_on(request, henv, world, attacker_py):
    """The supervisor reads /proc/PID of the task that called socket(); then
    it checks that the notification is still pending (the task still blocked
    in that very call), so that it never acts on what a pid came to name
    meanwhile.  Made deterministic: python3 (allow-listed here) with a
    SIGUSR1 handler calls socket(AF_INET); a root strace holds the
    supervisor at the exit of the ioctl that received the notification; the
    test signals the task, whose wait is interrupted (the notification is
    withdrawn) and which calls socket() again (a new notification).  The
    supervisor must find the first one gone (SECCOMP_IOCTL_NOTIF_ID_VALID:
    ENOENT) and make no socket for it: exactly one socket() in the approved
    namespace, for the second, which the task gets (the parent's token)."""
    py = os.path.realpath(USER_PY)
    henv.write_private_allow(henv.private_allow_text + py + "\n")
    tracer = None
    try:
        v = Via(request, "broker", "idv")
        go, out, log = henv.out_path("go"), henv.out_path("sig"), henv.out_path("strace")
        done = in_background(v.run, [v.exe, py, attacker_py, "sigsocket", go, str(world.port),
                                     out])
        sup = supervisor_in(v.build.cgroup_path)
        task = wait_for(lambda: [p for p in _procs(v.build.cgroup_path)
                                 if b"sigsocket" in _cmdline(p)], "the program")[0]
        tracer = subprocess.Popen(["strace", "-qq", "-p", str(sup), "-o", log, "-e",
                                   "trace=socket,ioctl", "-e",
                                   "inject=ioctl:delay_exit=1s:when=1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(lambda: proc_status(sup)["TracerPid"] == [str(tracer.pid)], "strace to attach")
        with open(go, "w"):
            pass
        # held right after the ioctl that received the notification
        wait_for(lambda: _syscall_of(sup)[:1] == ["16"] and
                 int(_syscall_of(sup)[2], 16) & 0xffffffff == SECCOMP_IOCTL_NOTIF_RECV,
                 "the supervisor to hold the notification")
        assert _syscall_of(task)[:2] == ["41", "0x2"], "the task is not in socket(AF_INET)"
        os.kill(task, signal.SIGUSR1)
        r = done()
        tracer.wait(20)  # the supervisor, its only tracee, exits with the program
        with open(log) as f:
            trace = f.read()
    finally:
        henv.write_private_allow(henv.private_allow_text)
        if tracer is not None and tracer.poll() is None:
            tracer.kill()
            tracer.wait()
    assert r.returncode == 0, r.stderr
    with open(out) as f:
        got = json.load(f)
    assert got == {"token": world.parent_token, "handled": 1}, got
    lines = trace.splitlines()
    assert "(DELAYED)" in lines[0] and "SECCOMP_IOCTL_NOTIF_RECV" in lines[0], trace
    assert "SECCOMP_IOCTL_NOTIF_ID_VALID" in lines[1] and "= -1 ENOENT" in lines[1], trace
    assert len([ln for ln in lines if ln.startswith("socket(")]) == 1, trace


def _procs(cgroup_path):
    with open(os.path.join(cgroup_path, "cgroup.procs")) as f:
        return [int(p) for p in f.read().split()]


def _cmdline(pid):
    with contextlib.suppress(OSError):
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read()
    return b""


def test_t17_a_request_names_no_other_process(request, henv, world, attacker_py):
    """A process outside every build attaches to its request a pidfd of a
    process in build A (and A's cgroup directory): the request has no field
    that names a process, and the broker receives no descriptor.  It
    answers for the process that connected: pass, no join."""
    v = Via(request, "broker", "t17n")
    go, answer = henv.out_path("go"), henv.out_path("answer")
    member = in_background(v.run, holder(go))
    try:
        pid = wait_for(lambda: [int(p) for p in open(
            os.path.join(v.build.cgroup_path, "cgroup.procs")).read().split()], "the member")[0]
        cg = os.open(v.build.cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            r = v.run([USER_PY, attacker_py, "client", henv.private_broker, answer, henv.probe,
                       "--attach-pidfd=%d" % pid, "--attach=%d" % cg],
                      cgroup=henv.untagged_cgroup(), pass_fds=(cg,))
        finally:
            os.close(cg)
    finally:
        with open(go, "w"):
            pass
        member()
    assert r.returncode == 0, r.stderr
    assert _answer_of(answer) == b"pass %s\n" % henv.probe.encode()
    v.said(r": pass %s$" % re.escape(henv.probe))


@pytest.mark.parametrize("via", ["installed", "broker"])
def test_t17_what_an_allow_listed_program_runs(request, henv, world, via):
    """The allow-listed probe (launch mode) executes the unlisted one, which
    connects.  Broker path: an executable not on the allow list gets no
    minted socket, whatever started it -- it reaches only the decoy.  The
    set-user-ID path's documented difference: everything the program runs
    is in the approved namespace (README, "what each path gives a build")."""
    v = Via(request, via, "t17r")
    launched, report = henv.out_path("launch"), henv.out_path()
    r = v.run([v.exe, henv.probe, "launch", launched, "--", henv.unlisted_probe, "report", report,
               "--connect=%d" % world.port])
    assert r.returncode == 0, r.stderr
    assert hs.read_report(launched)["exe"] == henv.probe
    got = hs.read_report(report)
    assert got["exe"] == henv.unlisted_probe
    if v.broker:
        v.said(r": join %s " % re.escape(henv.probe))
        hs.assert_not_joined(got, world.private, world.private_token)
        assert got["connect"] == {"token": world.private_token}, "an unlisted executable was minted"
    else:
        hs.assert_joined(got, world.host_ns, world.parent_token)
