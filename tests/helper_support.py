"""Fixtures and tools for the cgnetns-exec tests (tests/test_helper*.py).

Independent of the Python library on purpose: builds are made by hand here,
exactly as doc/FORMAT.rst describes them (cgroup, pin, trusted.cgnetns tag,
run record), so that the helper is tested against the format, not against
the other implementation of it.

Everything made here is removed again, also when a test fails: cgroups (and
the processes in them), pins and their mounts, records, network namespaces,
servers, the test directory, and the lines added to /etc/cgnetns/allow.
"""

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import socket
import stat
import struct
import subprocess
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# setns(CLONE_NEWNET) in a thread of its own, shared with the stress driver.
from stress.common import in_netns as setns_thread  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER_SRC = os.path.join(REPO, "helper")
# The front builds call (dynamic, not set-user-ID: helper/front.c) and the
# set-user-ID helper it execs where privilege can be gained.
INSTALLED = os.environ.get("CGNETNS_EXEC", "/usr/local/bin/cgnetns-exec")
INSTALLED_HELPER = os.environ.get("CGNETNS_HELPER", "/usr/local/lib/cgnetns/cgnetns-helper")
ALLOW = "/etc/cgnetns/allow"
RUN_DIR = "/run/cgnetns"
PINS = RUN_DIR + "/pins"
NOBODY = 65534
NOGROUP = 65534
NS_GET_ID = 0x8008B70D
TAG = "trusted.cgnetns"
EXIT_REFUSE, EXIT_NOT_USABLE, EXIT_NOT_FOUND = 125, 126, 127
PREFIX = b"cgnetns-exec: "

# --------------------------------------------------------------------------
# small tools

def sh(cmd, check=True, **kw):
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("timeout", 120)
    r = subprocess.run(cmd, **kw)
    if check and r.returncode != 0:
        raise AssertionError("%r failed (%d): %s %s" % (cmd, r.returncode, r.stdout, r.stderr))
    return r


def cgroup2_root():
    """The cgroup2 mount: /sys/fs/cgroup (unified) or /sys/fs/cgroup/unified."""
    mounts = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            mounts[fields[4]] = fields[sep + 1]
    for p in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if mounts.get(p) == "cgroup2":
            return p
    raise AssertionError("no cgroup2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified")


def ns_identity(path):
    """(dev, ino, nsid) of a namespace file."""
    st = os.stat(path)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        buf = fcntl.ioctl(fd, NS_GET_ID, bytes(8))
    finally:
        os.close(fd)
    return st.st_dev, st.st_ino, struct.unpack("Q", buf)[0]


def tag_value(pin_id, dev, ino, nsid):
    return "v1 pin=%s dev=%d ino=%d nsid=%d" % (pin_id, dev, ino, nsid)


def read_log(path):
    with open(path, "rb") as f:
        return f.read().decode(errors="replace")


def wait_broker_serving(proc, log_path, what="broker", timeout=20):
    """Wait until the cgnetnsd PROC logs "serving" to LOG_PATH; fail with
    its log if it exits or takes longer than TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while "serving" not in read_log(log_path):
        assert proc.poll() is None, read_log(log_path)
        assert time.monotonic() < deadline, "%s did not start: %s" % (what, read_log(log_path))
        time.sleep(0.02)


def stop_process(proc, grace=10):
    """SIGTERM to the Popen PROC (by its own pid), SIGKILL after GRACE s; reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def process_table():
    """{pid: (ppid, argv as bytes)} of the processes running now (one that
    ends while it is read is left out)."""
    table = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open("/proc/%s/stat" % d, "rb") as f:
                    data = f.read()
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    argv = f.read().split(b"\0")
                table[int(d)] = (int(data[data.rindex(b")") + 2:].split()[1]), argv)
    return table


def fork_servers(broker_pid, table=None):
    """PIDs of the fork servers (cgnetns-helper --fork-server) of the
    cgnetnsd whose pid is BROKER_PID: its children whose argv says so."""
    table = process_table() if table is None else table
    return [pid for pid, (ppid, argv) in table.items()
            if ppid == broker_pid and b"--fork-server" in argv]


def start_time(pid):
    with open("/proc/%d/stat" % pid, "rb") as f:
        data = f.read()
    return int(data[data.rindex(b")") + 2:].split()[19])


