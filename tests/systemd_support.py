"""Real systemd as PID 1 in a container, for tests/test_systemd.py.

* ``debootstrap_root()``: a minimal Debian bookworm root with systemd, dbus,
  python3 and cgnetns's dependencies, built once with debootstrap and cached in
  /var/cache/cgnetns-test/<key>/root (key: suite, variant, package list).  The
  cache is never modified afterwards: each container runs on an overlayfs whose
  upper directory is private to it.  ``ArchiveUnreachable`` means that
  debootstrap could not download (the only reason the test may skip).
* ``Container``: installs cgnetns into the upper directory (Python package for
  Debian's /usr/bin/python3, commands, the static setuid helper, contrib units,
  tmpfiles.d, an allow list with a probe), boots it with systemd-nspawn from a
  cgroup of its own (both the cgroup2 and the name=systemd hierarchies), runs
  commands inside with nsenter + systemd-run, and stops it with systemctl
  poweroff (SIGKILL to nspawn by PID when that does not end it).  ``close()``
  removes everything it made -- cgroups, the overlay (it lives in a private
  mount namespace that dies with nspawn), directories -- also after failures.

Measured here (FIELD-NOTES.md, "Real systemd in a container"): ~60 s cold
debootstrap, ~1 s per boot.
"""

import ctypes
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

SUITE = "bookworm"
VARIANT = "minbase"
# CGNETNS_TEST_MIRROR: another mirror (a local cache); the root is the same.
MIRROR = os.environ.get("CGNETNS_TEST_MIRROR", "http://deb.debian.org/debian")
# systemd + dbus to boot; python3 and cgnetns's dependencies from Debian;
# attr (getfattr) to read trusted.delegate; iproute2 to show the build's links.
INCLUDE = ("systemd", "dbus", "python3", "attr", "python3-pyroute2", "python3-psutil",
           "iproute2")
CACHE_DIR = os.environ.get("CGNETNS_TEST_CACHE", "/var/cache/cgnetns-test")
DONE_MARK = ".cgnetns-test-complete"

# debootstrap's messages when it cannot download (archive or network down)
_DOWNLOAD_FAILURES = re.compile(
    r"Failed getting release file|Failed getting release signature file|"
    r"Couldn't download|Could not resolve|Temporary failure resolving|"
    r"Couldn't download packages|Failed to connect|Connection timed out|"
    r"Network is unreachable|Connection refused|No route to host|"
    r"Couldn't retrieve|Failed getting release", re.I)

PY_SITE = "/usr/local/lib/python3/dist-packages"  # on Debian python3's sys.path


class ArchiveUnreachable(Exception):
    """debootstrap could not download from the Debian archive."""


class ContainerError(Exception):
    pass


def cache_key(include=INCLUDE):
    text = "%s %s %s" % (SUITE, VARIANT, ",".join(sorted(include)))
    return "%s-%s-%s" % (SUITE, VARIANT, hashlib.sha256(text.encode()).hexdigest()[:12])


def _archive_reachable(timeout=15):
    try:
        with urllib.request.urlopen("%s/dists/%s/Release" % (MIRROR, SUITE), timeout=timeout) as r:
            return r.status == 200
    except Exception:
        return False


