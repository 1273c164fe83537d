"""distcc under Gentoo's REAL sandbox (tracker issue 12), not an imitation with
``setpriv --no-new-privs``.

The sandbox (``gentoo_support.real_sandbox``: /usr/bin/sandbox, or 2.46 built
from the vendored tarball) is run as Portage runs it for a phase: as the build
user (nobody), with ``SANDBOX_WRITE`` naming the build's directories.  It sets
no_new_privs, preloads ``libsandbox.so`` into every dynamic program, and ptraces
static and set-user-ID programs (FIELD-NOTES.md).  Every compile goes to a real
distccd in a network namespace made by ``testbed.topology.Topology``; "remote"
is read from distccd's own log (COMPILE_OK lines) and local fallback is off.

A probe compiler (``gentoo_support.write_probe``) records the distcc process
that runs it (distcc runs the preprocessor locally as its own child): its
TracerPid, NoNewPrivs, uid, whether libsandbox.so is mapped and in LD_PRELOAD.

Baselines (plain distcc, network-sandbox off: the build runs in the parent
network namespace) -- these depend on nothing of cgnetns:

* every object is compiled remotely, no access violation, and distcc runs with
  libsandbox loaded and untraced;
* distcc writing its output outside SANDBOX_WRITE is an ACCESS VIOLATION
  (sandbox's exit status and its log).

Through cgnetns (``cgnetns-run --unshare-net --user nobody``, a running cgnetnsd,
distcc called through the masquerade directory or ``/usr/local/lib/cgnetns/bin/
distcc``) the same must hold, while the build itself has only ``lo``.
"""

import os
import pwd
import shutil
import subprocess
import tempfile

import pytest

pytest.register_assert_rewrite("gentoo_support")

from testbed.demo import write_project
from testbed.topology import Topology

from conftest import CGNETNS_RUN, repo_env
from gentoo_support import (WORK_ROOT, SYSTEM_PATH, assert_distcc_sandboxed_untraced,
                            read_probes, read_sandbox_log, run_bounded, write_probe)

# fixtures: real_sandbox, cgnetns_broker, distcc_allowed
pytest_plugins = ["gentoo_support"]

LIBDIR = "/usr/local/lib/cgnetns"
MASQ = os.path.join(LIBDIR, "masq")
BIN_DISTCC = os.path.join(LIBDIR, "bin", "distcc")
NFILES = 8               # + main.c: 9 objects
TIMEOUT = 240
NOBODY = pwd.getpwnam("nobody")
SETPRIV_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
LEAK_PREFIX = "sb-"      # cgnetns-run --name of this module's builds


@pytest.fixture
def work():
    """A tree outside /tmp and /var/tmp (the sandbox's own config lets everyone write
    there): src, distcc (DISTCC_DIR), probe and probe-out, log (SANDBOX_LOG),
    tmp (TMPDIR), and forbidden: writable by nobody, but not in SANDBOX_WRITE."""
    os.makedirs(WORK_ROOT, mode=0o755, exist_ok=True)
    top = tempfile.mkdtemp(prefix="sandbox-", dir=WORK_ROOT)
    os.chmod(top, 0o755)
    dirs = {"top": top}
    for d in ("src", "distcc", "probe", "probe-out", "log", "tmp", "forbidden"):
        dirs[d] = os.path.join(top, d)
        os.mkdir(dirs[d], 0o755)
        os.chown(dirs[d], NOBODY.pw_uid, NOBODY.pw_gid)
    write_probe(dirs["probe"], dirs["probe-out"])
    dirs["sandbox_log"] = os.path.join(dirs["log"], "sandbox.log")
    try:
        yield dirs
    finally:
        shutil.rmtree(top, ignore_errors=True)