def is_static_elf(path):
    """True when the ELF file has no PT_INTERP (no dynamic loader)."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b"\x7fELF" and data[4] == 2, "not a 64-bit ELF file"
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        ptype, = struct.unpack_from("<I", data, phoff + i * phentsize)
        if ptype == 3:  # PT_INTERP
            return False
    return True


def one_line(stderr):
    """The helper's single message line, or fail."""
    lines = stderr.splitlines()
    assert len(lines) == 1, "expected one stderr line, got %r" % stderr
    assert lines[0].startswith(PREFIX), lines[0]
    return lines[0].decode(errors="replace")


def read_report(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        r = json.load(f)
    r["argv_b"] = [bytes.fromhex(a) for a in r["argv"]]
    r["env_b"] = [bytes.fromhex(a) for a in r["env"]]
    return r


class TokenServer:
    """A TCP server on 127.0.0.1:port in one network namespace that sends its
    token to every client.  port=0 picks one."""

    def __init__(self, token, ns_path=None, port=0):
        self.token = token

        def make():
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen(64)
            return s

        self.sock = setns_thread(ns_path, make) if ns_path else make()
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.2)
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            with c:
                try:
                    c.sendall(self.token.encode() + b"\n")
                except OSError:
                    pass

    def close(self):
        self._stop = True
        self.thread.join(5)
        self.sock.close()


class NetNS:
    """A named network namespace (ip netns) with lo up."""

    def __init__(self, tag):
        self.name = "cgnetns-ht-%s-%s" % (tag, secrets.token_hex(4))
        sh(["ip", "netns", "add", self.name])
        self.path = "/run/netns/" + self.name
        try:
            sh(["ip", "-n", self.name, "link", "set", "lo", "up"])
        except BaseException:
            self.close()
            raise
        self.identity = ns_identity(self.path)

    def close(self):
        if self.name:
            sh(["ip", "netns", "del", self.name], check=False)
            self.name = None


# --------------------------------------------------------------------------
# hand-made builds

class HandBuild:
    """A build made by hand per doc/FORMAT.rst: cgroup <cg2>/cgnetns/<ID>
    owned by root, the approved namespace pinned at <pins>/<ID>, the tag, and
    a locked run record (so that cgnetns-gc leaves it alone)."""

    def __init__(self, env, approved, name="t", pins=PINS, record=True):
        self.env = env
        self.id = "helpertest-%s-%s" % (name, secrets.token_hex(8))
        self.cgroup_path = os.path.join(env.cgroot, "cgnetns", self.id)
        self.pins = pins
        self.pin_path = os.path.join(pins, self.id)
        self.approved = approved
        self.extra_cgroups = []
        self.record_fd = None
        self.record_path = None
        self.mounted = False
        self.pinned_file = False
        try:
            # The locked record first, as cgnetns.build does: a cgnetns-gc
            # running meanwhile never sees this build's cgroup, pin or tag
            # without a live record, and leaves them alone.
            if record and pins == PINS:
                self._record()
            env.ensure_cgnetns_parent()
            os.mkdir(self.cgroup_path)
            self.pin(approved)
            dev, ino, nsid = self.identity = ns_identity(self.pin_path)
            self.set_tag(tag_value(self.id, dev, ino, nsid))
        except BaseException:
            self.close()
            raise

    def _record(self):
        self.record_path = os.path.join(self.pins, self.id + ".json")
        fd = os.open(self.record_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                     | os.O_NOFOLLOW, 0o600)
        self.record_fd = fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        rec = {"version": 1, "id": self.id, "name": "helper-test",
               "cgroup_root": self.env.cgroot,
               "cgroup": "/cgnetns/" + self.id, "owns_cgroup": True,
               "pid": os.getpid(), "start_time": start_time(os.getpid()),
               "created": time.time()}
        os.write(fd, json.dumps(rec).encode())

    def pin(self, ns_path):
        if not os.path.exists(self.pin_path):
            with open(self.pin_path, "x"):
                pass
            self.pinned_file = True
        sh(["mount", "--bind", ns_path, self.pin_path])
        self.mounted = True

    def unpin(self, remove=True):
        if self.mounted:
            sh(["umount", self.pin_path], check=False)
            self.mounted = False
        if remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.pin_path)

    def set_tag(self, value, path=None):
        os.setxattr(path or self.cgroup_path, TAG, value.encode() if isinstance(value, str) else value)

    def tag(self):
        return os.getxattr(self.cgroup_path, TAG).decode()

    def child(self, name, owner=None):
        """A cgroup below this build (made by root, optionally chowned)."""
        p = os.path.join(self.cgroup_path, name)
        os.mkdir(p)
        self.extra_cgroups.append(p)
        if owner is not None:
            chown_cgroup(p, owner)
        return p

    def run(self, argv, **kw):
        return self.env.run(argv, cgroup=self.cgroup_path, **kw)

    def close(self):
        for p in reversed(self.extra_cgroups):
            self.env.remove_cgroup(p)
        if os.path.isdir(self.cgroup_path):
            self.env.remove_cgroup(self.cgroup_path)
        self.unpin()
        if self.record_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.record_path)
        if self.record_fd is not None:
            os.close(self.record_fd)
            self.record_fd = None