def debootstrap_root(include=INCLUDE, log=None):
    """Path of the cached root, building it first when there is none."""
    base = os.path.join(CACHE_DIR, cache_key(include))
    root = os.path.join(base, "root")
    if os.path.exists(os.path.join(base, DONE_MARK)):
        return root
    os.makedirs(base, mode=0o755, exist_ok=True)
    # One builder at a time; the others wait for it and use its result.
    with open(os.path.join(base, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(base, DONE_MARK)):
            return root
        # what an earlier build that died half-way left (maybe with mounts)
        for name in os.listdir(base):
            if name == "root" or name.startswith("building-"):
                _remove_tree(os.path.join(base, name))
        tmp = tempfile.mkdtemp(prefix="building-", dir=base)
        argv = ["debootstrap", "--variant=" + VARIANT, "--include=" + ",".join(include),
                SUITE, tmp, MIRROR]
        t0 = time.monotonic()
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=dict(os.environ, PATH=SYSTEM_PATH, LANG="C.UTF-8"))
        if r.returncode != 0:
            out = r.stdout
            debootlog = os.path.join(tmp, "debootstrap", "debootstrap.log")
            if os.path.exists(debootlog):
                with open(debootlog, errors="replace") as f:
                    out += f.read()
            _remove_tree(tmp)
            if _DOWNLOAD_FAILURES.search(out) or not _archive_reachable():
                raise ArchiveUnreachable("debootstrap could not download from %s: %s"
                                         % (MIRROR, out.strip().splitlines()[-1:]))
            raise ContainerError("debootstrap failed (%d):\n%s" % (r.returncode, out[-4000:]))
        os.rename(tmp, root)
        with open(os.path.join(base, DONE_MARK), "w") as f:
            f.write("debootstrap %s in %.0f s\n" % (" ".join(argv[:-2]), time.monotonic() - t0))
        if log:
            log("built %s in %.0f s" % (root, time.monotonic() - t0))
    return root


def _mounts_below(path):
    """Mount points at or below PATH in this mount namespace, deepest first."""
    path = os.path.realpath(path)
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == path or mp.startswith(path + "/"):
                out.append(mp)
    return sorted(out, key=len, reverse=True)


def _remove_tree(path):
    """rm -rf PATH after unmounting what is mounted below it (debootstrap mounts
    /proc and /sys in its target; a killed run leaves them)."""
    if not os.path.lexists(path):
        return
    for mp in _mounts_below(path):
        if subprocess.run(["umount", mp], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mp], capture_output=True)
    left = _mounts_below(path)
    if left:
        raise ContainerError("cannot unmount %s" % left)
    shutil.rmtree(path)


def _python_version(root):
    """'3.11' for the python3 in ROOT (its /usr/lib/python3.X directory)."""
    for name in sorted(os.listdir(os.path.join(root, "usr", "lib")), reverse=True):
        m = re.fullmatch(r"python(3\.\d+)", name)
        if m and os.path.isdir(os.path.join(root, "usr", "lib", name, "encodings")):
            return m.group(1)
    raise ContainerError("no python3 in %s" % root)


PROBE = "/usr/local/libexec/cgnetns-test/probe"
NETPROBE = "/usr/local/libexec/cgnetns-test/netprobe"
PROBE_SCRIPT = """#!/bin/sh
# cgnetns container test probe: where did cgnetns-exec start me?
echo "netns=$(readlink /proc/self/ns/net) uid=$(id -u) \\
nnp=$(sed -n 's/^NoNewPrivs:[[:space:]]*//p' /proc/self/status) \\
cgroup=$(sed -n 's/^0:://p' /proc/self/cgroup)"
"""


