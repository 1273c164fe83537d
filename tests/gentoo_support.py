"""Gentoo's real sandbox and a real emerge for the tests (tracker issue 12).

What Portage does to a build phase by default -- FEATURES="sandbox
usersandbox userpriv network-sandbox ..." -- is run here for real instead of
being imitated with ``setpriv --no-new-privs``:

* ``sandbox``: ``/usr/bin/sandbox`` where the host has it (Gentoo); else
  Gentoo's sandbox 2.46 built from the vendored tarball (``<repo>/../shared/
  vendor/sandbox-2.46.tar.gz``, or ``$CGNETNS_SANDBOX_SRC``: a tarball or a
  source directory) once into ``/var/cache/cgnetns-tests/sandbox-<sha12>``,
  keyed by the source's sha256.  The build happens in a temporary directory
  beside it and is renamed into place, so a killed build never leaves a half
  cache behind (its leftovers are removed by the next build).  About 15 s on
  2 cores, once; needs autoconf, automake, libtool, autoconf-archive, gawk.
* ``emerge``: Portage 3.0.83 from PyPI in a venv of Debian's ``/usr/bin/python3``
  (userpriv phases run as nobody, who cannot use an interpreter under /root),
  cached in ``/var/cache/cgnetns-tests/portage-venv-3.0.83`` the same way
  (about 4 s, once; PyPI must be reachable).
  Each test gets a playground: an EPREFIX (``PORTAGE_OVERRIDE_EPREFIX``) with
  a one-ebuild repository, a profile and a make.conf, removed afterwards.
* Portage runs ``portage.const.SANDBOX_BINARY``, which is ``/usr/bin/sandbox``
  whatever EPREFIX is.  On a host without it, emerge runs in a private mount
  namespace where ``/usr/bin`` is a tmpfs holding a bind mount of every entry
  of the real ``/usr/bin`` (so each file keeps its identity: device, inode,
  owner) plus ``sandbox``, a bind mount of the built one; ``/usr/lib`` gets
  ``libsandbox.so`` the same way (libsandbox re-inserts itself into LD_PRELOAD
  by bare name).  Nothing outside that namespace changes.

Missing tools or sources are failures, not skips: CI must run these tests.
Everything a test makes (temporary trees, mount namespaces, processes) is
removed by the test; only the caches above stay.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time

import pytest

from testbed.sandbox import CACHE_ROOT, get_sandbox
from testbed.sandbox import SetupError as GentooSetupError
from testbed.sandbox import cache_lock as _cache_lock
from testbed.sandbox import remove_stale as _remove_stale
from testbed.sandbox import run_logged as _run_logged
from testbed.sandbox import world_readable as _world_readable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORTAGE_VERSION = "3.0.83"
USER_PY = "/usr/bin/python3"          # Debian's interpreter: usable by nobody
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUILD_USER = "nobody"
BUILD_GROUP = "nogroup"


# -- small helpers ----------------------------------------------------------------

def run_bounded(argv, timeout, **kw):
    """Run ARGV (stdout and stderr together, as text) in a session of its own.

    On timeout (or an interrupt) its process group gets SIGTERM -- cgnetns-run
    forwards it and tears its build down, emerge and sandbox end their children --
    then SIGKILL; a timeout fails the test with the output so far."""
    proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(argv, proc.returncode, out)
    except BaseException as exc:
        out = ""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                out, _ = proc.communicate(timeout=30)
                break
            except subprocess.TimeoutExpired:
                continue
        if isinstance(exc, subprocess.TimeoutExpired):
            pytest.fail(f"{' '.join(argv)[:300]}: no end after {timeout} s:\n{(out or '')[-4000:]}")
        raise


# -- Gentoo's sandbox (testbed/sandbox.py) ---------------------------------------

@pytest.fixture(scope="session")
def real_sandbox():
    t0 = time.monotonic()
    try:
        sb = get_sandbox()
    except GentooSetupError as exc:
        pytest.fail(str(exc), pytrace=False)
    print(f"real_sandbox: {sb.how} ({time.monotonic() - t0:.1f} s)")
    return sb


# -- Portage in a venv ------------------------------------------------------------------

def repoint_scripts(venv, old, new):
    """A venv's console scripts name their interpreter by path: those under
    VENV/bin naming OLD are made to name NEW, the venv's final place."""
    bindir = os.path.join(venv, "bin")
    for name in os.listdir(bindir):
        p = os.path.join(bindir, name)
        if os.path.islink(p) or not os.path.isfile(p):
            continue
        with open(p, "rb") as f:
            data = f.read()
        if old.encode() in data:
            with open(p, "wb") as f:
                f.write(data.replace(old.encode(), new.encode()))