def chown_cgroup(path, uid, gid=None):
    """Delegate a cgroup the way systemd does: the directory and its
    cgroup.procs, cgroup.threads and cgroup.subtree_control."""
    gid = uid if gid is None else gid
    os.chown(path, uid, gid)
    for f in ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control"):
        os.chown(os.path.join(path, f), uid, gid)


# --------------------------------------------------------------------------
# the session environment

PROBE_SRC = os.path.join(HELPER_SRC, "testsupport", "probe.c")
PRELOAD_SRC = os.path.join(HELPER_SRC, "testsupport", "preload.c")
PROBE_SH_SRC = os.path.join(HELPER_SRC, "testsupport", "probe.sh")
ALLOW_MARK = "# cgnetns helper tests (pid %d): removed when they end" % os.getpid()


def _suid_capable(path):
    return not (os.statvfs(path).f_flag & os.ST_NOSUID)


class HelperEnv:
    """Made once per session:

    tdir (/run/cgnetns-test-<hex>, root 0755)
      bin/       probe, probe.sh, libcgnetns-test-preload.so: allow-listed
      unlisted/  a copy of the probe that is on no allow list
      out/       0777: reports and markers written by the programs
      etc/cgnetns/allow      the private allow list of the variants
      run/cgnetns/pins       the private pins directory of the variants
      run/cgnetns/cgnetnsd.sock  their broker socket (never listened on)
      v/<name>/cgnetns-exec  helper variants built from helper/ with the
                             private paths: musl, glibc (set-user-ID root),
                             asan (not set-id, run as real root)
    and lines for bin/ appended to the system allow list /etc/cgnetns/allow
    (only those lines are removed again).
    """

    def __init__(self):
        self.cgroot = cgroup2_root()
        self.created = []  # (kind, path) to undo, in reverse
        self.allow_added = False
        self.installed = INSTALLED
        self.helper = INSTALLED_HELPER
        base = "/run" if _suid_capable("/run") else "/var/lib"
        self.tdir = os.path.join(base, "cgnetns-test-" + secrets.token_hex(6))
        self.untagged_cgroups = []

    # -- setup ------------------------------------------------------------
    def setup(self):
        os.umask(0o022)
        os.mkdir(self.tdir, 0o755)
        os.chown(self.tdir, 0, 0)
        self.bin = self._dir("bin")
        self.unlisted = self._dir("unlisted")
        self.out = self._dir("out", 0o777)
        self.etc = self._dir("etc/cgnetns")
        self.private_allow = os.path.join(self.etc, "allow")
        self.private_pins = self._dir("run/cgnetns/pins", 0o700)
        os.chmod(os.path.dirname(self.private_pins), 0o755)
        # a name of its own: the system allow list may hold other sessions'
        # probes, and a bare name picks the first entry with that basename
        self.probe_name = "probe-" + os.path.basename(self.tdir).rsplit("-", 1)[-1]
        self.probe = os.path.join(self.bin, self.probe_name)
        self.probe_sh = os.path.join(self.bin, "probe.sh")
        self.preload = os.path.join(self.bin, "libcgnetns-test-preload.so")
        sh(["gcc", "-O1", "-Wall", "-Werror", "-o", self.probe, PROBE_SRC, "-ldl"])
        sh(["gcc", "-shared", "-fPIC", "-o", self.preload, PRELOAD_SRC])
        shutil.copy(PROBE_SH_SRC, self.probe_sh)
        os.chmod(self.probe_sh, 0o755)
        self.unlisted_probe = os.path.join(self.unlisted, "probe")
        shutil.copy(self.probe, self.unlisted_probe)
        self.private_allow_text = "\n".join(
            ["# private allow list of the helper tests", self.probe, self.probe_sh,
             "/usr/bin/distcc", os.path.join(self.bin, "missing"), ""])
        self.write_private_allow(self.private_allow_text)
        self._build_variants()
        self._extend_system_allow()
        self.ensure_run_dirs()
        return self

    def _dir(self, rel, mode=0o755):
        p = os.path.join(self.tdir, rel)
        os.makedirs(p, mode=0o755, exist_ok=True)
        os.chmod(p, mode)
        return p

    def _build_variants(self):
        bdir = os.path.join(self.tdir, "build")
        # no broker listens on the private socket: the no-privilege path
        # is the same whether or not a cgnetnsd runs on the host
        self.private_broker = os.path.join(os.path.dirname(self.private_pins), "cgnetnsd.sock")
        args = ["make", "-s", "-C", HELPER_SRC, "B=" + bdir,
                "ALLOW_PATH=" + self.private_allow, "PINS_DIR=" + self.private_pins,
                "BROKER_SOCKET=" + self.private_broker]
        sh(args + ["-j2", "musl", "glibc", "asan"], timeout=300)
        self.variants = {}
        for name, mode in (("musl", 0o4755), ("glibc", 0o4755), ("asan", 0o755)):
            d = self._dir("v/" + name)
            dst = os.path.join(d, "cgnetns-exec")
            shutil.copy(os.path.join(bdir, name, "cgnetns-exec"), dst)
            os.chown(dst, 0, 0)
            os.chmod(dst, mode)
            self.variants[name] = dst
        shutil.rmtree(bdir)

    def _extend_system_allow(self):
        """Append our lines to /etc/cgnetns/allow; teardown removes just those."""
        if not os.path.isdir("/etc/cgnetns"):
            os.makedirs("/etc/cgnetns", 0o755)
            self.created.append(("dir", "/etc/cgnetns"))
        if not os.path.exists(ALLOW):
            with open(ALLOW, "x") as f:
                f.write("# cgnetns-exec allow list\n")
            os.chmod(ALLOW, 0o644)
            self.created.append(("file", ALLOW))
        lines = [ALLOW_MARK, self.probe, self.probe_sh, os.path.join(self.bin, "missing")]
        with open(ALLOW, "a") as f:
            f.write("\n".join(lines) + "\n")
        self.allow_lines = lines
        self.allow_added = True

    def _restore_system_allow(self):
        if not self.allow_added or not os.path.exists(ALLOW):
            return
        with open(ALLOW) as f:
            kept = [l for l in f.read().splitlines(True) if l.rstrip("\n") not in self.allow_lines]
        st = os.stat(ALLOW)
        tmp = ALLOW + ".helpertest"
        with open(tmp, "w") as f:
            f.write("".join(kept))
        os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        os.replace(tmp, ALLOW)
        self.allow_added = False

    def ensure_run_dirs(self):
        if not os.path.isdir(RUN_DIR):
            os.makedirs(RUN_DIR, 0o755)
            self.created.append(("dir", RUN_DIR))
        if not os.path.isdir(PINS):
            os.mkdir(PINS, 0o700)
            self.created.append(("dir", PINS))

    def ensure_cgnetns_parent(self):
        p = os.path.join(self.cgroot, "cgnetns")
        if not os.path.isdir(p):
            with contextlib.suppress(FileExistsError):
                os.mkdir(p)
                self.created.append(("cgroup", p))

    def write_private_allow(self, text, mode=0o644):
        tmp = self.private_allow + ".tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        if os.path.isdir(self.private_allow) and not os.path.islink(self.private_allow):
            os.rmdir(self.private_allow)
        os.replace(tmp, self.private_allow)

    # -- teardown ---------------------------------------------------------
    def teardown(self):
        errors = []
        for fn in (self._restore_system_allow, self._remove_untagged, self._remove_tdir):
            try:
                fn()
            except Exception as e:  # keep cleaning, report at the end
                errors.append(e)
        for kind, path in reversed(self.created):
            try:
                if kind == "cgroup":
                    os.rmdir(path)  # only if empty: other builds may live there
                elif kind == "dir":
                    os.rmdir(path)
                elif kind == "file":
                    with open(path) as f:
                        rest = [l for l in f if l.strip() and not l.startswith("#")]
                    if not rest:
                        os.unlink(path)
            except OSError:
                pass  # in use by someone else now: leave it
        if errors:
            raise errors[0]

    def _remove_untagged(self):
        for p in reversed(self.untagged_cgroups):
            self.remove_cgroup(p)

    def _remove_tdir(self):
        nosuid = os.path.join(self.tdir, "nosuid")
        if os.path.ismount(nosuid):
            sh(["umount", nosuid], check=False)
        shutil.rmtree(self.tdir)

    def remove_cgroup(self, path, kill=True):
        """Kill what is in it (and below), wait until empty, rmdir."""
        if not os.path.isdir(path):
            return
        for child in sorted((os.path.join(path, d) for d in os.listdir(path)
                             if os.path.isdir(os.path.join(path, d))), reverse=True):
            self.remove_cgroup(child, kill)
        if kill:
            with contextlib.suppress(OSError):
                with open(os.path.join(path, "cgroup.kill"), "w") as f:
                    f.write("1")
        deadline = time.monotonic() + 10
        while True:
            try:
                os.rmdir(path)
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    # -- making things ----------------------------------------------------
    def untagged_cgroup(self, owner=None):
        p = os.path.join(self.cgroot, "helpertest-untagged-" + secrets.token_hex(6))
        os.mkdir(p)
        self.untagged_cgroups.append(p)
        if owner is not None:
            chown_cgroup(p, owner)
        return p

    def out_path(self, name="report"):
        return os.path.join(self.out, "%s-%s.json" % (name, secrets.token_hex(6)))

    def attacker_dir(self):
        """A directory owned by nobody (the attacker's own files)."""
        p = os.path.join(self.out, "attacker-" + secrets.token_hex(4))
        os.mkdir(p, 0o755)
        os.chown(p, NOBODY, NOGROUP)
        return p

    # -- running ----------------------------------------------------------
    def run(self, argv, cgroup=None, netns=None, user=NOBODY, groups=(),
            nnp=False, unshare=(), env=None, pass_fds=(), cwd=None, timeout=60,
            stdin=subprocess.DEVNULL, pre=(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE):
        """Run argv as the attacker: placed in `cgroup` (by root, as cgnetns-run
        would), then in network namespace `netns` (a path), then `unshare`
        (e.g. ["-C"] as root), then as `user` with `groups` (setpriv), with
        no_new_privs when `nnp`; `pre` is put right before argv (after the
        drop, e.g. ["unshare", "-Ur"])."""
        cmd = list(pre) + list(argv)
        if user is not None:
            sp = ["setpriv", "--reuid=%d" % user, "--regid=%d" % (NOGROUP if user == NOBODY else user)]
            sp += ["--groups=" + ",".join(map(str, groups))] if groups else ["--clear-groups"]
            if nnp:
                sp.append("--no-new-privs")
            cmd = sp + ["--"] + cmd
        if unshare:
            cmd = ["unshare"] + list(unshare) + ["--"] + cmd
        if netns:
            cmd = ["nsenter", "--net=" + netns, "--"] + cmd
        if cgroup:
            cmd = ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" || exit 99; exec "$@"',
                   cgroup] + cmd
        if env is None:
            env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
        r = subprocess.run(cmd, env=env, stdout=stdout, stderr=stderr,
                           stdin=stdin, pass_fds=pass_fds, cwd=cwd or self.out,
                           timeout=timeout)
        assert r.returncode != 99, "could not enter cgroup %s: %r" % (cgroup, r.stderr)
        return r