class Container:
    """Debian's systemd booted as PID 1 by systemd-nspawn on an overlay of the
    cached root, with cgnetns installed.  Use as a context manager."""

    def __init__(self, root, unified=True, boot_timeout=60, log=print):
        self.lower = root
        self.unified = unified
        # where the container's own cgroup2 tree is mounted, seen from inside
        self.cg2 = "/sys/fs/cgroup" if unified else "/sys/fs/cgroup/unified"
        self.boot_timeout = boot_timeout
        self.log = log
        self.tag = secrets.token_hex(4)
        self.name = "cgnetns-t-" + self.tag
        self.dir = None
        self.cgroups = []        # (hierarchy mount, path) we made
        self.nspawn = None
        self.leader = None
        self.console = None
        self.timings = {}

    # -- set-up ----------------------------------------------------------------
    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self):
        t0 = time.monotonic()
        os.makedirs(CACHE_DIR, mode=0o755, exist_ok=True)
        sweep_stale(self.log)
        # cgroups first: a ct-* directory without them is a dead run's (sweep_stale)
        self._make_cgroups()
        self.dir = tempfile.mkdtemp(prefix="ct-%s-" % self.tag, dir=CACHE_DIR)
        self.upper = os.path.join(self.dir, "upper")
        self.ovl_work = os.path.join(self.dir, "work")
        self.merged = os.path.join(self.dir, "merged")
        for d in (self.upper, self.ovl_work, self.merged):
            os.mkdir(d, 0o755)
        os.chmod(self.upper, 0o755)  # the container's "/" takes the upper dir's mode
        self.install(self.upper)
        self.timings["install"] = time.monotonic() - t0
        self._boot()
        self.timings["boot"] = time.monotonic() - t0 - self.timings["install"]

    def install(self, dest):
        """cgnetns as `make install` puts it, for the container's /usr/bin/python3."""
        def sh(argv):
            r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=REPO, env=dict(os.environ, PATH=SYSTEM_PATH))
            if r.returncode != 0:
                raise ContainerError("%s failed:\n%s" % (" ".join(argv), r.stdout))
        # the Python package, where Debian's python3 finds it
        site = os.path.join(dest, "usr/local/lib/python%s/dist-packages"
                            % _python_version(self.lower))
        os.makedirs(site, 0o755)
        shutil.copytree(os.path.join(REPO, "cgnetns"), os.path.join(site, "cgnetns"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        # commands (shebang /usr/bin/python3), contrib units, tmpfiles.d
        sh(["make", "-s", "-C", REPO, "install-scripts", "install-contrib",
            "DESTDIR=" + dest, "PYEXE=/usr/bin/python3", "PREFIX=/usr/local"])
        # the front (dynamic) and the static helper, setuid root
        sh(["make", "-s", "-C", os.path.join(REPO, "helper"), "install-helper",
            "DESTDIR=" + dest, "PREFIX=/usr/local"])
        helper = os.path.join(dest, "usr/local/lib/cgnetns/cgnetns-helper")
        if not os.stat(helper).st_mode & 0o4000:
            raise ContainerError("%s is not setuid" % helper)
        if not os.path.exists(os.path.join(dest, "usr/local/bin/cgnetns-exec")):
            raise ContainerError("the front cgnetns-exec was not installed")
        # the probe, and an allow list naming it
        probe = dest + PROBE
        os.makedirs(os.path.dirname(probe), 0o755)
        for d in ("usr/local/libexec", "usr/local/libexec/cgnetns-test"):
            os.chmod(os.path.join(dest, d), 0o755)
        with open(probe, "w") as f:
            f.write(PROBE_SCRIPT)
        os.chmod(probe, 0o755)
        # a compiled probe too: on the broker path only allow-listed
        # *executables* get sockets in the approved namespace, and a "#!"
        # script's executable is its interpreter
        sh(["gcc", "-O1", "-o", dest + NETPROBE,
            os.path.join(REPO, "helper", "testsupport", "netprobe.c")])
        os.makedirs(os.path.join(dest, "etc/cgnetns"), 0o755)
        with open(os.path.join(dest, "etc/cgnetns/allow"), "w") as f:
            f.write("# cgnetns container test\n%s\n%s\n" % (PROBE, NETPROBE))
        os.chmod(os.path.join(dest, "etc/cgnetns/allow"), 0o644)

    def _make_cgroups(self):
        """nspawn must start from a cgroup of its own, in both hierarchies
        (cgroup2 and the name=systemd v1 hierarchy of this hybrid host)."""
        from cgnetns import cgroups
        unified = cgroups.find_cgroup2()
        hier = [unified]
        named = "/sys/fs/cgroup/systemd"
        if unified != "/sys/fs/cgroup" and os.path.isdir(named) and os.path.ismount(named):
            hier.append(named)
        for h in hier:
            path = os.path.join(h, "cgnetns-nspawn-" + self.tag)
            os.mkdir(path, 0o755)
            self.cgroups.append(path)

    def _enter_cgroups(self):  # preexec_fn: runs in the child before exec
        for path in self.cgroups:
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write("0\n")
        # If the test process dies (SIGKILL), nspawn gets SIGTERM and powers
        # the container off; sweep_stale() removes the rest at the next run.
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG

    def _boot(self):
        opts = "lowerdir=%s,upperdir=%s,workdir=%s" % (self.lower, self.upper, self.ovl_work)
        nspawn = ["systemd-nspawn", "-q", "-D", self.merged, "-M", self.name, "-b",
                  "--register=no", "--keep-unit", "--console=read-only",
                  # A network namespace of its own (only lo): nspawn then keeps
                  # CAP_NET_ADMIN, which cgnetns-run --unshare-net needs to bring
                  # lo up in the build's namespace, and the container cannot
                  # touch the host's links.  It ends with the container.
                  "--private-network"]
        # The overlay lives in a private mount namespace that ends with nspawn:
        # nothing is left mounted on the host whatever happens.
        script = ('mount -t overlay cgnetns-test -o "$1" "$2" && shift 2 && exec "$@"')
        argv = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                script, "sh", opts, self.merged] + nspawn
        env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}
        if self.unified:
            env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] = "1"
        self.console_path = os.path.join(self.dir, "console.log")
        self.console = open(self.console_path, "wb")
        self.nspawn = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                       stdout=self.console, stderr=subprocess.STDOUT,
                                       preexec_fn=self._enter_cgroups, start_new_session=True)
        deadline = time.monotonic() + self.boot_timeout
        while self.leader is None:
            self._check_alive()
            self.leader = self._find_leader()
            if time.monotonic() > deadline:
                raise ContainerError("no container leader after %ds\n%s"
                                     % (self.boot_timeout, self.console_text()))
            time.sleep(0.05)
        private = "/proc/%d/root/run/systemd/private" % self.leader
        while not os.path.exists(private):
            self._check_alive()
            if time.monotonic() > deadline:
                raise ContainerError("no %s after %ds\n%s"
                                     % (private, self.boot_timeout, self.console_text()))
            time.sleep(0.05)
        r = self.enter(["systemctl", "is-system-running", "--wait"],
                       timeout=max(5, deadline - time.monotonic()))
        self.state = r.stdout.strip()
        if self.state not in ("running", "degraded"):
            raise ContainerError("system state %r\n%s" % (self.state, self.console_text()))
        if self.state == "degraded":
            failed = self.enter(["systemctl", "--failed", "--no-legend", "--plain"]).stdout
            self.log("container degraded, failed units:\n" + failed)

    def _check_alive(self):
        if self.nspawn.poll() is not None:
            raise ContainerError("systemd-nspawn exited with %s\n%s"
                                 % (self.nspawn.returncode, self.console_text()))

    def _find_leader(self):
        """nspawn's child whose NSpid ends in 1: the container's PID 1."""
        try:
            with open("/proc/%d/task/%d/children" % (self.nspawn.pid, self.nspawn.pid)) as f:
                kids = [int(p) for p in f.read().split()]
        except FileNotFoundError:
            return None
        for pid in kids:
            try:
                with open("/proc/%d/status" % pid) as f:
                    for line in f:
                        if line.startswith("NSpid:"):
                            ns = line.split()[1:]
                            if len(ns) > 1 and ns[-1] == "1":
                                return pid
            except FileNotFoundError:
                continue
        return None

    def console_text(self):
        try:
            with open(self.console_path, errors="replace") as f:
                return f.read()[-4000:]
        except (OSError, AttributeError):
            return ""

    # -- commands inside ---------------------------------------------------------
    def enter(self, argv, timeout=60, check=False, input=None):
        """Run ARGV in the container's namespaces (outside its cgroup tree:
        use run() for anything that looks at its own cgroup)."""
        r = subprocess.run(["nsenter", "-t", str(self.leader), "-a", "--"] + list(argv),
                           env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "TERM": "dumb"},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise ContainerError("%s: exit %d\n%s%s" % (argv, r.returncode, r.stdout, r.stderr))
        return r

    def run(self, argv, props=(), timeout=90, check=False):
        """Run ARGV as a transient service of the container's systemd."""
        cmd = ["systemd-run", "--wait", "--pipe", "--collect", "--quiet"]
        for p in props:
            cmd += ["-p", p]
        # systemd expands $VAR and ${VAR} in the command line of a service
        # (systemd.service(5), "Command lines"): "$$" is a literal "$".
        argv = [a.replace("$", "$$") for a in argv]
        return self.enter(cmd + ["--"] + argv, timeout=timeout, check=check)

    # -- tear-down -----------------------------------------------------------------
    def stop(self, timeout=30):
        if self.nspawn is None or self.nspawn.poll() is not None:
            return
        t0 = time.monotonic()
        if self.leader is not None:
            try:
                self.enter(["systemctl", "poweroff", "--no-block"], timeout=10)
            except subprocess.TimeoutExpired:
                pass
        else:  # not booted far enough to be asked: nspawn passes SIGTERM on to init
            self.nspawn.terminate()
            timeout = 5
        try:
            self.nspawn.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.log("systemd-nspawn did not end after poweroff: SIGKILL to pid %d"
                     % self.nspawn.pid)
            os.kill(self.nspawn.pid, signal.SIGKILL)
            self.nspawn.wait(timeout=10)
        self.timings["poweroff"] = time.monotonic() - t0

    def close(self):
        errors = []
        try:
            self.stop()
        except Exception as e:
            errors.append("stop: %s" % e)
            if self.nspawn is not None and self.nspawn.poll() is None:
                self.nspawn.kill()
                self.nspawn.wait()
        for path in reversed(self.cgroups):
            try:
                _remove_cgroup(path)
            except Exception as e:
                errors.append("cgroup %s: %s" % (path, e))
        self.cgroups = []
        if self.console is not None:
            self.console.close()
            self.console = None
        if self.dir is not None:
            try:
                _remove_tree(self.dir)
            except Exception as e:
                errors.append("%s: %s" % (self.dir, e))
            self.dir = None
        if errors:
            raise ContainerError("teardown: " + "; ".join(errors))


