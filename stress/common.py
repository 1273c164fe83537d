"""Shared pieces of the stress runs and of the tests built on them: the test
directory, the allow-list edit, namespaces, the netprobe and token servers
that tell where a socket was made, a real cgnetnsd (private socket, or the
system one once it is free), and scoped snapshots of host state."""

import contextlib
import ctypes
import os
import secrets
import selectors
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from cgnetns import paths  # noqa: E402

PY = sys.executable
USER_PY = "/usr/bin/python3"       # unprivileged workers: stdlib only
# The front builds call (dynamic, not set-user-ID) and the set-user-ID helper
# it execs where privilege can be gained; cgnetnsd runs the helper's
# --supervise mode for each connection.
HELPER = os.environ.get("CGNETNS_EXEC", paths.FRONT)
SUID_HELPER = os.environ.get("CGNETNS_HELPER", paths.HELPER)
ALLOW = paths.ALLOW_PATH
PROBE = "/usr/bin/readlink"        # the set-user-ID path's probe: readlink /proc/self/ns/net
SOCKET = paths.BROKER_SOCKET       # the socket the installed front asks
LOCK = paths.BROKER_LOCK
PINS = paths.PINS_DIR
HERE = os.path.dirname(os.path.abspath(__file__))
WORKER_SRC = os.path.join(HERE, "worker.py")
NETPROBE_SRC = os.path.join(REPO, "helper", "testsupport", "netprobe.c")
# The broker's deadline for one request (helper/protocol.h); it kills a
# helper still running after twice that.
from cgnetns.broker import HANDSHAKE_SECONDS  # noqa: E402


def repo_env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("CGNETNS_FAULT_POINT", None)
    env.update(extra)
    return env


RUN = [PY, "-m", "cgnetns.cli.run"]
GC = [PY, "-m", "cgnetns.cli.gc"]
DAEMON = [PY, "-m", "cgnetns.cli.broker"]


def sh(cmd, check=True, **kw):
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("timeout", 120)
    r = subprocess.run(cmd, **kw)
    if check and r.returncode != 0:
        raise RuntimeError("%r failed (%d): %s %s" % (cmd, r.returncode, r.stdout, r.stderr))
    return r


class Cleanup:
    """A stack of undo steps, run in reverse; every step runs even when one fails."""

    def __init__(self):
        self.steps = []

    def add(self, fn, *a):
        self.steps.append((fn, a))

    def close(self):
        errors = []
        while self.steps:
            fn, a = self.steps.pop()
            try:
                fn(*a)
            except Exception as e:
                errors.append("%s: %s" % (getattr(fn, "__name__", fn), e))
        return errors

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        errs = self.close()
        if errs and exc[0] is None:
            raise RuntimeError("cleanup failed: %s" % "; ".join(errs))
        return False


def make_tdir(cleanup, tag="stress"):
    """A root-owned 0755 directory that unprivileged workers can read; out/ 0777."""
    d = "/run/cgnetns-%s-%s" % (tag, secrets.token_hex(5))
    os.mkdir(d, 0o755)
    os.chmod(d, 0o755)
    cleanup.add(shutil.rmtree, d, True)
    out = os.path.join(d, "out")
    os.mkdir(out)
    os.chmod(out, 0o777)
    shutil.copy(WORKER_SRC, os.path.join(d, "worker.py"))
    os.chmod(os.path.join(d, "worker.py"), 0o644)
    return d


def _rewrite_allow(keep_fn):
    with open(ALLOW) as f:
        lines = f.read().splitlines(True)
    kept = [l for l in lines if keep_fn(l)]
    if kept == lines:
        return
    st = os.stat(ALLOW)
    tmp = ALLOW + ".stress-%d" % os.getpid()
    with open(tmp, "w") as f:
        f.write("".join(kept))
    os.chown(tmp, st.st_uid, st.st_gid)
    os.chmod(tmp, stat.S_IMODE(st.st_mode))
    os.replace(tmp, ALLOW)


def allow_probe(cleanup, programs=(PROBE,)):
    """Make sure PROGRAMS are on /etc/cgnetns/allow; the lines we add are removed again."""
    os.makedirs(os.path.dirname(ALLOW), 0o755, exist_ok=True)
    if not os.path.exists(ALLOW):
        with open(ALLOW, "x") as f:
            f.write("# cgnetns-exec allow list\n")
        os.chmod(ALLOW, 0o644)
        cleanup.add(os.unlink, ALLOW)
    with open(ALLOW) as f:
        present = {l.strip() for l in f}
    mark = "# cgnetns stress (pid %d, %s): removed when it ends" % (os.getpid(),
                                                                  secrets.token_hex(3))
    added = [p for p in programs if p not in present]
    if not added:
        return
    with open(ALLOW, "a") as f:
        f.write("\n".join([mark] + added) + "\n")
    gone = set([mark] + added)
    cleanup.add(_rewrite_allow, lambda l: l.rstrip("\n") not in gone)