_ENV = {"env": None, "users": 0}


@pytest.fixture(scope="session")
def henv():
    """The session's HelperEnv (shared by every test_helper*.py module)."""
    if os.geteuid() != 0:
        pytest.fail("the helper tests need root")
    for path in (INSTALLED, INSTALLED_HELPER):
        assert os.path.exists(path), "%s is not installed (run make install first)" % path
    st = os.stat(INSTALLED_HELPER)
    assert st.st_uid == 0 and st.st_mode & stat.S_ISUID, \
        "%s is not set-user-ID root (mode %o)" % (INSTALLED_HELPER, st.st_mode)
    if _ENV["env"] is None:
        e = HelperEnv()
        try:
            e.setup()
        except BaseException:
            e.teardown()
            raise
        _ENV["env"] = e
    _ENV["users"] += 1
    try:
        yield _ENV["env"]
    finally:
        _ENV["users"] -= 1
        if _ENV["users"] == 0:
            e, _ENV["env"] = _ENV["env"], None
            e.teardown()


@pytest.fixture
def builds(henv):
    """Factory: builds(approved_ns_path=None, name=..., pins=...) -> HandBuild;
    every build made is removed at the end of the test."""
    made = []

    def make(approved="/proc/self/ns/net", name="t", pins=PINS, record=True):
        b = HandBuild(henv, approved, name=name, pins=pins, record=record)
        made.append(b)
        return b

    try:
        yield make
    finally:
        errs = []
        for b in reversed(made):
            try:
                b.close()
            except Exception as e:
                errs.append(e)
        if errs:
            raise errs[0]