STALE_AGE = 120  # seconds


def _cgroup_roots():
    return [p for p in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup")
            if os.path.isdir(p)]


def sweep_stale(log=print):
    """Remove what test runs that were killed left: their nspawn cgroups once
    empty, and ct-* directories without a cgroup, both older than STALE_AGE."""
    now = time.time()
    live = set()
    for root in _cgroup_roots():
        for name in os.listdir(root):
            if not name.startswith("cgnetns-nspawn-"):
                continue
            path = os.path.join(root, name)
            tag = name[len("cgnetns-nspawn-"):]
            try:
                old = now - os.stat(path).st_mtime > STALE_AGE
            except FileNotFoundError:
                continue
            if _cgroup_pids(path) or not old:
                live.add(tag)
                continue
            try:
                _remove_cgroup(path, timeout=2)
                log("removed stale cgroup %s" % path)
            except Exception:
                live.add(tag)
    for name in os.listdir(CACHE_DIR):
        m = re.fullmatch(r"ct-([0-9a-f]+)-.*", name)
        path = os.path.join(CACHE_DIR, name)
        if not m or m.group(1) in live:
            continue
        try:
            if now - os.stat(path).st_mtime > STALE_AGE:
                _remove_tree(path)
                log("removed stale %s" % path)
        except (OSError, ContainerError):
            pass