def add_netns(cleanup, prefix):
    """A named network namespace (ip netns) with lo up; deleted at cleanup."""
    name = "%s-%s" % (prefix, secrets.token_hex(4))
    sh(["ip", "netns", "add", name])
    cleanup.add(sh, ["ip", "netns", "del", name], False)
    sh(["ip", "-n", name, "link", "set", "lo", "up"])
    return name, "/run/netns/" + name


def ns_ino(path):
    return os.stat(path).st_ino


def fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except FileNotFoundError:
        return None


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return None


def pids_in_netns(inos):
    """PIDs whose network namespace is one of INOS."""
    want = {"net:[%d]" % i for i in inos}
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if os.readlink("/proc/%s/ns/net" % d) in want:
                found.append(int(d))
        except OSError:
            pass
    return found


def pids_matching(text):
    """PIDs whose command line contains TEXT (bytes or str)."""
    text = os.fsencode(text)
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                if text in f.read():
                    found.append(int(d))
        except OSError:
            pass
    return found


def cgnetns_state(prefix):
    """cgnetns state on the host that belongs to builds whose id starts with PREFIX:
    build cgroups, pins, records, mounts under /run/cgnetns."""
    from cgnetns import cgroups, namespaces
    root = cgroups.find_cgroup2()
    base = os.path.join(root, cgroups.CGNETNS_SUBTREE)
    cgs = set()
    if os.path.isdir(base):
        cgs = {d for d in os.listdir(base) if d.startswith(prefix)}
    pins = set()
    if os.path.isdir(PINS):
        pins = {n for n in os.listdir(PINS) if n.startswith(prefix)}
    mounts = {m for m in namespaces.pin_mounts()
              if os.path.basename(m).startswith(prefix)}
    return {"cgroups": cgs, "pins": {p for p in pins if not p.endswith(".json")},
            "records": {p for p in pins if p.endswith(".json")}, "mounts": mounts}


# ---------------------------------------------------------------------------
# where a socket was made: the netprobe and token servers

def build_netprobe(cleanup, tdir):
    """helper/testsupport/netprobe.c compiled into TDIR/bin (root-owned, 0755)
    and put on the allow list (the line is removed again at cleanup)."""
    d = os.path.join(tdir, "bin")
    os.makedirs(d, 0o755, exist_ok=True)
    os.chmod(d, 0o755)
    path = os.path.join(d, "netprobe")
    sh(["gcc", "-O1", "-Wall", "-Werror", "-o", path, NETPROBE_SRC])
    os.chmod(path, 0o755)
    allow_probe(cleanup, (path,))
    return path


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def in_netns(ns_path, fn):
    """fn() in a thread that has joined the network namespace NS_PATH (a
    netns file, a pin, /proc/PID/ns/net); setns changes that thread only."""
    result = {}

    def body():
        try:
            fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, os.strerror(e), ns_path)
            finally:
                os.close(fd)
            result["value"] = fn()
        except BaseException as e:  # raised in the caller
            result["error"] = e

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


class TokenServers:
    """TCP servers on 127.0.0.1 in any number of network namespaces, served by
    one thread: each sends its token and a newline to every client and closes.
    A connection that reaches a token proves in which namespace its socket was
    made.  Stopped (every socket closed) at cleanup."""

    def __init__(self, cleanup):
        self.sel = selectors.DefaultSelector()
        self.socks = []
        self._stop = False
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        cleanup.add(self.close)

    def add(self, token, ns_path=None, port=0):
        """A server sending TOKEN in NS_PATH (None: ours) on PORT (0: any
        free one); returns the port."""
        def make():
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen(4096)
            s.setblocking(False)
            return s
        s = in_netns(ns_path, make) if ns_path else make()
        self.socks.append(s)
        self.sel.register(s, selectors.EVENT_READ, (token.encode() + b"\n"))
        os.write(self._wake_w, b"x")
        return s.getsockname()[1]

    def _serve(self):
        while not self._stop:
            for key, _ in self.sel.select(timeout=1):
                if key.data is None:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 4096)
                    continue
                for _ in range(64):
                    try:
                        c, _ = key.fileobj.accept()
                    except (BlockingIOError, InterruptedError, OSError):
                        break
                    try:
                        c.send(key.data)   # a few bytes into an empty buffer
                    except OSError:
                        pass
                    c.close()

    def close(self):
        self._stop = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self.thread.join(10)
        for s in self.socks:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(s)
            s.close()
        self.socks = []
        self.sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def read_json(path):
    import json
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


# ---------------------------------------------------------------------------
# cgnetnsd

def listening_on(path):
    """True when a socket listens on the unix socket PATH (read from
    /proc/net/unix: nothing connects, so no broker serves a probe)."""
    try:
        with open("/proc/net/unix") as f:
            next(f)
            for line in f:
                fields = line.split()
                if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & 0x10000:
                    return True
    except (OSError, ValueError):
        pass
    return False