@pytest.fixture
def netns():
    """Factory: netns(tag) -> NetNS (lo up); all deleted at the end."""
    made = []

    def make(tag="n"):
        n = NetNS(tag)
        made.append(n)
        return n

    try:
        yield make
    finally:
        for n in reversed(made):
            n.close()


@pytest.fixture
def servers():
    """Factory: servers(token, ns_path=None, port=0) -> TokenServer."""
    made = []

    def make(token, ns_path=None, port=0):
        s = TokenServer(token, ns_path, port)
        made.append(s)
        return s

    try:
        yield make
    finally:
        for s in made:
            s.close()


class World:
    """The usual scene: the host namespace approved by build `a`, with a
    server sending "PARENT-<hex>" there; the build's private namespace
    `private` (lo up) with a decoy server on the same port sending
    "PRIVATE-<hex>".  Reaching the parent's token proves the join."""

    def __init__(self, henv, builds, netns, servers):
        self.henv = henv
        self.parent_token = "PARENT-" + secrets.token_hex(4)
        self.private_token = "PRIVATE-" + secrets.token_hex(4)
        self.server = servers(self.parent_token)
        self.port = self.server.port
        self.private = netns("priv")
        servers(self.private_token, self.private.path, self.port)
        self.a = builds(name="a")
        self.host_ns = ns_identity("/proc/self/ns/net")

    def probe_argv(self, out, helper=None, *extra):
        return [helper or self.henv.installed, self.henv.probe, "report", out,
                "--connect=%d" % self.port] + list(extra)


