"""Gentoo's sandbox, found or built once (shared by tests/ and bench/).

Owns the sandbox cache that the real-sandbox tests (tests/gentoo_support.py)
and the benchmark's sandbox part (bench/gentoo.py) both use:
``/usr/bin/sandbox`` where the host has it (Gentoo); else Gentoo's sandbox
built from the vendored tarball (``<repo>/../shared/vendor/sandbox-2.46.tar.gz``,
or ``$CGNETNS_SANDBOX_SRC``: a tarball or a source directory) once into
``/var/cache/cgnetns-tests/sandbox-<sha12>``, keyed by the source's sha256.
The build happens in a temporary directory beside it and is renamed into
place, so a killed build never leaves a half cache behind (the next build
removes its leftovers); an flock keeps concurrent runs from building twice.
About 15 s on 2 cores, once; needs autoconf, automake, libtool,
autoconf-archive and gawk (``tools/ensure-deps test``).

No pytest here, and nothing runs at import: failures raise ``SetupError``
with the fix in the message; callers turn it into a test failure or a
benchmark error.
"""

import contextlib
import fcntl
import glob
import hashlib
import os
import shutil
import subprocess
import tempfile

from .topology import SYSTEM_PATH

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_ROOT = "/var/cache/cgnetns-tests"
SANDBOX_TARBALL = "sandbox-2.46.tar.gz"
SYSTEM_SANDBOX = "/usr/bin/sandbox"
DEPS_HINT = ("install the build tools with 'tools/ensure-deps test' (Debian: apt-get install "
             "autoconf automake libtool autoconf-archive gawk make gcc)")


class SetupError(RuntimeError):
    """The real sandbox (or, for tests/gentoo_support.py, emerge) could not be
    provided; the message says how to fix it."""



@contextlib.contextmanager
def cache_lock(name):
    """An exclusive flock on CACHE_ROOT/.NAME.lock (several test runs may race)."""
    os.makedirs(CACHE_ROOT, mode=0o755, exist_ok=True)
    os.chmod(CACHE_ROOT, 0o755)
    fd = os.open(os.path.join(CACHE_ROOT, f".{name}.lock"),
                 os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_stale(prefix):
    """Remove CACHE_ROOT/<prefix>* left by a build that was killed (caller holds the lock)."""
    for name in os.listdir(CACHE_ROOT):
        if name.startswith(prefix):
            shutil.rmtree(os.path.join(CACHE_ROOT, name), ignore_errors=True)


def world_readable(top):
    """Make a tree usable by every user: dirs 0755, files go+r (go+x where u+x)."""
    for root, dirs, files in os.walk(top):
        os.chmod(root, 0o755)
        for name in files:
            p = os.path.join(root, name)
            if os.path.islink(p):
                continue
            mode = os.stat(p).st_mode & 0o7777
            mode = (mode | 0o644) & ~0o022
            if mode & 0o100:
                mode |= 0o055
            os.chmod(p, mode)


def run_logged(argv, log, cwd, env=None, timeout=900):
    with open(log, "ab") as f:
        f.write(("\n$ " + " ".join(argv) + "\n").encode())
        f.flush()
        r = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=f,
                           stderr=subprocess.STDOUT, timeout=timeout)
    if r.returncode != 0:
        with open(log, errors="replace") as f:
            tail = f.read()[-3000:]
        raise SetupError(f"{' '.join(argv)} failed with status {r.returncode} "
                               f"(log {log}):\n{tail}")


def sha256_of(path):
    h = hashlib.sha256()
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d != ".git")
            for name in sorted(files):
                p = os.path.join(root, name)
                h.update(os.path.relpath(p, path).encode() + b"\0")
                if os.path.islink(p):
                    h.update(b"L" + os.readlink(p).encode())
                else:
                    with open(p, "rb") as f:
                        h.update(f.read())
                h.update(b"\0")
    else:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()



class Sandbox:
    """One usable sandbox: ``binary`` (run it), ``lib`` (libsandbox.so, or None
    where the system's sandbox finds it by name), ``system`` (it is
    /usr/bin/sandbox), ``how`` (for messages)."""

    def __init__(self, binary, lib, system, how):
        self.binary = binary
        self.lib = lib
        self.system = system
        self.how = how

    def __repr__(self):
        return f"Sandbox({self.binary!r}, {self.how})"