def build_portage_venv(version=PORTAGE_VERSION):
    """A venv of /usr/bin/python3 with portage==VERSION from PyPI, cached; returns its path."""
    final = os.path.join(CACHE_ROOT, f"portage-venv-{version}")
    stamp = os.path.join(final, "lib", "portage", "bin", "ebuild.sh")
    if os.path.isfile(stamp):
        return final
    if not os.access(USER_PY, os.X_OK):
        raise GentooSetupError(f"{USER_PY} is missing (Debian package python3)")
    with _cache_lock("portage-venv"):
        if os.path.isfile(stamp):
            return final
        _remove_stale(f".portage-venv-{version}-build-")
        tmp = tempfile.mkdtemp(prefix=f".portage-venv-{version}-build-", dir=CACHE_ROOT)
        try:
            log = os.path.join(tmp, "build.log")
            venv = os.path.join(tmp, "venv")
            env = {k: v for k, v in os.environ.items()
                   if k.startswith(("PIP_", "HTTP", "HTTPS", "NO_PROXY", "SSL_", "REQUESTS_"))
                   or k.lower() in ("http_proxy", "https_proxy", "no_proxy")}
            env.update(PATH=SYSTEM_PATH, LANG="C.UTF-8", HOME=tmp, TMPDIR=tmp)
            try:
                _run_logged([USER_PY, "-m", "venv", venv], log, tmp, env)
            except GentooSetupError as exc:
                raise GentooSetupError(f"{exc}\n(Debian: apt-get install python3-venv)") from None
            _run_logged([os.path.join(venv, "bin", "python3"), "-m", "pip", "install",
                         "--quiet", "--disable-pip-version-check", "--no-compile",
                         f"portage=={version}"], log, tmp, env)
            repoint_scripts(venv, venv, final)
            if not os.path.isfile(os.path.join(venv, "lib", "portage", "bin", "ebuild.sh")):
                raise GentooSetupError(
                    f"portage=={version} installed no lib/portage/bin (log {log})")
            _world_readable(venv)
            os.rename(venv, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


@pytest.fixture(scope="session")
def portage_venv():
    t0 = time.monotonic()
    try:
        venv = build_portage_venv()
    except GentooSetupError as exc:
        pytest.fail(str(exc), pytrace=False)
    print(f"portage_venv: {venv} ({time.monotonic() - t0:.1f} s)")
    return venv


# -- /usr/bin/sandbox in a private mount namespace ---------------------------------------

# Run by /usr/bin/python3 -I as root right after `unshare --mount --propagation
# private`; argv: [--add DIR NAME SOURCE]... [--cgroup2] [--record FILE] -- COMMAND...
# --add: DIR becomes a tmpfs with a bind mount of every regular file and
#   directory of the real DIR (same device and inode: the files keep their
#   identity, also for cgnetns's allow-list checks), its symlinks re-made, and NAME
#   bound from SOURCE; then the tmpfs is made read-only.  Used for /usr/bin/sandbox
#   (portage.const.SANDBOX_BINARY) and /usr/lib/libsandbox.so: libsandbox puts
#   "libsandbox.so" by bare name into LD_PRELOAD wherever it restores a preload a
#   program dropped, so it must be where the dynamic linker looks.
# --cgroup2: cgroup2 is mounted at /sys/fs/cgroup (Portage's FEATURES=cgroup looks
#   only there; this host has the hybrid layout); when the caller's cgroup lacks the
#   cpu, io and memory controllers Portage wants, PORTAGE_CGROUP_ROOT is set to
#   <own cgroup>/portage, as README.rst tells Portage users (else Portage would put
#   the build at the cgroup2 root, outside the cgnetns build).
# --record: FILE gets "own=<cgroup2 path of this process>" and
#   "portage_cgroup_root=<what was set, or empty>".
MOUNT_NS_SCRIPT = r'''
import ctypes, os, stat, sys
libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC = 32, 4096, 16384
def mount(src, tgt, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    if libc.mount(enc(src), enc(tgt), enc(fstype), flags, enc(data)) != 0:
        e = ctypes.get_errno()
        sys.exit("mountns: mount %s on %s: %s" % (src, tgt, os.strerror(e)))
def bind_file(src, dst):
    os.close(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    mount(src, dst, None, MS_BIND)
def add_to_dir(top, extra):
    real = os.open(top, os.O_PATH | os.O_DIRECTORY)
    names = os.listdir(top)
    mount("cgnetns-test", top, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    src = "/proc/self/fd/%d/" % real
    for name in names:
        st = os.lstat(name, dir_fd=real)
        dst = os.path.join(top, name)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=real), dst)
        elif stat.S_ISDIR(st.st_mode):
            os.mkdir(dst, 0o755)
            mount(src + name, dst, None, MS_BIND | MS_REC)
        elif stat.S_ISREG(st.st_mode):
            bind_file(src + name, dst)   # set-user-ID files keep working
    for name, source in extra.items():
        if name not in names:
            bind_file(source, os.path.join(top, name))
    mount(None, top, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "mode=0755")
    os.close(real)
args = sys.argv[1:]
cmd = args[args.index("--") + 1:]
opts = args[:args.index("--")]
adds = {}
while "--add" in opts:
    i = opts.index("--add")
    adds.setdefault(opts[i + 1], {})[opts[i + 2]] = opts[i + 3]
    del opts[i:i + 4]
for top, extra in adds.items():
    add_to_dir(top, extra)
own = next((l[3:].strip() for l in open("/proc/self/cgroup") if l.startswith("0::")), "")
if "--cgroup2" in opts:
    mount("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    path = "/sys/fs/cgroup" + own
    have = set(open(os.path.join(path, "cgroup.controllers")).read().split())
    if not {"cpu", "io", "memory"} <= have:
        os.environ["PORTAGE_CGROUP_ROOT"] = os.path.join(path, "portage")
if "--record" in opts:
    with open(opts[opts.index("--record") + 1], "w") as f:
        f.write("own=%s\nportage_cgroup_root=%s\n"
                % (own, os.environ.get("PORTAGE_CGROUP_ROOT", "")))
os.environ.pop("PYTHONPATH", None)
os.execvp(cmd[0], cmd)
'''


def mountns_argv(cmd, sandbox, cgroup2=False, record=None):
    """argv that runs CMD as root with /usr/bin/sandbox present (see MOUNT_NS_SCRIPT)."""
    opts = []
    if not sandbox.system:
        opts += ["--add", "/usr/bin", "sandbox", sandbox.binary,
                 "--add", "/usr/lib", "libsandbox.so", sandbox.lib]
    if cgroup2:
        opts.append("--cgroup2")
    if record:
        opts += ["--record", record]
    unshare = shutil.which("unshare", path=SYSTEM_PATH)
    return [unshare, "--mount", "--propagation", "private", "--",
            USER_PY, "-I", "-c", MOUNT_NS_SCRIPT, *opts, "--", *cmd]


# -- a Portage playground ------------------------------------------------------------------

# Test trees go outside /tmp and /var/tmp: the sandbox's own config lets everyone
# write there.
WORK_ROOT = os.path.join(CACHE_ROOT, "work")
CATEGORY = "cgnetns-test"
PACKAGE = "distcc-probe"
CPV = f"{CATEGORY}/{PACKAGE}-1"
PROBE_SHARE = "/usr/share/cgnetns-probe"       # where the ebuild installs what it saw

EBUILD = textwrap.dedent('''\
    # cgnetns test package: compiles @N@ C files with ${CC:-gcc} (emake) in src_compile
    # and installs what that phase saw into @SHARE@: its network links, cgroup,
    # uid, sandbox state and FEATURES, and (CGNETNS_TEST_PROBE_DIR set) what the
    # probe compiler recorded of each distcc process.
    EAPI=8
    DESCRIPTION="cgnetns test package"
    HOMEPAGE="https://example.invalid/cgnetns"
    SRC_URI=""
    LICENSE="GPL-2"
    SLOT="0"
    KEYWORDS="amd64"
    S="${WORKDIR}"

    src_unpack() {
        local i objs=
        for ((i = 0; i < @N@; i++)); do
            printf 'int part%d(int x)\\n{\\n\\treturn x * 3 + %d;\\n}\\n' "${i}" "${i}" \\
                > part${i}.c || die
            objs+=" part${i}.o"
        done
        printf 'all:%s\\n%%.o: %%.c\\n\\t$(CC) $(CFLAGS) -c $< -o $@\\n' "${objs}" > Makefile || die
    }

    src_compile() {
        ip -o link > links.txt || die
        sed -n 's/^0:://p' /proc/self/cgroup > cgroup.txt || die
        id -u > uid.txt || die
        {
            echo "features=${FEATURES}"
            echo "ld_preload=${LD_PRELOAD}"
            echo "sandbox_on=${SANDBOX_ON}"
            sed -n 's/^\\(NoNewPrivs\\|TracerPid\\):[[:space:]]*/\\1=/p' /proc/self/status
            echo "libsandbox=$(grep -c '/libsandbox\\.so$' /proc/self/maps)"
            echo "gcc=$(type -P gcc)"
            echo "path=${PATH}"
        } > phase.txt || die
        local saved_path=${PATH}
        if [[ -n ${CGNETNS_TEST_PROBE_DIR} ]]; then
            # the probe compiler right after the masquerade directory (distcc takes
            # that out of PATH and then looks for gcc), else first
            mkdir "${T}/probe-out" || die
            export CGNETNS_TEST_PROBE_OUT=${T}/probe-out
            if [[ ${PATH%%:*} == */masq ]]; then
                PATH=${PATH%%:*}:${CGNETNS_TEST_PROBE_DIR}:${PATH#*:}
            else
                PATH=${CGNETNS_TEST_PROBE_DIR}:${PATH}
            fi
        fi
        emake CC="${CC:-gcc}" CFLAGS="${CFLAGS}"
        PATH=${saved_path}
        unset CGNETNS_TEST_PROBE_OUT
    }

    src_install() {
        insinto @SHARE@
        doins *.o links.txt cgroup.txt uid.txt phase.txt
        if [[ -d ${T}/probe-out ]] && [[ -n $(ls "${T}/probe-out") ]]; then
            insinto @SHARE@/probe-out
            doins "${T}"/probe-out/*
        fi
    }
    ''')


class Playground:
    """A Portage configuration in its own EPREFIX, with one repository holding CPV.

    ``make_conf``: extra make.conf lines (after the playground's own, so they win);
    ``make_conf_base``: text put first (e.g. contrib/portage/make.conf.example);
    ``bashrc``: the text of /etc/portage/bashrc.  Remove with ``cleanup()``.
    """

    def __init__(self, venv, sandbox, nfiles=6, make_conf=(), make_conf_base="", bashrc=None,
                 probe=False):
        self.venv = venv
        self.sandbox = sandbox
        self.nfiles = nfiles
        os.makedirs(WORK_ROOT, mode=0o755, exist_ok=True)
        os.chmod(WORK_ROOT, 0o755)
        self.top = tempfile.mkdtemp(prefix="emerge-", dir=WORK_ROOT)
        os.chmod(self.top, 0o755)
        self.eprefix = os.path.join(self.top, "eprefix")
        self.repo = os.path.join(self.eprefix, "var", "db", "repos", CATEGORY)
        self.tmpdir = os.path.join(self.eprefix, "var", "tmp")
        self.log = os.path.join(self.top, "emerge.log")
        try:
            if probe:      # the probe compiler for src_compile (see EBUILD)
                probe_dir = os.path.join(self.top, "probe")
                os.mkdir(probe_dir, 0o755)
                write_probe(probe_dir)
                make_conf = [*make_conf, f'CGNETNS_TEST_PROBE_DIR="{probe_dir}"']
            self._write(make_conf, make_conf_base, bashrc)
        except BaseException:
            self.cleanup()
            raise

    def _file(self, path, text, mode=0o644):
        """Write PATH (absolute, or relative to EPREFIX)."""
        path = os.path.join(self.eprefix, path)
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def _write(self, make_conf, make_conf_base, bashrc):
        e = self.eprefix
        for d in ("etc/portage", "var/db/pkg", "var/lib/portage", "var/cache/distfiles",
                  "var/cache/binpkgs", "var/log", "var/tmp", "usr/share"):
            os.makedirs(os.path.join(e, d), mode=0o755, exist_ok=True)
        os.chmod(self.tmpdir, 0o1777)
        # Portage's global config (make.globals: the default FEATURES, ...) is read
        # from EPREFIX/share/portage/config in a module install.
        # Its repos.conf names the gentoo repository: this one names only ours.
        shutil.copytree(os.path.join(self.venv, "share", "portage"),
                        os.path.join(e, "share", "portage"))
        _world_readable(os.path.join(e, "share"))
        self._file("share/portage/config/repos.conf", f"[DEFAULT]\nmain-repo = {CATEGORY}\n")
        r = self.repo
        self._file(f"{r}/profiles/repo_name", CATEGORY + "\n")
        self._file(f"{r}/profiles/categories", CATEGORY + "\n")
        self._file(f"{r}/metadata/layout.conf",
                   "masters =\nthin-manifests = true\nsign-manifests = false\n"
                   "sign-commits = false\nprofile-formats = portage-2\n")
        self._file(f"{r}/profiles/default/eapi", "8\n")
        self._file(f"{r}/profiles/default/make.defaults", textwrap.dedent('''\
            ARCH="amd64"
            ACCEPT_KEYWORDS="amd64"
            CHOST="x86_64-pc-linux-gnu"
            ELIBC="glibc"
            KERNEL="linux"
            USERLAND="GNU"
            IUSE_IMPLICIT="prefix prefix-guest"
            USE_EXPAND_IMPLICIT="ARCH ELIBC KERNEL"
            USE_EXPAND_VALUES_ARCH="amd64"
            USE_EXPAND_VALUES_ELIBC="glibc"
            USE_EXPAND_VALUES_KERNEL="linux"
            '''))
        ebuild = EBUILD.replace("@N@", str(self.nfiles)).replace("@SHARE@", PROBE_SHARE)
        self._file(f"{r}/{CPV.split('/')[0]}/{PACKAGE}/{PACKAGE}-1.ebuild", ebuild)
        os.symlink(os.path.join(r, "profiles", "default"),
                   os.path.join(e, "etc", "portage", "make.profile"))
        self._file("etc/portage/repos.conf", textwrap.dedent(f'''\
            [DEFAULT]
            main-repo = {CATEGORY}

            [{CATEGORY}]
            location = {r}
            auto-sync = no
            '''))
        lines = ["# cgnetns test playground",
                 f'PORTAGE_TMPDIR="{self.tmpdir}"',
                 f'DISTDIR="{e}/var/cache/distfiles"',
                 f'PKGDIR="{e}/var/cache/binpkgs"',
                 f'PORTAGE_USERNAME="{BUILD_USER}"',
                 f'PORTAGE_GRPNAME="{BUILD_GROUP}"',
                 'ACCEPT_LICENSE="*"',
                 'CFLAGS="-O2"',
                 'MAKEOPTS="-j4"',
                 "", make_conf_base.rstrip("\n"), "",
                 "# this test's settings",
                 *make_conf, ""]
        self._file("etc/portage/make.conf", "\n".join(lines))
        if bashrc is not None:
            self._file("etc/portage/bashrc", bashrc)

    def env(self, **extra):
        """Environment for emerge (as root)."""
        env = {"PATH": SYSTEM_PATH, "HOME": self.top, "LANG": "C.UTF-8", "TERM": "dumb",
               "NOCOLOR": "true", "PORTAGE_OVERRIDE_EPREFIX": self.eprefix,
               "PORTAGE_USERNAME": BUILD_USER, "PORTAGE_GRPNAME": BUILD_GROUP}
        env.update(extra)
        return env

    def emerge_argv(self, *args, cgroup2=False):
        """emerge -1 CPV (or ARGS) as root, in a mount namespace where /usr/bin/sandbox
        exists; what that namespace's set-up saw goes to record() (see MOUNT_NS_SCRIPT)."""
        emerge = [os.path.join(self.venv, "bin", "emerge"), "--color=n", "--quiet-build=n",
                  *(args or ("-1", "=" + CPV))]
        return mountns_argv(emerge, self.sandbox, cgroup2=cgroup2,
                            record=os.path.join(self.top, "mountns.txt"))

    def record(self):
        with open(os.path.join(self.top, "mountns.txt")) as f:
            return dict(l.rstrip("\n").split("=", 1) for l in f if "=" in l)

    def installed(self, name):
        """A file the package installed into PROBE_SHARE (None when it is not there)."""
        path = os.path.join(self.eprefix, PROBE_SHARE.lstrip("/"), name)
        if not os.path.exists(path):
            return None
        with open(path, errors="replace") as f:
            return f.read()

    def installed_objects(self):
        d = os.path.join(self.eprefix, PROBE_SHARE.lstrip("/"))
        return sorted(n for n in os.listdir(d) if n.endswith(".o")) if os.path.isdir(d) else []

    def is_installed(self):
        """CPV is recorded in the playground's package database."""
        return os.path.isdir(os.path.join(self.eprefix, "var", "db", "pkg", CPV))

    def phase(self):
        """key=value lines the compiling phase wrote (phase.txt), as a dict."""
        text = self.installed("phase.txt") or ""
        return dict(l.split("=", 1) for l in text.splitlines() if "=" in l)

    def links(self):
        text = self.installed("links.txt")
        return None if text is None else [l.split(":")[1].strip() for l in text.splitlines()
                                          if l.strip()]

    def probes(self):
        d = os.path.join(self.eprefix, PROBE_SHARE.lstrip("/"), "probe-out")
        return read_probes(d) if os.path.isdir(d) else []

    def cleanup(self):
        if self.top:
            shutil.rmtree(self.top, ignore_errors=True)
            self.top = None


# -- seeing distcc from inside: a probe compiler -------------------------------------------

# distcc runs the preprocessor locally, as its own child, with the compiler it found
# in PATH.  A probe directory holding "gcc" and "<machine>-gcc" (distcc rewrites
# gcc to the name with gcc's target triplet) records, when its parent is distcc,
# the parent's /proc status (TracerPid, NoNewPrivs, Uid), maps (libsandbox.so
# loaded?) and environment (LD_PRELOAD), then runs the real compiler.
PROBE_SCRIPT = textwrap.dedent('''\
    #!/bin/sh
    # cgnetns test probe: records the distcc process that runs this compiler
    exe=$(readlink /proc/$PPID/exe)
    case $exe in
    */distcc)
        f=@OUT@/distcc.$PPID.$$
        { echo "Exe:	$exe"; cat /proc/$PPID/status; } > "$f.status" 2>&1
        cat /proc/$PPID/maps > "$f.maps" 2>&1
        tr '\\0' '\\n' < /proc/$PPID/environ > "$f.environ" 2>&1
        ;;
    esac
    exec /usr/bin/@NAME@ "$@"
    ''')


def write_probe(bindir, outdir='"${CGNETNS_TEST_PROBE_OUT}"'):
    """The probe compilers in BINDIR, writing to OUTDIR (a shell word; the directory
    must exist when distcc runs; by default the one the test ebuild makes)."""
    machine = subprocess.run(["gcc", "-dumpmachine"], stdout=subprocess.PIPE, text=True,
                             check=True, env={"PATH": SYSTEM_PATH}).stdout.strip()
    for name in ("gcc", f"{machine}-gcc"):
        path = os.path.join(bindir, name)
        with open(path, "w") as f:
            f.write(PROBE_SCRIPT.replace("@OUT@", outdir).replace("@NAME@", name))
        os.chmod(path, 0o755)


def read_probes(outdir):
    """[{pid, status: {key: value}, maps: text, environ: {k: v}}] of each distcc seen."""
    seen = []
    names = sorted(n[:-len(".status")] for n in os.listdir(outdir) if n.endswith(".status"))
    for base in names:
        def text(ext):
            try:
                with open(os.path.join(outdir, base + ext), errors="replace") as f:
                    return f.read()
            except FileNotFoundError:
                return ""
        status = {}
        for line in text(".status").splitlines():
            k, _, v = line.partition(":")
            status[k.strip()] = v.strip()
        environ = dict(l.split("=", 1) for l in text(".environ").splitlines() if "=" in l)
        seen.append({"name": base, "status": status, "maps": text(".maps"), "environ": environ})
    return seen


def assert_distcc_sandboxed_untraced(probes, uid):
    """Each distcc the probe saw: the real sandbox's libsandbox loaded and in LD_PRELOAD,
    no tracer, no_new_privs, running as UID."""
    assert probes, "the probe compiler saw no distcc process (was it run through distcc?)"
    for p in probes:
        st = p["status"]
        what = f"{p['name']}: {st}"
        assert st.get("Exe", "").endswith("/distcc"), what
        assert st.get("TracerPid") == "0", "distcc is ptraced: " + what
        assert st.get("NoNewPrivs") == "1", what
        assert st.get("Uid", "").split() == [str(uid)] * 4, what
        assert re.search(r"/libsandbox\.so$", p["maps"], re.M), \
            f"{p['name']}: libsandbox.so not mapped in distcc:\n{p['maps'][-2000:]}"
        assert "libsandbox.so" in p["environ"].get("LD_PRELOAD", ""), (p["name"], p["environ"])


# -- the sandbox log -----------------------------------------------------------------------

def read_sandbox_log(path):
    """[{F:..., S:..., P:..., A:..., R:..., C:...}] of a sandbox log ([] when there is none)."""
    if not os.path.exists(path):
        return []
    entries, cur = [], None
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            m = re.match(r"^([A-Z]): (.*)$", line)
            if not m:
                continue
            if m.group(1) == "F":
                cur = {}
                entries.append(cur)
            if cur is not None:
                cur[m.group(1)] = m.group(2)
    return entries


# -- a cgnetnsd for the no_new_privs path --------------------------------------------------

DEFAULT_BROKER_SOCKET = "/run/cgnetns/cgnetnsd.sock"


def broker_socket_path():
    try:
        from cgnetns.broker import SOCKET_PATH
        return SOCKET_PATH
    except Exception:          # the broker module is being rewritten: keep the default
        return DEFAULT_BROKER_SOCKET


def _socket_answers(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


@pytest.fixture
def cgnetns_broker(tmp_path):
    """A cgnetnsd of this checkout on the system socket for one test, ended by its PID.

    cgnetns-run starts none here (tests/conftest.py sets CGNETNS_RUN_NO_BROKER=1).
    Yields its log path, or None when another broker already answers there (it is
    used and left alone)."""
    from conftest import PY, repo_env
    path = broker_socket_path()
    if _socket_answers(path):
        print(f"cgnetns_broker: another broker answers on {path}; using it")
        yield None
        return
    log = str(tmp_path / "cgnetnsd.log")
    with open(log, "wb") as f:
        proc = subprocess.Popen([PY, "-m", "cgnetns.cli.broker", "--socket", path],
                                env=repo_env(), stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while not _socket_answers(path):
            if proc.poll() is not None:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"cgnetnsd does not answer on {path} after 15 s")
            time.sleep(0.02)
        if proc.poll() is not None and not _socket_answers(path):
            with open(log, errors="replace") as f:
                pytest.fail(f"cgnetnsd exited with status {proc.returncode}: {f.read()[-2000:]}")
        own = proc.poll() is None
        print("cgnetns_broker:", f"own cgnetnsd (pid {proc.pid}), log {log}" if own
              else "another broker won the race; using it")
        yield log if own else None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- the allow list --------------------------------------------------------------------------

ALLOW = "/etc/cgnetns/allow"


@pytest.fixture
def distcc_allowed():
    """/usr/bin/distcc in /etc/cgnetns/allow; a line added here is taken out again."""
    want = os.path.realpath(shutil.which("distcc", path=SYSTEM_PATH) or "/usr/bin/distcc")
    if not os.path.exists(ALLOW):
        pytest.fail(f"{ALLOW} is missing: run 'make install' first")
    with open(ALLOW) as f:
        present = {l.split("#", 1)[0].strip() for l in f}
    added = want not in present
    if added:
        with open(ALLOW, "a") as f:
            f.write(want + "\n")
    try:
        yield want
    finally:
        if added:
            with open(ALLOW) as f:
                lines = f.readlines()
            if want + "\n" in lines:
                lines.remove(want + "\n")
            tmp = ALLOW + ".cgnetns-gentoo-test"
            with open(tmp, "w") as f:
                f.writelines(lines)
            os.chmod(tmp, 0o644)
            os.replace(tmp, ALLOW)