@pytest.fixture
def world(henv, builds, netns, servers):
    return World(henv, builds, netns, servers)


def assert_not_run(path):
    assert not os.path.exists(path), "the program ran: %s exists" % path


def assert_joined(report, ns_identity_, token):
    assert report is not None, "the program did not run"
    assert (report["netns"]["dev"], report["netns"]["ino"]) == tuple(ns_identity_[:2])
    assert report["connect"] == {"token": token}


def assert_minted(report, private_ns, token):
    """The broker path's join: the program ran in its own (private) network
    namespace, unprivileged, and its AF_INET socket, minted by the
    supervisor, reached the approved namespace's server."""
    assert report is not None, "the program did not run"
    assert (report["netns"]["dev"], report["netns"]["ino"]) == tuple(private_ns.identity[:2]), \
        "the program left its own network namespace"
    assert report["connect"] == {"token": token}, report.get("connect")
    assert report["status"]["CapEff"] == "0000000000000000"


def assert_not_joined(report, private_ns, private_token=None, unprivileged=True):
    """Ran, but unchanged: in its own (private) namespace, unprivileged
    (unprivileged=False: in the caller's own user namespace, whose
    capabilities are its own)."""
    assert report is not None, "the program did not run"
    assert (report["netns"]["dev"], report["netns"]["ino"]) == tuple(private_ns.identity[:2])
    if private_token is not None and "connect" in report:
        assert report["connect"] == {"token": private_token}
    if unprivileged:
        assert report["status"]["CapEff"] == "0000000000000000"
        assert report["status"]["CapPrm"] == "0000000000000000"