def sandbox_env(work, topo, path_front=()):
    """The environment a phase would have: PATH, SANDBOX_WRITE naming only the
    build's directories, SANDBOX_LOG, TMPDIR, and distcc's settings (remote or fail)."""
    env = repo_env()
    env.update(PATH=":".join([*path_front, work["probe"], SYSTEM_PATH]), HOME=work["src"],
               LANG="C", TMPDIR=work["tmp"],
               SANDBOX_WRITE=":".join([work["src"], work["distcc"], work["probe-out"],
                                       work["tmp"]]),
               SANDBOX_LOG=work["sandbox_log"])
    env.update(topo.distcc_env(work["distcc"]))
    return env


def in_sandbox(sandbox, script, work, env, via_cgnetns=None):
    """Run SCRIPT (sh) in the real sandbox as nobody, cwd src.  via_cgnetns=NAME:
    inside cgnetns-run --unshare-net --user nobody --name NAME (as Portage: cgroup and
    network namespace first, then the user, then the sandbox); else from root via
    setpriv, in the parent network namespace (network-sandbox off)."""
    inner = [sandbox.binary, "/bin/sh", "-c", script]
    if via_cgnetns:
        argv = [*CGNETNS_RUN, "--unshare-net", "--user", "nobody", "--name", via_cgnetns,
                "--", *inner]
    else:
        argv = [*SETPRIV_NOBODY, *inner]
    return run_bounded(argv, TIMEOUT, cwd=work["src"], env=env)


def links_probe(work):
    return f"ip -o link > {work['src']}/links.txt"


def read_links(work):
    with open(os.path.join(work["src"], "links.txt")) as f:
        return [l.split(":")[1].strip() for l in f if l.strip()]


def assert_no_violation(r, work):
    assert "ACCESS VIOLATION" not in r.stdout, r.stdout[-4000:]
    log = read_sandbox_log(work["sandbox_log"])
    assert not log, f"sandbox log: {log}"


def assert_all_remote(topo, work, objs, r):
    missing = [o for o in objs if not os.path.exists(os.path.join(work["src"], o))]
    assert not missing, f"objects not built: {missing}\n{r.stdout[-4000:]}"
    n = topo.count_compile_ok()
    assert n == len(objs), (f"{n} of {len(objs)} objects compiled remotely\n{r.stdout[-3000:]}\n"
                            + topo.log_text()[-2000:])
    assert sorted(os.path.basename(s) for s in topo.compile_ok_sources()) == \
        sorted(o[:-2] + ".c" for o in objs)
    assert all(os.stat(os.path.join(work["src"], o)).st_uid == NOBODY.pw_uid for o in objs)


def assert_write_outside_is_violation(r, work, topo, target):
    """The baseline every path must match: the sandbox reports the write, fails, and
    the file is not there -- while the compile itself did reach distccd."""
    assert r.returncode != 0, r.stdout[-4000:]
    assert "ACCESS VIOLATION SUMMARY" in r.stdout, r.stdout[-4000:]
    assert not os.path.exists(target), "the sandbox let distcc write " + target
    log = read_sandbox_log(work["sandbox_log"])
    denied = [e for e in log if e.get("R") == target or e.get("P") == target
              or e.get("A") == target]
    assert denied, f"no sandbox log entry for {target}: {log}\n{r.stdout[-3000:]}"
    assert any(e.get("F", "").startswith(("open", "creat")) for e in denied), denied
    assert any("distcc" in e.get("C", "") for e in denied), denied
    assert topo.count_compile_ok() == 1, (r.stdout[-3000:], topo.log_text()[-2000:])


# -- baselines: plain distcc in the real sandbox, network-sandbox off ----------------------

def test_plain_distcc_in_real_sandbox_every_object_remote(real_sandbox, work):
    objs = write_project(work["src"], NFILES, owner="nobody")
    with Topology() as topo:
        r = in_sandbox(real_sandbox, "make -j4 CC='distcc gcc'", work, sandbox_env(work, topo))
        assert r.returncode == 0, r.stdout[-4000:]
        assert_all_remote(topo, work, objs, r)
    assert_no_violation(r, work)
    probes = read_probes(work["probe-out"])
    assert len(probes) >= len(objs), probes          # one preprocessor run per object
    assert_distcc_sandboxed_untraced(probes, NOBODY.pw_uid)


