"""contrib/portage/patches: FEATURES=cgnetns in a REAL emerge (tracker issue 15).

The patch is applied to a copy of portage 3.0.83 (PyPI, in a venv of Debian's
/usr/bin/python3, as tests/gentoo_support.py makes it), cached in
/var/cache/cgnetns-tests/portage-venv-3.0.83-cgnetns-<sha12 of the patch>;
the sdist itself is checked with ``patch -p1`` as Gentoo's eapply_user runs
it.  emerge runs as root in the EPREFIX playground of tests/test_real_emerge.py
with FEATURES="cgnetns sandbox usersandbox userpriv network-sandbox" (and
distcc, cgroup, ...), Gentoo's real sandbox, and NO cgnetns-run: emerge makes
its build itself, through cgnetns/portage.py.

Where emerge and the broker run.  This host has no /usr/bin/sandbox, which
Portage runs whatever EPREFIX is, so each test makes a mount namespace with
one (gentoo_support.MOUNT_NS_SCRIPT; with ``--cgroup2`` it also mounts cgroup2
at /sys/fs/cgroup: the unified layout, where the host has the hybrid one).
A pin is a mount, so the broker must run in emerge's mount namespace -- as on
a Gentoo host, where both run in the host's -- and the library refuses
otherwise (test_refuses_a_broker_in_another_mount_namespace).  So the test's
own cgnetnsd runs in that namespace too, on a tmpfs over /run/cgnetns (its
socket and lock are the test's alone; other tests on this machine keep the
system socket) with the real pins directory bound back below it (records,
pins and their locks stay where cgnetns-gc and cgnetns-show on the host see
them); it is stopped by its PID, and every emerge enters the namespace with
nsenter.  cgnetns-show and cgnetns-gc are run in it as well.
"""

import contextlib
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import textwrap
import threading
import time

import pytest

pytest.register_assert_rewrite("gentoo_support")

from cgnetns import cgroups, namespaces, records  # noqa: E402
from testbed.topology import Topology  # noqa: E402

from conftest import PY, REPO  # noqa: E402
import gentoo_support as gs  # noqa: E402
from gentoo_support import CPV, Playground, run_bounded  # noqa: E402

# fixtures: real_sandbox, portage_venv, distcc_allowed
pytest_plugins = ["gentoo_support"]

PATCH_DIR = os.path.join(REPO, "contrib", "portage", "patches")
PATCHES = sorted(os.path.join(PATCH_DIR, n) for n in os.listdir(PATCH_DIR)
                 if n.endswith((".patch", ".diff")))
NFILES = 4
TIMEOUT = 300
NOBODY = pwd.getpwnam("nobody")
BASE_FEATURES = "cgnetns sandbox usersandbox userpriv network-sandbox"
MASQ = "/usr/local/lib/cgnetns/masq"
HOST_SOCKET = "/run/cgnetns/cgnetnsd.sock"


def read(path):
    with open(path) as f:
        return f.read()


# -- the patched Portage ---------------------------------------------------------------

def patch_sha():
    h = hashlib.sha256()
    for p in PATCHES:
        h.update(os.path.basename(p).encode() + b"\0" + open(p, "rb").read() + b"\0")
    return h.hexdigest()


def venv_patch_text(text, pyver):
    """A patch for the sdist's tree (lib/..., bin/...) rewritten for an installed
    venv: lib/X is lib/pythonV/site-packages/X, bin/X is lib/portage/bin/X."""
    out = []
    for line in text.splitlines(keepends=True):
        if line.startswith(("--- ", "+++ ", "diff --git ")):
            line = re.sub(r"(?<=[ /])([ab])/lib/", r"\1/lib/python%s/site-packages/" % pyver,
                          line)
            line = re.sub(r"(?<=[ /])([ab])/bin/", r"\1/lib/portage/bin/", line)
        out.append(line)
    return "".join(out)


