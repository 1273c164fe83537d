"""Shared pieces of the stress runs: the test directory, the allow-list edit,
namespaces, a private cgnetnsd, and scoped snapshots of host state."""

import contextlib
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
USER_PY = "/usr/bin/python3"       # unprivileged workers: stdlib only
HELPER = os.environ.get("CGNETNS_EXEC", "/usr/local/bin/cgnetns-exec")
ALLOW = "/etc/cgnetns/allow"
PROBE = "/usr/bin/readlink"        # the probe: readlink /proc/self/ns/net
SOCKET = "/run/cgnetns/cgnetnsd.sock"
PINS = "/run/cgnetns/pins"
WORKER_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")


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
    mark = "# cgnetns stress (pid %d): removed when it ends" % os.getpid()
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


class Daemon:
    """A real cgnetnsd.  socket=None: the system socket (the helper's compiled-in
    path); otherwise a private one (its lock is PATH.lock, so it never competes
    with a system broker)."""

    def __init__(self, cleanup, socket_path=None, tdir=None, extra=(), log=None):
        self.socket_path = socket_path or SOCKET
        cmd = DAEMON + ["--socket", self.socket_path, "--helper", HELPER] + list(extra)
        self.log = open(log or os.devnull, "wb")
        self.proc = subprocess.Popen(cmd, env=repo_env(), stdout=self.log,
                                     stderr=self.log, stdin=subprocess.DEVNULL)
        cleanup.add(self.stop)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.socket_path) or not self._can_connect():
            if self.proc.poll() is not None:
                raise RuntimeError("cgnetnsd exited with %d" % self.proc.returncode)
            if time.monotonic() > deadline:
                raise RuntimeError("cgnetnsd did not start listening on %s" % self.socket_path)
            time.sleep(0.05)
        self.pid = self.proc.pid

    def _can_connect(self):
        import socket
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.socket_path)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def alive(self):
        return self.proc.poll() is None

    def fds(self):
        return fd_count(self.proc.pid)

    def rss(self):
        return rss_kib(self.proc.pid)

    def settle_fds(self, target, timeout=10):
        """Wait until the daemon's fd count is back at TARGET (dropped connections
        are closed on its next loop turn); return the last count seen."""
        deadline = time.monotonic() + timeout
        n = self.fds()
        while n != target and time.monotonic() < deadline:
            time.sleep(0.1)
            n = self.fds()
        return n

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        # killed (a test does that): the socket file stays; remove it when
        # no broker holds the lock and nothing listens there
        if (os.path.exists(self.socket_path) and not lock_busy()
                and not self._can_connect()):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)


def system_broker_running():
    """True when something accepts connections on the system socket."""
    import socket
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(SOCKET)
        return True
    except OSError:
        return False
    finally:
        s.close()


def lock_busy():
    import fcntl
    try:
        fd = os.open("/run/cgnetns/cgnetnsd.lock", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