def lock_holders(lock_path):
    """PIDs holding a flock on LOCK_PATH (read from /proc/locks, without
    taking the lock, which could make a broker starting now fail)."""
    try:
        st = os.stat(lock_path)
    except FileNotFoundError:
        return []
    key = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    pids = []
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if "FLOCK" in fields and key in fields:
                i = fields.index(key)
                pids.append(int(fields[i - 1]))
    return pids


def system_broker_running():
    """True when something listens on the system socket or holds its lock."""
    return listening_on(SOCKET) or bool(lock_holders(LOCK))


def lock_busy():
    return bool(lock_holders(LOCK))


def wait_system_socket_free(timeout=20):
    """Wait (polling) until no broker serves the system socket: other tests
    on this machine may start and stop one briefly.  Raise with who holds it
    when it is still busy after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while system_broker_running():
        if time.monotonic() > deadline:
            who = []
            for pid in set(lock_holders(LOCK)):
                with contextlib.suppress(OSError):
                    with open("/proc/%d/cmdline" % pid, "rb") as f:
                        who.append("pid %d: %s" % (pid, f.read().replace(b"\0", b" ")
                                                   .decode(errors="replace").strip()))
            raise RuntimeError(
                "the system broker socket %s is still in use after %ds (%s): this run "
                "needs its own cgnetnsd there (the installed cgnetns-exec asks that "
                "socket); stop the other broker and run again"
                % (SOCKET, timeout, "; ".join(who) or "a listener without the lock"))
        time.sleep(0.2)


class Daemon:
    """A real cgnetnsd of this checkout serving the installed helper's
    --supervise mode.  socket_path=None: the system socket (the front's
    compiled-in path; call wait_system_socket_free() first); otherwise a
    private one (its lock is PATH.lock, so it never competes with a system
    broker).  Stopped by its pid at cleanup."""

    def __init__(self, cleanup, socket_path=None, tdir=None, extra=(), log=None,
                 helper=None):
        self.socket_path = socket_path or SOCKET
        self.lock_path = LOCK if self.socket_path == SOCKET else self.socket_path + ".lock"
        cmd = DAEMON + ["--socket", self.socket_path, "--helper", helper or SUID_HELPER] + list(extra)
        if log is None:
            log = os.path.join(tdir, "cgnetnsd-%s.log" % secrets.token_hex(3)) if tdir else None
        self.log_path = log
        self.log = open(log or os.devnull, "wb")
        self.proc = subprocess.Popen(cmd, env=repo_env(), stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL, cwd="/")
        self.pid = self.proc.pid
        cleanup.add(self.stop)
        deadline = time.monotonic() + 20
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError("cgnetnsd exited with %d: %s" % (self.proc.returncode,
                                                                   self.text()[-500:]))
            if time.monotonic() > deadline:
                raise RuntimeError("cgnetnsd did not start listening on %s" % self.socket_path)
            time.sleep(0.02)

    def _ready(self):
        if self.log_path:
            return "serving " in self.text()
        return listening_on(self.socket_path) and self.pid in lock_holders(self.lock_path)

    def text(self):
        if not self.log_path:
            return ""
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def alive(self):
        return self.proc.poll() is None

    def fds(self):
        return fd_count(self.proc.pid)

    def rss(self):
        return rss_kib(self.proc.pid)

    def children(self):
        """PIDs of the daemon's children: helpers not yet reaped."""
        try:
            with open("/proc/%d/task/%d/children" % (self.pid, self.pid)) as f:
                return [int(x) for x in f.read().split()]
        except FileNotFoundError:
            return []

    def pending(self):
        """Requests the daemon still counts: helpers not yet reaped, and
        pidfds not yet closed."""
        n = len(self.children())
        try:
            for fd in os.listdir("/proc/%d/fd" % self.pid):
                with contextlib.suppress(OSError):
                    if os.readlink("/proc/%d/fd/%s" % (self.pid, fd)) == "anon_inode:[pidfd]":
                        n += 1
        except FileNotFoundError:
            pass
        return n

    def idle_fds(self, timeout=2 * HANDSHAKE_SECONDS + 5):
        """The fd count once no request is pending."""
        deadline = time.monotonic() + timeout
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.fds()

    def settle_fds(self, target, timeout=2 * HANDSHAKE_SECONDS + 5):
        """Wait until the daemon's fd count is back at TARGET or below, with
        no helper left to reap; return the last count seen."""
        deadline = time.monotonic() + timeout
        n = self.fds()
        while n is not None and (n > target or self.pending()) and time.monotonic() < deadline:
            time.sleep(0.05)
            n = self.fds()
        return n

    def kill(self):
        """SIGKILL, as a crash would; the socket file stays until stop()."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.log.close()
        # killed: the socket file stays; remove it when no broker holds the
        # lock and nothing listens there (another one may have started since)
        if (os.path.exists(self.socket_path) and not lock_holders(self.lock_path)
                and not listening_on(self.socket_path)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