def build_patched_venv(base):
    """A copy of the portage venv BASE with every patch applied, cached by the
    patches' sha256 (as gentoo_support caches its venv); returns its path."""
    sha = patch_sha()
    final = os.path.join(gs.CACHE_ROOT, "portage-venv-%s-cgnetns-%s" % (gs.PORTAGE_VERSION,
                                                                         sha[:12]))
    stamp = os.path.join(final, ".cgnetns-patched")
    if os.path.isfile(stamp):
        return final
    with gs._cache_lock("portage-venv-cgnetns"):
        if os.path.isfile(stamp):
            return final
        gs._remove_stale(".portage-venv-cgnetns-build-")
        tmp = tempfile.mkdtemp(prefix=".portage-venv-cgnetns-build-", dir=gs.CACHE_ROOT)
        try:
            venv = os.path.join(tmp, "venv")
            shutil.copytree(base, venv, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
            pyver = [d[len("python"):] for d in os.listdir(os.path.join(venv, "lib"))
                     if d.startswith("python")][0]
            for p in PATCHES:
                r = subprocess.run(["patch", "-p1", "-f", "-g0", "--no-backup-if-mismatch"],
                                   input=venv_patch_text(read(p), pyver), cwd=venv, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                assert r.returncode == 0, "%s does not apply to the venv:\n%s" % (p, r.stdout)
            gs.repoint_scripts(venv, base, final)
            with open(os.path.join(venv, ".cgnetns-patched"), "w") as f:
                f.write("sha256 %s\n%s\n" % (sha, "\n".join(PATCHES)))
            gs._world_readable(venv)
            os.rename(venv, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


@pytest.fixture(scope="session")
def patched_venv(portage_venv):
    """The patched Portage; $CGNETNS_TEST_PATCHED_PORTAGE_VENV names another, already
    patched (e.g. gentoo/portage master: pip install a patched checkout into a venv
    of /usr/bin/python3 that every user can read)."""
    other = os.environ.get("CGNETNS_TEST_PATCHED_PORTAGE_VENV")
    return other if other else build_patched_venv(portage_venv)


def portage_sdist():
    """portage-3.0.83.tar.gz from PyPI (pip download), cached."""
    final = os.path.join(gs.CACHE_ROOT, "portage-%s.tar.gz" % gs.PORTAGE_VERSION)
    if os.path.isfile(final):
        return final
    with gs._cache_lock("portage-sdist"):
        if os.path.isfile(final):
            return final
        tmp = tempfile.mkdtemp(prefix=".portage-sdist-", dir=gs.CACHE_ROOT)
        try:
            r = subprocess.run([PY, "-m", "pip", "download", "--quiet", "--no-deps",
                                "--no-binary", ":all:", "--disable-pip-version-check",
                                "-d", tmp, "portage==%s" % gs.PORTAGE_VERSION],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=300)
            got = os.path.join(tmp, os.path.basename(final))
            if r.returncode != 0 or not os.path.isfile(got):
                pytest.fail("pip download portage==%s (sdist) failed:\n%s"
                            % (gs.PORTAGE_VERSION, r.stdout[-2000:]))
            os.chmod(got, 0o644)
            os.rename(got, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# -- a "host" for emerge: a mount namespace with /usr/bin/sandbox and its own broker -------

HOST_SCRIPT = r'''
import ctypes, os, sys
repo, py, log = sys.argv[1:4]
libc = ctypes.CDLL(None, use_errno=True)
def mount(src, tgt, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    if libc.mount(enc(src), enc(tgt), enc(fstype), flags, enc(data)) != 0:
        sys.exit("test host: mount %s on %s: %s" % (src, tgt, os.strerror(ctypes.get_errno())))
MS_NOSUID, MS_NODEV, MS_BIND = 2, 4, 4096
pins = os.open("/run/cgnetns/pins", os.O_PATH | os.O_DIRECTORY)
mount("cgnetns-test-host", "/run/cgnetns", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
os.mkdir("/run/cgnetns/pins", 0o700)
mount("/proc/self/fd/%d" % pins, "/run/cgnetns/pins", None, MS_BIND)
os.close(pins)
fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
os.dup2(fd, 1)
os.dup2(fd, 2)
os.environ["PYTHONPATH"] = repo
os.execv(py, [py, "-m", "cgnetns.cli.broker", "--socket", "/run/cgnetns/cgnetnsd.sock"])
'''


class Host:
    """A mount namespace holding /usr/bin/sandbox (and, with ``cgroup2``,
    cgroup2 at /sys/fs/cgroup), /run/cgnetns on a tmpfs with the real pins
    directory bound back, and a cgnetnsd listening there -- the namespace's
    only process of its own, by whose PID it is entered and ended."""

    def __init__(self, sandbox, tmpdir, cgroup2=False):
        namespaces.ensure_run_dirs()
        self.log = os.path.join(tmpdir, "cgnetnsd.log")
        self.cgroup2 = cgroup2
        argv = gs.mountns_argv([PY, "-I", "-c", HOST_SCRIPT, REPO, PY, self.log], sandbox,
                               cgroup2=cgroup2)
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True,
                                     env={"PATH": gs.SYSTEM_PATH, "LANG": "C.UTF-8"})
        self.pid = self.proc.pid
        try:
            deadline = time.monotonic() + 15
            while not self.answers():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("the test host's cgnetnsd does not answer: %s"
                                % self.log_text()[-2000:])
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise

    def path(self, p):
        """P as the namespace sees it (through /proc/PID/root)."""
        return "/proc/%d/root%s" % (self.pid, p)

    def answers(self):
        """Our broker listens (until the namespace is made, /proc/PID/root is
        the host's, where another broker may answer: its PID tells)."""
        from cgnetns.broker_start import broker_pid
        return broker_pid(self.path(HOST_SOCKET)) == self.pid

    def log_text(self):
        try:
            return read(self.log)
        except FileNotFoundError:
            return ""

    def enter(self, argv, net=None, cwd="/"):
        """ARGV in this mount namespace (and network namespace NET, a path)."""
        ns = ["nsenter", "--mount=/proc/%d/ns/mnt" % self.pid]
        if net:
            ns.append("--net=" + net)
        return ns + ["--", "env", "-C", cwd, *argv]

    def pin_mounts(self):
        """Pin mounts in this namespace."""
        prefix = namespaces.pins_dir() + "/"
        out = []
        with open("/proc/%d/mountinfo" % self.pid) as f:
            for line in f:
                mp = line.split(" ")[4]
                if mp.startswith(prefix):
                    out.append(mp)
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def cgnetns_state(host=None):
    """What cgnetns keeps on this host (build cgroups, pins, records) and, in
    HOST's mount namespace, the pin mounts."""
    root = cgroups.find_cgroup2()
    base = os.path.join(root, cgroups.CGNETNS_SUBTREE)
    cgs = set(os.listdir(base)) if os.path.isdir(base) else set()
    pd = namespaces.pins_dir()
    pins = {n for n in os.listdir(pd) if n != records.GLOBAL_LOCK} if os.path.isdir(pd) else set()
    mounts = set(namespaces.pin_mounts()) | set(host.pin_mounts() if host else ())
    return {"cgroups": {c for c in cgs if os.path.isdir(os.path.join(base, c))},
            "pins": pins, "mounts": mounts}


def new_items(before, after, prefix=("emerge-", "ebuild-")):
    out = {}
    for key in after:
        new = {x for x in after[key] - before[key]
               if os.path.basename(x).startswith(prefix)}
        if new:
            out[key] = new
    return out


@pytest.fixture
def host(real_sandbox, tmp_path, distcc_allowed):
    """make(cgroup2=False) -> a Host; each is stopped after the test, which must
    leave no build of its own behind (checked while the namespace still
    lives, so that its pin mounts are seen)."""
    made = []
    before = cgnetns_state()
    portage_root = os.path.join(cgroups.find_cgroup2(), "portage")
    had_portage_root = os.path.exists(portage_root)

    def make(cgroup2=False):
        h = Host(real_sandbox, str(tmp_path), cgroup2=cgroup2)
        made.append(h)
        return h
    def left():
        after = cgnetns_state(*made[:1])
        for h in made[1:]:
            after["mounts"] |= set(h.pin_mounts())
        return new_items(before, after)
    try:
        yield make
        assert not left(), left()
        # Portage's FEATURES=cgroup left nothing at the cgroup2 root (the depend phase)
        assert had_portage_root or not os.path.exists(portage_root)
    finally:
        if made and left():     # a failed test: what it left is cgnetns-gc's
            for h in made:
                subprocess.run(h.enter([PY, "-m", "cgnetns.cli.gc"]), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={"PATH": gs.SYSTEM_PATH,
                                                               "PYTHONPATH": REPO}, timeout=120)
        for h in made:
            h.stop()


# -- the playground ------------------------------------------------------------------------

@pytest.fixture
def playground(real_sandbox, patched_venv):
    """make(venv=None, **kw) -> a Playground (patched Portage by default)."""
    made = []

    def make(venv=None, **kw):
        kw.setdefault("nfiles", NFILES)
        pg = Playground(venv or patched_venv, real_sandbox, **kw)
        made.append(pg)
        return pg
    yield make
    for pg in made:
        pg.cleanup()


def distcc_conf(addr, port=3632, jobs=4):
    return ['DISTCC_HOSTS="%s:%d/%d"' % (addr, port, jobs), 'DISTCC_FALLBACK="0"',
            'DISTCC_SKIP_LOCAL_RETRY="1"']


def emerge_argv(pg, *args):
    return [os.path.join(pg.venv, "bin", "emerge"), "--color=n", "--quiet-build=n",
            *(args or ("-1", "=" + CPV))]


def emerge_env(pg, cgnetns=True, **extra):
    env = pg.env(**extra)
    if cgnetns:
        env["PYTHONPATH"] = REPO
    return env


def emerge(host, pg, *args, net=None, cgnetns=True, timeout=TIMEOUT, **extra):
    """``emerge -1 =CPV`` (or ARGS) as root in HOST's namespaces; no cgnetns-run."""
    r = run_bounded(host.enter(emerge_argv(pg, *args), net=net, cwd=pg.top), timeout,
                    env=emerge_env(pg, cgnetns, **extra))
    with open(pg.log, "w") as f:
        f.write(r.stdout)
    return r


def assert_emerged(pg, r, nfiles=NFILES):
    out = r.stdout[-6000:]
    assert r.returncode == 0, out
    assert pg.is_installed(), out
    assert pg.installed_objects() == sorted("part%d.o" % i for i in range(nfiles)), out
    for bad in ("ACCESS VIOLATION", "Problem with sandbox binary", "Unable to unshare",
                "cannot be preloaded", "FEATURES=cgnetns", "Traceback"):
        assert bad not in r.stdout, (bad, out)


def assert_only_lo(pg):
    phase = pg.phase()
    assert {"sandbox", "usersandbox", "userpriv", "network-sandbox", "cgnetns"} <= \
        set(phase["features"].split()), phase
    assert phase.get("NoNewPrivs") == "1" and phase.get("sandbox_on") == "1", phase
    assert pg.installed("uid.txt").strip() == str(NOBODY.pw_uid)
    assert pg.links() == ["lo"], pg.installed("links.txt")


def assert_all_remote(topo, r, names):
    got = sorted(os.path.basename(s) for s in topo.compile_ok_sources())
    assert got == sorted(names), (got, r.stdout[-3000:], topo.log_text()[-2000:])
    assert topo.count_compile_ok() == len(names)


CPV2 = "%s/distcc-probe-b-1" % gs.CATEGORY
SHARE2 = "/usr/share/cgnetns-probe-b"


def add_second_package(pg):
    """A second package like CPV (its sources and objects named pkgb*), for --jobs."""
    text = (gs.EBUILD.replace("@N@", str(pg.nfiles)).replace("@SHARE@", SHARE2)
            .replace("part", "pkgb"))
    d = os.path.join(pg.repo, CPV2.split("/")[0], "distcc-probe-b")
    os.makedirs(d, 0o755)
    with open(os.path.join(d, "distcc-probe-b-1.ebuild"), "w") as f:
        f.write(text)
    return lambda name: read(os.path.join(pg.eprefix, SHARE2.lstrip("/"), name))


def build_of(phase_cgroup):
    """The build cgroup (relative to the cgroup2 root) a phase's cgroup is in."""
    m = re.match(r"^(/cgnetns/(?:emerge|ebuild)-[0-9a-f]{16})(/.*)?$", phase_cgroup)
    assert m, phase_cgroup
    return m.group(1)


def test_emerge_features_cgnetns_distcc_jobs_every_object_remote_only_lo(host, playground):
    """FEATURES="cgnetns distcc sandbox usersandbox userpriv network-sandbox", two
    packages with --jobs=2, no cgnetns-run: every object of both is compiled by
    the remote distccd through Portage's own distcc masquerade (cgnetns's, put
    first in PATH by the patch; no SOCKS relay), each phase had only lo, and
    both phases ran in the same build, emerge's."""
    h = host()
    with Topology() as topo:
        pg = playground(make_conf=['FEATURES="%s distcc"' % BASE_FEATURES,
                                   *distcc_conf(topo.remote_addr)], probe=True)
        other = add_second_package(pg)
        r = emerge(h, pg, "-1", "--jobs=2", "=" + CPV, "=" + CPV2)
        assert_emerged(pg, r)
        assert_all_remote(topo, r, ["part%d.c" % i for i in range(NFILES)]
                          + ["pkgb%d.c" % i for i in range(NFILES)])
    assert_only_lo(pg)
    phase = pg.phase()
    assert phase["gcc"] == os.path.join(MASQ, "gcc"), phase
    # each distcc: the real sandbox's libsandbox loaded, not traced, no_new_privs, nobody
    gs.assert_distcc_sandboxed_untraced(pg.probes(), NOBODY.pw_uid)
    # no SOCKS relay: none offered to distcc, and no relay socket (stop() leaves it)
    assert not [p for p in pg.probes() if "DISTCC_SOCKS_PROXY" in p["environ"]]
    relays = [n for n in os.listdir(os.path.join(pg.tmpdir, "portage")) if n.endswith(".net.sock")]
    assert not relays, relays
    one, two = pg.installed("cgroup.txt").strip(), other("cgroup.txt").strip()
    assert build_of(one) == build_of(two), (one, two)


# -- more ebuilds ------------------------------------------------------------------------

def add_ebuild(pg, pn, body):
    """cgnetns-test/PN-1 with BODY (its phase functions)."""
    d = os.path.join(pg.repo, gs.CATEGORY, pn)
    os.makedirs(d, 0o755)
    with open(os.path.join(d, "%s-1.ebuild" % pn), "w") as f:
        f.write(textwrap.dedent('''\
            EAPI=8
            DESCRIPTION="cgnetns test package"
            HOMEPAGE="https://example.invalid/cgnetns"
            SRC_URI=""
            LICENSE="GPL-2"
            SLOT="0"
            KEYWORDS="amd64"
            S="${WORKDIR}"
            ''') + textwrap.dedent(body))
    return "%s/%s-1" % (gs.CATEGORY, pn)


# runs until stopped (60 s at most); says where it runs and that it started
SLOW = """
    src_compile() {
        sed -n 's/^0:://p' /proc/self/cgroup > "${T}/cgroup" || die
        touch "${T}/started" || die
        local i
        for ((i = 0; i < 600; i++)); do sleep 0.1; done
        die "cgnetns test: nobody stopped this build"
    }
"""
FAILING = """
    src_compile() {
        sed -n 's/^0:://p' /proc/self/cgroup > "${T}/cgroup" || die
        die "cgnetns test: this build fails"
    }
"""


def cgnetns_lines(pg, text):
    """Lines of TEXT that mention cgnetns (not in a path of the test's)."""
    text = text.replace(pg.venv, "<VENV>").replace(pg.top, "<TOP>")
    return [line for line in text.splitlines() if "cgnetns" in line.replace("cgnetns-test", "")]


def temp_dir(pg, cpv):
    return os.path.join(pg.tmpdir, "portage", cpv, "temp")


def show_all(h, pg):
    r = subprocess.run(h.enter([PY, "-m", "cgnetns.cli.show", "--all", "--json"]),
                       env=emerge_env(pg), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["builds"]


def gc(h, pg):
    return subprocess.run(h.enter([PY, "-m", "cgnetns.cli.gc"]), env=emerge_env(pg),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=120)


def cgroup2_path(rel):
    return cgroups.to_abs(cgroups.find_cgroup2(), rel)


def cgroup_procs(rel):
    path = cgroup2_path(rel)
    return [p for d in cgroups.subtree(path) for p in cgroups.procs(d)] \
        if os.path.isdir(path) else []


@contextlib.contextmanager
def started(argv, env):
    """Popen ARGV (a session of its own); on the way out, whatever is left of
    it gets SIGTERM, then SIGKILL."""
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        yield proc
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        if proc.stdout:
            proc.stdout.close()


def wait_for(path, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            pytest.fail("ended (status %s) before %s appeared:\n%s"
                        % (proc.returncode, path, proc.stdout.read()[-4000:]))
        if time.monotonic() > deadline:
            pytest.fail("%s did not appear in %d s" % (path, timeout))
        time.sleep(0.05)


# -- the build's life: shown while it runs, gone afterwards ---------------------------------

@pytest.mark.parametrize("tool,sig", [("emerge", "TERM"), ("emerge", "INT"), ("emerge", "KILL"),
                                      ("ebuild", "TERM")])
def test_build_listed_while_running_and_removed_after_a_signal(host, playground, tool, sig):
    """A build that runs until stopped: while it runs, cgnetns-show --all lists
    emerge's build (emerge its owner and a member, the phase inside); SIGTERM or
    SIGINT (Ctrl-C) to emerge, or SIGTERM to ebuild(1), and nothing is left;
    after SIGKILL the dead build is cgnetns-gc's, which leaves nothing."""
    h = host()
    pg = playground(make_conf=['FEATURES="%s"' % BASE_FEATURES])
    cpv = add_ebuild(pg, "slow", SLOW)
    if tool == "emerge":
        argv = emerge_argv(pg, "-1", "=" + cpv)
    else:
        ebuild = os.path.join(pg.repo, cpv.replace("slow-1", "slow/slow-1.ebuild"))
        argv = [os.path.join(pg.venv, "bin", "ebuild"), ebuild, "clean", "compile"]
    temp = temp_dir(pg, cpv)
    with started(h.enter(argv, cwd=pg.top), emerge_env(pg)) as proc:
        wait_for(os.path.join(temp, "started"), proc)
        phase_cgroup = read(os.path.join(temp, "cgroup")).strip()
        build = build_of(phase_cgroup)
        builds = {b["cgroup"]: b for b in show_all(h, pg)}
        assert build in builds, (build, list(builds))
        b = builds[build]
        assert b["name"] == tool and b["state"] == "live" and b["owner_pid"] == proc.pid, b
        assert b["pin"] and b["tagged_cgroup"] == build, b
        members = {m["pid"] for m in b["members"]}
        assert proc.pid in members, b["members"]
        assert len(members) > 1, b["members"]           # the phase's processes too
        os.kill(proc.pid, getattr(signal, "SIG" + sig))
        out, _ = proc.communicate(timeout=120)
    if sig == "KILL":
        assert proc.returncode == -signal.SIGKILL
        assert cgroup_procs(build), "the phase should outlive emerge's SIGKILL"
        r = gc(h, pg)
        assert r.returncode == 0, r.stdout
    else:
        assert proc.returncode in (128 + getattr(signal, "SIG" + sig),
                                   -getattr(signal, "SIG" + sig)), (proc.returncode, out[-3000:])
        assert not cgnetns_lines(pg, out), out[-3000:]
    assert not os.path.exists(cgroup2_path(build)), out[-3000:]
    assert not [b for b in show_all(h, pg) if b["cgroup"] == build]


def test_failing_ebuild_leaves_nothing(host, playground):
    h = host()
    pg = playground(make_conf=['FEATURES="%s"' % BASE_FEATURES])
    cpv = add_ebuild(pg, "failing", FAILING)
    r = emerge(h, pg, "-1", "=" + cpv)
    assert r.returncode == 1, r.stdout[-3000:]
    assert "cgnetns test: this build fails" in r.stdout
    build = build_of(read(os.path.join(temp_dir(pg, cpv), "cgroup")).strip())
    assert not os.path.exists(cgroup2_path(build))


# -- FEATURES=cgroup: emerge-<pid>/<cpv> inside the build, on both layouts -------------------

@pytest.mark.parametrize("layout", ["hybrid", "unified"])
def test_features_cgroup_nests_inside_the_build(host, playground, layout):
    """FEATURES=cgroup (Portage looks for cgroup2 at /sys/fs/cgroup only; the
    library points it at cgnetns's): the phase runs in <build>/portage/
    emerge-<pid>/<cpv>; the depend phase's leaf is in the build too (the host
    fixture checks that no <cgroup2>/portage appeared), and a
    PORTAGE_CGROUP_ROOT in make.conf does not take the build's phases out."""
    h = host(cgroup2=layout == "unified")
    with Topology() as topo:
        pg = playground(make_conf=['FEATURES="%s distcc cgroup"' % BASE_FEATURES,
                                   *distcc_conf(topo.remote_addr),
                                   'PORTAGE_CGROUP_ROOT="/sys/fs/cgroup/portage-elsewhere"'])
        with CgroupWatch() as seen:
            r = emerge(h, pg)
        assert_emerged(pg, r)
        assert_all_remote(topo, r, ["part%d.c" % i for i in range(NFILES)])
    assert_only_lo(pg)
    assert "cgroup" in pg.phase()["features"].split()
    # the depend phase's leaf (a bare <cpv>) was in the build, never at the root
    leaf = CPV.replace("/", "_")
    assert not [c for c in seen if c.startswith("/portage")], sorted(seen)
    assert [c for c in seen if re.fullmatch(r"/cgnetns/emerge-[0-9a-f]{16}/portage/" + leaf,
                                            c)], sorted(seen)
    phase_cgroup = pg.installed("cgroup.txt").strip()
    build = build_of(phase_cgroup)
    assert re.fullmatch(re.escape(build) + r"/portage/emerge-\d+/"
                        + re.escape(CPV.replace("/", "_")), phase_cgroup), phase_cgroup
    assert not os.path.exists(cgroup2_path("/portage-elsewhere"))


class CgroupWatch:
    """The cgroups (relative paths) that existed at some point below
    <cgroup2>/portage and below this suite's builds in <cgroup2>/cgnetns, polled
    every 20 ms while the with-block runs."""

    def __init__(self):
        self.root = cgroups.find_cgroup2()
        self.seen = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        tops = [os.path.join(self.root, "portage")]
        base = os.path.join(self.root, cgroups.CGNETNS_SUBTREE)
        while not self._stop.wait(0.02):
            with contextlib.suppress(OSError):
                tops[1:] = [os.path.join(base, n) for n in os.listdir(base)
                            if n.startswith(("emerge-", "ebuild-"))]
            for top in tops:
                for d, _, _ in os.walk(top):
                    self.seen.add(cgroups.to_rel(self.root, d))

    def __enter__(self):
        self._thread.start()
        return self.seen

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# -- two emerges from two network namespaces -----------------------------------------------

class Remote:
    """A client network namespace joined by a veth pair to a "remote" one that
    runs distccd at REMOTE_ADDR: every Remote uses the same addresses, so a
    compile reaches one server or the other only by the namespace it runs in."""

    CLIENT_ADDR, REMOTE_ADDR, NET = "192.0.2.1", "192.0.2.2", "192.0.2.0/30"

    def __init__(self, n):
        tag = "%s%d" % (os.urandom(3).hex(), n)
        self.client, self.remote = "cgnpp-%s-c" % tag, "cgnpp-%s-r" % tag
        # distccd, as user distccd, writes its log here: not below pytest's 0700 tmp_path
        self.dir = tempfile.mkdtemp(prefix="cgnetns-pp-remote%d-" % n)
        os.chmod(self.dir, 0o755)
        self.made, self.distccd = [], None
        try:
            self._start(tag)
        except BaseException:
            self.stop()
            raise

    @property
    def client_path(self):
        return "/run/netns/" + self.client

    def _ip(self, *args):
        subprocess.run(["ip", *args], check=True, stdout=subprocess.DEVNULL, timeout=30)

    def _start(self, tag):
        for ns in (self.client, self.remote):
            self._ip("netns", "add", ns)
            self.made.append(ns)
        vc, vr = "cgnpp%sc" % tag, "cgnpp%sr" % tag
        self._ip("link", "add", vc, "type", "veth", "peer", "name", vr)
        self._ip("link", "set", vc, "netns", self.client)
        self._ip("link", "set", vr, "netns", self.remote)
        for ns, dev, addr in ((self.client, vc, self.CLIENT_ADDR),
                              (self.remote, vr, self.REMOTE_ADDR)):
            self._ip("-n", ns, "link", "set", "lo", "up")
            self._ip("-n", ns, "addr", "add", addr + "/30", "dev", dev)
            self._ip("-n", ns, "link", "set", dev, "up")
        user = pwd.getpwnam("distccd")
        self.log = os.path.join(self.dir, "distccd.log")
        pidfile = os.path.join(self.dir, "distccd.pid")
        for path in (self.log, pidfile):
            open(path, "w").close()
            os.chown(path, user.pw_uid, user.pw_gid)
        self.distccd = subprocess.Popen(
            ["nsenter", "--net=/run/netns/" + self.remote, "--", "distccd", "--daemon",
             "--no-detach", "--user", "distccd", "--allow", self.NET, "--listen",
             self.REMOTE_ADDR, "--jobs", "4", "--log-file", self.log, "--log-level", "info",
             "--pid-file", pidfile], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True, cwd="/",
            env={"PATH": gs.SYSTEM_PATH, "HOME": "/", "LANG": "C.UTF-8"})
        deadline = time.monotonic() + 20
        while "ready" not in self._probe():
            if self.distccd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("distccd in %s did not start" % self.remote)
            time.sleep(0.05)

    def _probe(self):
        r = subprocess.run(["nsenter", "--net=/run/netns/" + self.client, "--", "/usr/bin/python3",
                            "-c", "import socket; socket.create_connection(('%s', 3632), 2)"
                            "; print('ready')" % self.REMOTE_ADDR],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return r.stdout

    def sources(self):
        return sorted(re.findall(r"COMPILE_OK .*\btime:\d+ms \S+ (?:\S*/)?(\S+)", read(self.log)))

    def stop(self):
        if self.distccd is not None and self.distccd.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.distccd.pid, signal.SIGTERM)
            try:
                self.distccd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.distccd.pid, signal.SIGKILL)
                self.distccd.wait()
        for ns in reversed(self.made):      # the veth pair goes with its namespaces
            subprocess.run(["ip", "netns", "del", ns], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        self.made = []
        shutil.rmtree(self.dir, ignore_errors=True)


def test_two_concurrent_emerges_from_two_namespaces_each_reach_their_own(host, playground):
    h = host()
    remotes = []
    try:
        for n in (1, 2):
            remotes.append(Remote(n))
        conf = ['FEATURES="%s distcc"' % BASE_FEATURES, *distcc_conf(Remote.REMOTE_ADDR)]
        pg1, pg2 = playground(make_conf=conf), playground(make_conf=conf)
        other = add_second_package(pg2)
        runs = []
        with contextlib.ExitStack() as stack:
            for pg, remote, cpv in ((pg1, remotes[0], CPV), (pg2, remotes[1], CPV2)):
                argv = h.enter(emerge_argv(pg, "-1", "=" + cpv), net=remote.client_path,
                               cwd=pg.top)
                runs.append(stack.enter_context(started(argv, emerge_env(pg))))
            outs = [p.communicate(timeout=TIMEOUT)[0] for p in runs]
        for p, out in zip(runs, outs):
            assert p.returncode == 0, out[-4000:]
        for remote, out, name in zip(remotes, outs, ("part", "pkgb")):
            assert remote.sources() == ["%s%d.c" % (name, i) for i in range(NFILES)], \
                (out[-3000:], read(remote.log)[-3000:])
        b1, b2 = build_of(pg1.installed("cgroup.txt").strip()), build_of(other("cgroup.txt").strip())
        assert b1 != b2
        assert pg1.links() == ["lo"]
    finally:
        for remote in remotes:
            remote.stop()


# -- FEATURES=-cgnetns, no cgnetns, not root: Portage as before -------------------------------

def normalized(pg, text):
    """emerge's output without what differs from run to run (paths, timings)."""
    text = text.replace(pg.top, "<TOP>").replace(pg.venv, "<VENV>")
    text = re.sub(r"\d+\.\d+ s\b", "<T> s", text)
    return text


def phase_record(pg):
    phase = dict(pg.phase())
    phase["path"] = phase.get("path", "").replace(pg.venv, "<VENV>")
    return (phase, pg.installed("cgroup.txt"), pg.links(), pg.installed("uid.txt"),
            pg.installed_objects())


def test_features_minus_cgnetns_is_unpatched_portage(host, playground, portage_venv):
    """The same emerge with unpatched Portage 3.0.83 and with the patch and
    FEATURES=-cgnetns (cgnetns importable all the same): the same output, the
    same phase (cgroup, links, user, sandbox), and no build made."""
    h = host()
    seen = {}
    for name, venv in (("unpatched", portage_venv), ("patched", None)):
        pg = playground(venv=venv, make_conf=['FEATURES="-cgnetns"'])
        before = cgnetns_state(h)
        r = emerge(h, pg)
        assert r.returncode == 0, r.stdout[-3000:]
        assert not new_items(before, cgnetns_state(h)), name
        seen[name] = (normalized(pg, r.stdout), phase_record(pg))
    assert seen["patched"][0] == seen["unpatched"][0]
    assert seen["patched"][1] == seen["unpatched"][1]
    assert "cgnetns" not in seen["patched"][0].replace("cgnetns-test", "")  # paths normalized


def test_without_the_cgnetns_package_one_warning_and_portage_as_before(host, playground):
    h = host()
    pg = playground(make_conf=['FEATURES="%s"' % BASE_FEATURES])
    before = cgnetns_state(h)
    r = emerge(h, pg, cgnetns=False)               # no PYTHONPATH: no cgnetns
    assert r.returncode == 0 and pg.is_installed(), r.stdout[-3000:]
    warnings = cgnetns_lines(pg, r.stdout)
    assert warnings == ["!!! cgroup: FEATURES=cgnetns: No module named 'cgnetns'; "
                        "running without it"], warnings
    assert not pg.installed("cgroup.txt").startswith("/cgnetns/")
    assert pg.links() == ["lo"]
    assert not new_items(before, cgnetns_state(h))


def test_not_root_one_warning_and_portage_as_before(host, playground):
    """emerge --pretend as a user: one warning, the same answer as without."""
    h = host()
    pg = playground(make_conf=['FEATURES="%s"' % BASE_FEATURES])
    outs = {}
    for features in ("cgnetns", "-cgnetns"):
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                *emerge_argv(pg, "--pretend", "=" + CPV)]
        r = run_bounded(h.enter(argv, cwd=pg.top), TIMEOUT,
                        env=emerge_env(pg, FEATURES=features))
        assert r.returncode == 0, r.stdout[-3000:]
        outs[features] = r.stdout
    warning = ("!!! FEATURES=cgnetns: emerge runs as uid %d, not as root; running without "
               "cgnetns\n" % NOBODY.pw_uid)
    assert outs["cgnetns"].count("FEATURES=cgnetns") == 1, outs["cgnetns"]
    assert normalized(pg, outs["cgnetns"].replace(warning, "")) == \
        normalized(pg, outs["-cgnetns"])
    assert "[ebuild  N     ] " + CPV in outs["cgnetns"]


def test_refuses_a_broker_in_another_mount_namespace(host, playground):
    """A pin made in a private mount namespace is invisible to a broker outside
    it: the library says so and makes nothing, instead of a build whose distcc
    the broker refuses with "pin ... is not a namespace file"."""
    h = host()
    pg = playground()
    before = cgnetns_state(h)
    code = ("from cgnetns import portage; b = portage.start(name='emerge'); "
            "print('build', b)")
    r = subprocess.run(h.enter(["unshare", "--mount", "--propagation", "private", "--",
                                PY, "-c", code]), env=emerge_env(pg), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "build None", r.stdout
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert re.match(r"!!! FEATURES=cgnetns: cgnetnsd \(pid %d\) runs in another mount "
                    r"namespace and cannot see the pin /run/cgnetns/pins/emerge-[0-9a-f]{16}: "
                    r".*nsenter --mount=/proc/%d/ns/mnt.*; running without cgnetns$"
                    % (h.pid, h.pid), lines[0]), lines[0]
    assert not new_items(before, cgnetns_state(h))


def test_ebuild_1_compiles_remotely_in_a_build_of_its_own(host, playground):
    """ebuild(1) runs phases itself: FEATURES=cgnetns covers it the same way."""
    h = host()
    with Topology() as topo:
        pg = playground(make_conf=['FEATURES="%s distcc"' % BASE_FEATURES,
                                   *distcc_conf(topo.remote_addr)])
        ebuild = os.path.join(pg.repo, CPV.split("/")[0], gs.PACKAGE, gs.PACKAGE + "-1.ebuild")
        r = run_bounded(h.enter([os.path.join(pg.venv, "bin", "ebuild"), ebuild, "clean",
                                 "compile"], cwd=pg.top), TIMEOUT, env=emerge_env(pg))
        assert r.returncode == 0, r.stdout[-3000:]
        assert_all_remote(topo, r, ["part%d.c" % i for i in range(NFILES)])
    work = os.path.join(pg.tmpdir, "portage", CPV, "work")
    assert read(os.path.join(work, "links.txt")).split(":")[1].strip() == "lo"
    assert re.match(r"^/cgnetns/ebuild-[0-9a-f]{16}$", read(os.path.join(work, "cgroup.txt")))


# -- the patch itself ------------------------------------------------------------------------

def test_patch_applies_to_the_portage_sdist_as_eapply_user_does(tmp_path):
    """Gentoo applies /etc/portage/patches/sys-apps/portage/*.patch with eapply
    (patch -p1 -f -g0 --no-backup-if-mismatch) to the release's sources: it
    applies to portage 3.0.83 without fuzz and stays small."""
    assert PATCHES, "no patch in %s" % PATCH_DIR
    sdist = portage_sdist()
    subprocess.run(["tar", "-xzf", sdist, "-C", str(tmp_path)], check=True)
    top = os.path.join(str(tmp_path), "portage-%s" % gs.PORTAGE_VERSION)
    changed = []
    for p in PATCHES:
        r = subprocess.run(["patch", "-p1", "-f", "-g0", "--no-backup-if-mismatch"],
                           stdin=open(p), cwd=top, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        assert r.returncode == 0 and "fuzz" not in r.stdout and "offset" not in r.stdout, \
            r.stdout
        changed += re.findall(r"^patching file (\S+)$", r.stdout, re.M)
        added = [l for l in read(p).splitlines() if l.startswith("+") and not
                 l.startswith("+++")]
        assert len(added) <= 40, "%s adds %d lines" % (p, len(added))
    assert "bin/ebuild" in changed and "lib/_emerge/main.py" in changed
    r = subprocess.run([gs.USER_PY, "-m", "py_compile", *[os.path.join(top, f) for f in changed]],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 0, r.stdout


# -- a systemd host: emerge is moved into a delegated scope ---------------------------------

SCOPE_PROBE = r'''
import json, os
from cgnetns import cgroups, portage
before = cgroups.cgroup_of("self")
b = portage.start(name="emerge")
during = cgroups.cgroup_of("self")
build = b.build.cgroup
root = b.build.cgroup_root
delegate = os.getxattr(root + os.path.dirname(build), "user.delegate").decode()
b.close()
print(json.dumps({"before": before, "during": during, "build": build, "delegate": delegate,
                  "after": cgroups.cgroup_of("self"), "left": os.path.exists(root + build)}))
'''


@pytest.mark.parametrize("layout", ["unified", "hybrid"])
def test_systemd_host_moves_emerge_into_a_delegated_scope(layout):
    """Real systemd as PID 1 (tests/systemd_support.py): from a plain service,
    which systemd does not let it create cgroups in, cgnetns.portage.start()
    moves the calling process into a new Delegate=yes scope (over D-Bus, as
    systemd-run --scope does for itself) and makes the build there; close()
    takes the process back to the scope and removes the build."""
    import systemd_support as sd
    try:
        root = sd.debootstrap_root()
    except sd.ArchiveUnreachable as e:
        pytest.skip("no container root: %s" % e)
    with sd.Container(root, unified=layout == "unified") as c:
        r = c.run(["python3", "-c", SCOPE_PROBE])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FEATURES=cgnetns" not in r.stderr, r.stderr     # no warning
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert re.fullmatch(r"/system\.slice/run-\S+\.service", seen["before"]), seen
    scope = os.path.dirname(seen["build"])
    assert re.fullmatch(r"/system\.slice/cgnetns-emerge-\d+-[0-9a-f]{8}\.scope", scope), seen
    assert seen["during"] == seen["build"] and seen["delegate"] == "1", seen
    assert seen["after"] == scope and not seen["left"], seen


# -- cgnetns-show --check reads make.conf ----------------------------------------------------

def make_conf(tmp_path, files):
    """A PORTAGE_CONFIGROOT whose etc/portage/make.conf is a directory of FILES."""
    root = tempfile.mkdtemp(dir=str(tmp_path))
    conf = os.path.join(root, "etc", "portage", "make.conf")
    os.makedirs(conf)
    for name, text in files.items():
        with open(os.path.join(conf, name), "w") as f:
            f.write(text)
    return root


PORTAGE_CHECKS = ("portage-cgroup", "distcc-fallback")


@pytest.mark.parametrize("layout", ["hybrid", "unified"])
def test_show_check_warns_about_make_conf(tmp_path, layout):
    """cgnetns-show --check: FEATURES=cgroup without FEATURES=cgnetns where
    Portage finds cgroup2 (the unified layout: its cgroups leave cgnetns-run's
    build), and DISTCC_FALLBACK not 0, are warnings that name the fix.  A
    make.conf directory is read in order, values over several lines."""
    root = make_conf(tmp_path, {"00": 'FEATURES="distcc\n    cgroup"\n',
                                "10-distcc": 'DISTCC_HOSTS="a/4 b/4"\n# DISTCC_FALLBACK=0\n'})
    cmd = "exec %s -m cgnetns.cli.show --check --json" % PY
    if layout == "unified":
        cmd = "mount -t cgroup2 none /sys/fs/cgroup && " + cmd
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", cmd],
                       stdout=subprocess.PIPE, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=REPO, PORTAGE_CONFIGROOT=root))
    got = {c["name"]: c for c in json.loads(r.stdout)["checks"] if c["name"] in PORTAGE_CHECKS}
    fallback = got["distcc-fallback"]
    assert fallback["status"] == "warn" and "DISTCC_FALLBACK" in fallback["fix"], fallback
    cg = got["portage-cgroup"]
    if layout == "unified":
        assert cg["status"] == "warn" and "FEATURES" in cg["fix"], cg
        assert "/sys/fs/cgroup/portage/emerge-<pid>" in cg["message"], cg
    else:
        assert cg["status"] == "ok" and "does nothing" in cg["message"], cg


def test_make_conf_checks_quiet_when_cgnetns_does_it(tmp_path):
    """With FEATURES=cgnetns and DISTCC_FALLBACK=0 nothing to warn about, on
    either layout; without cgroup and distcc in make.conf, no check at all."""
    from cgnetns import portage as cp
    unified = cgroups.find_cgroup2()       # a cgroup2 mount: what /sys/fs/cgroup is there
    good = make_conf(tmp_path, {"make.conf": 'FEATURES="${FEATURES} distcc cgroup cgnetns"\n'
                                             'DISTCC_FALLBACK="0"\n'})
    for sys_cgroup in ("/sys/fs/cgroup", unified):
        got = cp.check(sys_cgroup, {"PORTAGE_CONFIGROOT": good})
        assert [(c[0], c[1]) for c in got] == [(n, "ok") for n in PORTAGE_CHECKS], got
    none = make_conf(tmp_path, {"make.conf": 'FEATURES="-cgroup"\n'})
    assert cp.check(unified, {"PORTAGE_CONFIGROOT": none}) == []
    assert cp.check(unified, {"PORTAGE_CONFIGROOT": str(tmp_path / "nothing")}) == []
