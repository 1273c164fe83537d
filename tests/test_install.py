"""`make install PREFIX=/usr DESTDIR=<tmp>`: one source for every path
(paths.mk), and the layout it makes works end to end.

As root, with the default OWNER (the helper set-user-ID root), the checkout is
installed into a temporary DESTDIR below a root-owned directory that is not
nosuid (/var/lib or /run), with a build directory of its own for the helper
(HELPER_BUILD), so that the checkout's helper/build and cgnetns/_paths.py are
left alone (checked).  Then:

- the layout is complete (commands, front, helper, masquerade directories,
  manual pages, units, OpenRC script, tmpfiles, Portage files, the Python
  package with its generated _paths.py, the allow list);
- no installed file holds "/usr/local", text or binary (the bytes are
  searched; two things that are not install paths are taken out first: the
  host's own programs that tools/make-allow-list wrote into the allow list,
  and the standard PATH search list);
- the helper and the front have the /usr and /etc paths compiled in, the
  units, scripts and masquerade links name /usr/bin;
- a broker request end to end from that layout: in a private mount and
  network namespace (`unshare -m -n`; the namespace dies with its last
  process), DESTDIR's /usr/bin entries, /usr/lib/cgnetns and /etc/cgnetns
  appear at their installed places (bind mounts where the place exists,
  otherwise a read-only overlay of DESTDIR's directory over the real one, so
  that nothing of the real /usr is hidden), a tmpfs on /run/cgnetns keeps
  every other broker and build out; the installed cgnetnsd (the installed
  package on PYTHONPATH, no --helper, no --socket) listens on
  /run/cgnetns/cgnetnsd.sock; the installed cgnetns-run makes a build with
  --unshare-net --user nobody, inside which a compiled probe (allow-listed in
  DESTDIR's /etc/cgnetns/allow) connects to a TCP server in the approved
  namespace: run directly it gets no connection; through the installed front
  under no_new_privs it gets one, made by the broker's supervisor while the
  probe stays in the build's namespace; through the front without
  no_new_privs the set-user-ID helper joins the approved namespace.

Without root (make check-unit): helper/helper.h's fallback paths are
paths.mk's defaults.

Everything is removed again: the temporary directory, the test's cgroup (the
processes left in it killed by PID); the broker is stopped by its PID.
Run alone: python3 -m pytest -q tests/test_install.py -p no:cacheprovider
"""

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.path.realpath(sys.executable)
NETPROBE_SRC = os.path.join(REPO, "helper", "testsupport", "netprobe.c")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PREFIX = "/usr"
# What the layout must hold, relative to DESTDIR.
BINDIR, PKGLIBDIR = "/usr/bin", "/usr/lib/cgnetns"
HELPER, FRONT = PKGLIBDIR + "/cgnetns-helper", BINDIR + "/cgnetns-exec"
ALLOW = "/etc/cgnetns/allow"
RUN_DIR = "/run/cgnetns"
SOCKET = RUN_DIR + "/cgnetnsd.sock"
COMMANDS = ("cgnetns-run", "cgnetns-show", "cgnetns-gc", "cgnetnsd")
PAGES = ("cgnetns-exec", "cgnetns-gc", "cgnetns-run", "cgnetns-show", "cgnetnsd")


def sh(argv, timeout=300, **kw):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=timeout, **kw)
    assert r.returncode == 0, "%s failed (%d):\n%s" % (" ".join(argv), r.returncode, r.stdout)
    return r.stdout