def _cgroup_pids(path):
    pids = []
    for d, _, _ in os.walk(path):
        try:
            with open(os.path.join(d, "cgroup.procs")) as f:
                pids += [int(p) for p in f.read().split()]
        except FileNotFoundError:
            pass
    return pids


def _remove_cgroup(path, timeout=20):
    """Kill what is left in the cgroup at PATH (either hierarchy) and remove it
    with everything below it."""
    if not os.path.isdir(path):
        return
    deadline = time.monotonic() + timeout
    kill_file = os.path.join(path, "cgroup.kill")
    while True:
        pids = _cgroup_pids(path)
        if not pids:
            break
        if os.path.exists(kill_file):
            with open(kill_file, "w") as f:
                f.write("1")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise ContainerError("processes left in %s: %s" % (path, pids))
        time.sleep(0.05)
    for d in sorted((d for d, _, _ in os.walk(path)), key=len, reverse=True):
        while True:
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


if __name__ == "__main__":
    t = time.monotonic()
    print(debootstrap_root(), "%.1f s" % (time.monotonic() - t))
    sys.path.insert(0, REPO)
    with Container(debootstrap_root()) as c:
        print(c.state, c.timings)
        for argv in sys.argv[1:]:
            r = c.run(["/bin/sh", "-c", argv])
            print(r.returncode, r.stdout, r.stderr)
    print(c.timings)