def test_plain_distcc_write_outside_sandbox_write_is_access_violation(real_sandbox, work):
    write_project(work["src"], 1, owner="nobody")
    target = os.path.join(work["forbidden"], "part00.o")
    with Topology() as topo:
        r = in_sandbox(real_sandbox, f"distcc gcc -O2 -c part00.c -o {target}", work,
                       sandbox_env(work, topo))
        assert_write_outside_is_violation(r, work, topo, target)


STATIC_EXEC_C = """\
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    execvp(argv[1], argv + 1);
    perror(argv[1]);
    return 127;
}
"""


def test_control_the_probe_sees_a_traced_distcc(real_sandbox, work):
    """Control for the probe: a distcc started by a static program inside the sandbox
    is ptraced by the sandbox (it traces static and set-user-ID ELF files across
    their execs) -- and the probe reports it."""
    src = os.path.join(work["top"], "static-exec.c")
    prog = os.path.join(work["top"], "static-exec")
    with open(src, "w") as f:
        f.write(STATIC_EXEC_C)
    subprocess.run(["gcc", "-static", "-O2", "-o", prog, src], check=True, timeout=60)
    with open(prog, "rb") as f:
        assert b"/ld-linux" not in f.read(), "gcc -static made a dynamic program"
    write_project(work["src"], 1, owner="nobody")
    with Topology() as topo:
        r = in_sandbox(real_sandbox, f"{prog} distcc gcc -O2 -c part00.c -o part00.o",
                       work, sandbox_env(work, topo))
        assert r.returncode == 0, r.stdout[-4000:]
        assert topo.count_compile_ok() == 1
    probes = read_probes(work["probe-out"])
    assert probes
    assert all(p["status"].get("TracerPid") not in ("0", None) for p in probes), probes
    with pytest.raises(AssertionError, match="ptraced"):
        assert_distcc_sandboxed_untraced(probes, NOBODY.pw_uid)


# -- through cgnetns: the build has only lo, distcc reaches distccd ------------------------

@pytest.mark.parametrize("how", ["masq", "bin"])
def test_cgnetns_distcc_in_real_sandbox_every_object_remote(
        real_sandbox, work, cgnetns_broker, distcc_allowed, clean_host, how):
    """how=masq: PATH has the masquerade directory first and the build calls gcc
    (what contrib/portage/bashrc does); how=bin: CC='/usr/local/lib/cgnetns/bin/distcc gcc'."""
    if how == "masq":
        assert os.path.isfile(os.path.join(MASQ, "gcc")), "masquerade directory not installed"
        front, cc = [MASQ], "gcc"
    else:
        assert os.path.exists(BIN_DISTCC), BIN_DISTCC + " not installed"
        front, cc = [], f"{BIN_DISTCC} gcc"
    objs = write_project(work["src"], NFILES, owner="nobody")
    with Topology() as topo:
        env = sandbox_env(work, topo, front)
        r = in_sandbox(real_sandbox, f"{links_probe(work)} && make -j4 CC='{cc}'", work, env,
                       via_cgnetns=f"sb-{how}")
        assert r.returncode == 0, r.stdout[-4000:]
        assert_all_remote(topo, work, objs, r)
    assert read_links(work) == ["lo"]
    assert_no_violation(r, work)
    probes = read_probes(work["probe-out"])
    assert len(probes) >= len(objs), probes
    assert_distcc_sandboxed_untraced(probes, NOBODY.pw_uid)


def test_cgnetns_distcc_write_outside_sandbox_write_is_access_violation(
        real_sandbox, work, cgnetns_broker, distcc_allowed, clean_host):
    write_project(work["src"], 1, owner="nobody")
    target = os.path.join(work["forbidden"], "part00.o")
    with Topology() as topo:
        r = in_sandbox(real_sandbox, f"{BIN_DISTCC} gcc -O2 -c part00.c -o {target}", work,
                       sandbox_env(work, topo), via_cgnetns="sb-violation")
        assert_write_outside_is_violation(r, work, topo, target)