def cgroup2_root():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[fields.index("-") + 1] == "cgroup2" and fields[4] in (
                    "/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
                return fields[4]
    pytest.fail("no cgroup2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified")


def suid_base():
    """A root-owned directory, not group/other writable all the way up (the
    helper checks the probe's directories), on a mount that is not nosuid."""
    for base in ("/var/lib", "/run"):
        ok = not (os.statvfs(base).f_flag & os.ST_NOSUID)
        p = base
        while ok and p != "/":
            st = os.stat(p)
            ok = st.st_uid == 0 and not st.st_mode & 0o022
            p = os.path.dirname(p)
        if ok:
            return base
    pytest.skip("no root-owned directory on a mount without nosuid")


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Layout:
    """make install PREFIX=/usr DESTDIR=<base>/root into a directory of its own."""

    def __init__(self):
        self.base = tempfile.mkdtemp(prefix="cgnetns-install-", dir=suid_base())
        os.chmod(self.base, 0o755)
        self.root = os.path.join(self.base, "root")
        self.build = os.path.join(self.base, "build")
        self.probe_dir = os.path.join(self.base, "probe")
        self.probe = os.path.join(self.probe_dir, "netprobe")
        self.out = os.path.join(self.base, "out")
        self.output = ""

    def install(self):
        tree_paths = os.path.join(REPO, "cgnetns", "_paths.py")
        before = (digest(tree_paths), os.stat(tree_paths).st_mtime_ns) \
            if os.path.exists(tree_paths) else None
        self.output = sh(["make", "-C", REPO, "install", "PREFIX=" + PREFIX,
                          "DESTDIR=" + self.root, "SYSCONFDIR=/etc", "PYTHON=" + PY,
                          "HELPER_BUILD=" + self.build])
        after = (digest(tree_paths), os.stat(tree_paths).st_mtime_ns) \
            if os.path.exists(tree_paths) else None
        assert after == before, "a DESTDIR install changed the checkout's cgnetns/_paths.py"
        self.site = sh([PY, "-c", "import sysconfig; print(sysconfig.get_path('purelib', "
                        "'posix_prefix', {'base': '/usr', 'platbase': '/usr'}))"]).strip()
        self.package = self.root + self.site + "/cgnetns"

    def add_probe(self):
        """The compiled probe, root-owned in 0755 directories, allow-listed."""
        os.mkdir(self.probe_dir, 0o755)
        sh(["gcc", "-O1", "-Wall", "-o", self.probe, NETPROBE_SRC])
        os.chmod(self.probe, 0o755)
        os.mkdir(self.out, 0o755)
        os.chmod(self.out, 0o777)
        with open(self.root + ALLOW, "a") as f:
            f.write("# test_install: the probe\n%s\n" % self.probe)

    def close(self):
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def layout():
    if os.geteuid() != 0:
        pytest.fail("test_install needs root (make install OWNER=root, mounts, cgroups)")
    lay = Layout()
    try:
        lay.install()
        yield lay
    finally:
        lay.close()


def installed_files(root):
    for d, dirs, files in os.walk(root):
        for n in files:
            yield os.path.join(d, n)


# --------------------------------------------------------------------------
# one source: no root needed (make check-unit)

@pytest.mark.unit
def test_helper_h_fallbacks_are_the_paths_mk_defaults():
    """helper/helper.h's #ifndef fallbacks (for a compile without the
    Makefile's -D, e.g. the parser tests) are paths.mk's defaults, which are
    also what cgnetns/paths.py reads in a checkout never installed."""
    from cgnetns.paths import read_paths_mk
    mk = read_paths_mk(os.path.join(REPO, "paths.mk"))
    with open(os.path.join(REPO, "helper", "helper.h")) as f:
        h = dict(re.findall(r'^#define CGNETNS_([A-Z_]+) "([^"]*)"', f.read(), re.M))
    for name in ("ALLOW_PATH", "PINS_DIR", "BROKER_SOCKET", "HELPER_PATH"):
        assert h[name] == mk[name], (name, h[name], mk[name])


# --------------------------------------------------------------------------
# the layout

def test_the_layout_is_complete(layout):
    r = layout.root
    for name in COMMANDS:
        p = r + BINDIR + "/" + name
        assert os.stat(p).st_mode & 0o777 == 0o755, p
        with open(p) as f:
            first = f.readline()
        assert first == "#!%s\n" % PY, first  # the interpreter make ran with
    st = os.stat(r + HELPER)
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o4755, oct(st.st_mode)
    st = os.stat(r + FRONT)
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o755, oct(st.st_mode)
    for name in ("cc", "gcc", "g++", "clang"):
        assert os.access(r + PKGLIBDIR + "/masq/" + name, os.X_OK), name
    for name in ("distcc", "pump", "icecc"):
        assert os.readlink(r + PKGLIBDIR + "/bin/" + name) == FRONT
    for page in PAGES:
        p = r + "/usr/share/man/man8/%s.8" % page
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o644, p
    for p in ("/etc/systemd/system/cgnetnsd.socket", "/etc/systemd/system/cgnetnsd.service",
              "/etc/tmpfiles.d/cgnetns.conf", "/etc/init.d/cgnetnsd",
              "/usr/share/cgnetns/portage/bashrc", "/usr/share/cgnetns/portage/make.conf.example",
              "/usr/share/cgnetns/portage/README.rst", ALLOW):
        assert os.path.isfile(r + p), p
    for mod in ("__init__.py", "paths.py", "_paths.py", "broker.py", "build.py", "cli/run.py",
                "cli/broker.py", "__pycache__/paths.cpython-%d%d.pyc" % sys.version_info[:2]):
        assert os.path.isfile(os.path.join(layout.package, mod)), mod


def test_the_package_reads_the_installed_paths(layout):
    """The installed package, imported from DESTDIR, names what the same make
    compiled into the helper; the checkout's own _paths.py plays no part."""
    code = ("import json, cgnetns, cgnetns.paths as p; print(json.dumps([cgnetns.__file__, "
            "p.HELPER, p.FRONT, p.ALLOW_PATH, p.PINS_DIR, p.BROKER_SOCKET, p.MASQ_DIR, "
            "p.MASQ_BIN_DIR, p.PREFIX, p.BINDIR, p.SYSCONFDIR]))")
    out = sh([PY, "-c", code], cwd="/", env=dict(os.environ, PYTHONPATH=layout.root + layout.site))
    got = json.loads(out)
    assert got[0] == layout.package + "/__init__.py"
    assert got[1:] == [HELPER, FRONT, ALLOW, RUN_DIR + "/pins", SOCKET, PKGLIBDIR + "/masq",
                       PKGLIBDIR + "/bin", "/usr", "/usr/bin", "/etc"]


def test_no_usr_local_in_any_installed_file(layout):
    # Not install paths: the host's programs in the allow list it was written
    # with, and the standard PATH search list (testbed/topology.py).
    with open(layout.root + ALLOW, "rb") as f:
        host_programs = [l.strip() for l in f if l.startswith(b"/usr/local/")]
    allowed = [SYSTEM_PATH.encode()] + host_programs
    bad = []
    for path in installed_files(layout.root):
        if os.path.islink(path):
            data = os.fsencode(os.readlink(path))
        else:
            with open(path, "rb") as f:
                data = f.read()
        if path == layout.root + ALLOW:
            data = b"\n".join(l for l in data.splitlines() if l.strip() not in host_programs)
        for a in allowed:
            data = data.replace(a, b"")
        for m in re.finditer(rb"/usr/local", data):
            bad.append("%s: %r" % (path[len(layout.root):], data[max(0, m.start() - 30):m.end() + 30]))
    assert not bad, "installed files name /usr/local:\n" + "\n".join(bad)


def strings(path):
    with open(path, "rb") as f:
        return {s.decode() for s in re.findall(rb"/[\x21-\x7e]{3,}", f.read())}


def test_compiled_in_paths(layout):
    helper, front = strings(layout.root + HELPER), strings(layout.root + FRONT)
    for s in (ALLOW, RUN_DIR + "/pins", SOCKET):
        assert s in helper, (s, sorted(x for x in helper if x.startswith(("/usr", "/etc", "/run"))))
        assert s in front, s
    assert HELPER in front
    # nothing else below /usr or /etc: the paths come from one place
    assert {s for s in helper | front if s.startswith(("/usr/", "/etc/"))} == {HELPER, ALLOW}


def test_units_and_scripts_name_the_installed_paths(layout):
    r = layout.root

    def text(p):
        with open(r + p) as f:
            return f.read()
    assert "ExecStart=/usr/bin/cgnetnsd\n" in text("/etc/systemd/system/cgnetnsd.service")
    assert "ListenStream=%s\n" % SOCKET in text("/etc/systemd/system/cgnetnsd.socket")
    assert 'command="/usr/bin/cgnetnsd"' in text("/etc/init.d/cgnetnsd")
    assert "d %s " % RUN_DIR in text("/etc/tmpfiles.d/cgnetns.conf")
    gcc = text(PKGLIBDIR + "/masq/gcc")
    assert "masq='%s/masq'" % PKGLIBDIR in gcc and "exec '%s' distcc 'gcc'" % FRONT in gcc
    assert "CGNETNS_MASQ_DIR=%s/masq" % PKGLIBDIR in text("/usr/share/cgnetns/portage/bashrc")
    assert "/usr/lib/cgnetns/cgnetns\\-helper" in text("/usr/share/man/man8/cgnetns-exec.8")
    assert "/usr/bin/cgnetns\\-exec" in text("/usr/share/man/man8/cgnetns-exec.8")
    for path in installed_files(r):
        if not path.startswith(r + layout.site) and not os.path.islink(path):
            with open(path, "rb") as f:
                left = re.findall(rb"@[A-Z_]+@", f.read())
            assert not left, (path, left)


# --------------------------------------------------------------------------
# a broker request end to end, from the layout

@pytest.fixture
def test_cgroup():
    """A cgroup of the test's own, marked delegated, so that the installed
    cgnetns-run makes its build below it (cgnetns/cgroups.py choose_parent),
    out of the way of any cgnetns-gc on the host, which never sees this
    run's record (it lives on the private /run/cgnetns)."""
    path = os.path.join(cgroup2_root(), "cgnetns-installtest-" + secrets.token_hex(4))
    os.mkdir(path)
    try:
        os.setxattr(path, "trusted.delegate", b"1")
        yield path
    finally:
        remove_cgroup_tree(path)


def remove_cgroup_tree(path):
    """Kill what is left in PATH's tree (by PID; all started by this test),
    then remove the tree bottom up."""
    deadline = time.monotonic() + 10
    for d, dirs, files in os.walk(path, topdown=False):
        while True:
            with open(os.path.join(d, "cgroup.procs")) as f:
                pids = [int(x) for x in f.read().split()]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            assert time.monotonic() < deadline, "cannot empty %s" % d
            time.sleep(0.05)
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(d)


def test_broker_request_end_to_end(layout, test_cgroup):
    layout.add_probe()
    cfg = {"root": layout.root, "site": layout.root + layout.site, "probe": layout.probe,
           "out": layout.out}
    made_run_dir = not os.path.isdir(RUN_DIR)
    if made_run_dir:  # the tmpfs needs a place; cgnetns itself makes it too
        os.makedirs(RUN_DIR, 0o755)

    def into_cgroup():
        with open(os.path.join(test_cgroup, "cgroup.procs"), "w") as f:
            f.write("0")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": cfg["site"], "LANG": "C.UTF-8"}
    try:
        r = subprocess.run(["unshare", "-m", "-n", "--propagation", "private", "--",
                            PY, os.path.abspath(__file__), "inside", json.dumps(cfg)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                           cwd="/", timeout=120, preexec_fn=into_cgroup)
    finally:
        if made_run_dir:
            with contextlib.suppress(OSError):
                os.rmdir(RUN_DIR)
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0 and lines, "inside failed (%d):\n%s\n%s" % (r.returncode, r.stdout,
                                                                          r.stderr)
    got = json.loads(lines[-1])
    print(json.dumps({k: v for k, v in got.items() if k != "reports"}, indent=1))
    assert got["run_rc"] == 0, "the installed cgnetns-run failed:\n" + got["run_output"]
    for how, rep in got["reports"].items():
        assert rep is not None, "%s: the probe did not run: %s" % (how, got["stderr"][how])
        print(how, {k: rep[k] for k in ("uid", "euid", "netns", "connect")},
              "NoNewPrivs", rep["status_d"]["NoNewPrivs"])

    # the installed layout was the one in use
    assert got["package"] == layout.package + "/__init__.py"
    helper = got["helper"]
    assert helper["uid"] == 0 and helper["mode"] & 0o7777 == 0o4755 and not helper["nosuid"]
    assert helper["sha256"] == digest(layout.root + HELPER)
    assert got["front_sha256"] == digest(layout.root + FRONT)
    # the installed cgnetnsd took its socket and its helper from _paths.py
    assert "serving %s with %s" % (SOCKET, HELPER) in got["broker_log"], got["broker_log"]
    # the old /usr/local install, where there is one, was out of reach
    assert all(v in ("masked", "absent") for v in got["masked"].values()), got["masked"]

    approved, build_ns, token = tuple(got["approved"]), tuple(got["build_netns"]), got["token"]
    assert approved != build_ns
    direct, suid, broker = got["reports"]["direct"], got["reports"]["suid"], got["reports"]["broker"]
    # control: the build itself has no way to the server
    assert got["rc"]["direct"] == 0 and direct["connect"].startswith("connect:"), direct["connect"]
    assert tuple(direct["netns"]) == build_ns and direct["uid"] == 65534
    # broker path: no_new_privs, the probe stays in the build's namespace and
    # its socket is made in the approved one
    assert got["rc"]["broker"] == 0, got["stderr"]["broker"]
    assert broker["connect"] == "token:" + token, (broker["connect"], got["stderr"]["broker"])
    assert tuple(broker["netns"]) == build_ns
    assert broker["status_d"]["NoNewPrivs"] == "1"
    assert broker["uid"] == broker["euid"] == 65534
    assert broker["status_d"]["CapEff"] == "0000000000000000"
    # set-user-ID path: the installed helper joins the approved namespace
    assert got["rc"]["suid"] == 0, got["stderr"]["suid"]
    assert suid["connect"] == "token:" + token, (suid["connect"], got["stderr"]["suid"])
    assert tuple(suid["netns"]) == approved
    assert suid["status_d"]["NoNewPrivs"] == "0"
    assert suid["uid"] == suid["euid"] == 65534
    assert suid["status_d"]["CapEff"] == "0000000000000000"
    # one request reached the broker: the no_new_privs one
    joins = re.findall(r"pid=(\d+) uid=65534 program=\S+: join ", got["broker_log"])
    assert joins == [str(broker["pid"])], got["broker_log"]


# --------------------------------------------------------------------------
# inside the private mount and network namespace (python3 test_install.py inside CFG)

BUILD_SCRIPT = r'''
P=$1 OUT=$2 PORT=$3
stat -L -c '%d %i' /proc/self/ns/net > "$OUT/build-netns"
for how in direct suid broker; do
    case $how in
        direct) set -- "$P" ;;
        suid) set -- /usr/bin/cgnetns-exec "$P" ;;
        broker) set -- setpriv --no-new-privs /usr/bin/cgnetns-exec "$P" ;;
    esac
    "$@" report "$OUT/$how.json" --connect="$PORT" 2> "$OUT/$how.err"
    echo $? > "$OUT/$how.rc"
done
'''


def _mount(*args):
    subprocess.run(["mount"] + list(args), check=True)


def graft(src_dir, dst_dir, names):
    """DESTDIR's entries NAMES of SRC_DIR at their places in DST_DIR: bind
    mounts when every place exists, else a read-only overlay of SRC_DIR over
    DST_DIR (the real entries stay visible; nothing is created on the host)."""
    if all(os.path.lexists(os.path.join(dst_dir, n)) for n in names):
        for n in names:
            _mount("--bind", os.path.join(src_dir, n), os.path.join(dst_dir, n))
        return "bind"
    _mount("-t", "overlay", "overlay", "-o", "ro,lowerdir=%s:%s" % (src_dir, dst_dir), dst_dir)
    return "overlay"


class TokenServer:
    """127.0.0.1 in the approved namespace: each connection gets the token."""

    def __init__(self):
        self.token = secrets.token_hex(8)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with c:
                c.sendall(self.token.encode() + b"\n")


def inside(cfg):
    root, out = cfg["root"], cfg["out"]
    res = {"mounts": {}}
    res["mounts"]["/usr/bin"] = graft(root + "/usr/bin", "/usr/bin",
                                      ("cgnetns-exec",) + COMMANDS)
    res["mounts"]["/usr/lib"] = graft(root + "/usr/lib", "/usr/lib", ("cgnetns",))
    res["mounts"]["/etc"] = graft(root + "/etc", "/etc", ("cgnetns",))
    _mount("-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", "cgnetns-installtest", RUN_DIR)
    # A cgnetns installed under /usr/local on this host (make install's
    # default) is put out of reach here, so that a /usr/local path left in
    # the layout would fail rather than find it.
    res["masked"] = {}
    empty = os.path.join(out, "empty")
    open(empty, "w").close()
    os.chmod(empty, 0o644)
    for p in ["/usr/local/lib/cgnetns"] + ["/usr/local/bin/" + n for n in ("cgnetns-exec",) + COMMANDS]:
        if not os.path.lexists(p):
            res["masked"][p] = "absent"
        elif os.path.isdir(p):
            _mount("-t", "tmpfs", "-o", "ro,mode=0755", "cgnetns-installtest-mask", p)
            res["masked"][p] = "masked"
        else:
            _mount("--bind", empty, p)
            res["masked"][p] = "masked"
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)

    import cgnetns  # the installed package (PYTHONPATH)
    res["package"] = cgnetns.__file__
    st, vfs = os.stat(HELPER), os.statvfs(HELPER)
    res["helper"] = {"uid": st.st_uid, "mode": st.st_mode, "sha256": digest(HELPER),
                     "nosuid": bool(vfs.f_flag & os.ST_NOSUID)}
    res["front_sha256"] = digest(FRONT)
    ns = os.stat("/proc/self/ns/net")
    res["approved"] = [ns.st_dev, ns.st_ino]

    server = TokenServer()
    res["token"] = server.token
    log_path = os.path.join(out, "broker.log")
    env = dict(os.environ, CGNETNS_RUN_NO_BROKER="1")
    broker = None
    try:
        with open(log_path, "wb") as log:
            broker = subprocess.Popen([BINDIR + "/cgnetnsd"], stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT, env=env, cwd="/")
        deadline = time.monotonic() + 20
        while True:
            with open(log_path) as f:
                text = f.read()
            if "serving" in text:
                break
            if broker.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("cgnetnsd did not start: " + text)
            time.sleep(0.05)
        r = subprocess.run([BINDIR + "/cgnetns-run", "--unshare-net", "--user", "nobody",
                            "--name", "installtest", "--", "/bin/sh", "-c", BUILD_SCRIPT, "sh",
                            cfg["probe"], out, str(server.port)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                           cwd="/", timeout=60)
        res["run_rc"], res["run_output"] = r.returncode, r.stdout
    finally:
        if broker is not None:
            broker.terminate()
            try:
                broker.wait(10)
            except subprocess.TimeoutExpired:
                broker.kill()
                broker.wait()
        server.sock.close()
    with open(log_path) as f:
        res["broker_log"] = f.read()
    def read(name, default=None):
        with contextlib.suppress(FileNotFoundError):
            with open(os.path.join(out, name)) as f:
                return f.read()
        return default
    res["build_netns"] = [int(x) for x in read("build-netns", "").split()]
    res["reports"], res["rc"], res["stderr"] = {}, {}, {}
    for how in ("direct", "suid", "broker"):
        res["rc"][how] = int(read(how + ".rc", "-1"))
        res["stderr"][how] = read(how + ".err", "")
        p = os.path.join(out, how + ".json")
        rep = None
        if os.path.exists(p):
            with open(p) as f:
                rep = json.load(f)
            rep["status_d"] = {k: v.strip() for k, v in (
                l.split(":", 1) for l in rep.pop("status").splitlines() if ":" in l)}
        res["reports"][how] = rep
    print(json.dumps(res))
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["inside"]:
    sys.exit(inside(json.loads(sys.argv[2])))