def sandbox_source():
    """The sandbox source to build: $CGNETNS_SANDBOX_SRC, else the vendored tarball."""
    src = os.environ.get("CGNETNS_SANDBOX_SRC")
    if src:
        if not os.path.exists(src):
            raise SetupError(f"CGNETNS_SANDBOX_SRC={src} does not exist")
        return os.path.abspath(src)
    for cand in (os.path.join(os.path.dirname(REPO), "shared", "vendor", SANDBOX_TARBALL),
                 os.path.join(REPO, "shared", "vendor", SANDBOX_TARBALL)):
        if os.path.isfile(cand):
            return cand
    return None


def check_build_tools():
    missing = [t for t in ("gawk", "autoreconf", "aclocal", "automake", "libtoolize", "make",
                           "gcc", "tar") if not shutil.which(t, path=SYSTEM_PATH)]
    if not glob.glob("/usr/share/aclocal/ax_*.m4"):
        missing.append("autoconf-archive (/usr/share/aclocal/ax_*.m4)")
    if missing:
        raise SetupError("cannot build Gentoo's sandbox, missing: " + ", ".join(missing)
                               + "; " + DEPS_HINT)


def build_sandbox(src):
    """Build the sandbox from SRC (tarball or directory) into the cache; return its prefix."""
    sha = sha256_of(src)
    final = os.path.join(CACHE_ROOT, f"sandbox-{sha[:12]}")
    binary = os.path.join(final, "bin", "sandbox")
    if os.access(binary, os.X_OK):
        return final
    check_build_tools()
    with cache_lock("sandbox"):
        if os.access(binary, os.X_OK):           # another run built it meanwhile
            return final
        remove_stale(".sandbox-build-")
        tmp = tempfile.mkdtemp(prefix=".sandbox-build-", dir=CACHE_ROOT)
        try:
            log = os.path.join(tmp, "build.log")
            srcdir = os.path.join(tmp, "src")
            if os.path.isdir(src):
                shutil.copytree(src, srcdir, symlinks=True,
                                ignore=shutil.ignore_patterns(".git"))
            else:
                os.mkdir(srcdir)
                run_logged(["tar", "-xzf", src, "-C", srcdir, "--no-same-owner"], log, tmp)
                top = [d for d in os.listdir(srcdir)]
                if len(top) == 1 and os.path.isdir(os.path.join(srcdir, top[0])):
                    srcdir = os.path.join(srcdir, top[0])
            if not os.path.isfile(os.path.join(srcdir, "configure.ac")):
                raise SetupError(f"{src}: no configure.ac: not a sandbox source tree")
            env = {"PATH": SYSTEM_PATH, "LANG": "C", "HOME": tmp, "TMPDIR": tmp}
            run_logged(["./autogen.sh"], log, srcdir, env)
            run_logged(["./configure", f"--prefix={final}"], log, srcdir, env)
            run_logged(["make", "-j2"], log, srcdir, env)
            dest = os.path.join(tmp, "dest")
            run_logged(["make", "install", f"DESTDIR={dest}"], log, srcdir, env)
            staged = dest + final
            for need in ("bin/sandbox", "lib/libsandbox.so"):
                if not os.path.exists(os.path.join(staged, need)):
                    raise SetupError(f"sandbox build did not install {need} (log {log})")
            with open(os.path.join(staged, "SOURCE"), "w") as f:
                f.write(f"{src}\nsha256 {sha}\n")
            world_readable(staged)
            os.rename(staged, final)             # atomic: all or nothing
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def get_sandbox():
    """The sandbox the tests use; raises SetupError saying how to get one."""
    if os.path.isfile(SYSTEM_SANDBOX) and os.access(SYSTEM_SANDBOX, os.X_OK):
        return Sandbox(SYSTEM_SANDBOX, None, True, "the system's /usr/bin/sandbox")
    src = sandbox_source()
    if src is None:
        raise SetupError(
            "Gentoo's sandbox is needed: no /usr/bin/sandbox and no source to build it; put "
            f"{SANDBOX_TARBALL} (tag v2.46 of gentoo/sandbox, `git archive "
            "--prefix=sandbox-2.46/`) in <repo>/../shared/vendor/, or set CGNETNS_SANDBOX_SRC "
            "to a sandbox tarball or source directory")
    prefix = build_sandbox(src)
    return Sandbox(os.path.join(prefix, "bin", "sandbox"),
                   os.path.join(prefix, "lib", "libsandbox.so"), False,
                   f"built from {os.path.basename(src)} in {prefix}")
