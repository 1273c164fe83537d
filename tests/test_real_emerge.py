"""A REAL emerge under Gentoo's REAL sandbox (tracker issue 12).

Portage 3.0.83 (PyPI, in a venv of Debian's /usr/bin/python3) emerges a tiny
ebuild from a playground EPREFIX (``gentoo_support.Playground``) with its
default FEATURES -- sandbox, usersandbox, userpriv (as nobody), network-sandbox,
pid-sandbox, ipc-sandbox, ... -- and the real sandbox at /usr/bin/sandbox (on a
host without one, in a private mount namespace; see gentoo_support).  The
ebuild's src_compile builds several C files with ``${CC:-gcc}`` through emake
and installs what the phase saw: its links, cgroup, uid, FEATURES, whether
libsandbox is loaded, and (with a probe compiler) how each distcc process ran.

Without cgnetns:

* plain gcc, default FEATURES: the playground works, the phase is sandboxed
  (libsandbox, no_new_privs, not traced), runs as nobody and has only ``lo``;
* network-sandbox off, contrib/portage/bashrc and its masquerade directory,
  outside any cgnetns build (cgnetns-exec passes through): every object is
  compiled by the remote distccd, without an access violation, although
  DISTCC_DIR is outside everything the sandbox lets the phase write -- the
  snippet's ``addwrite``;
* control: the same DISTCC_DIR with plain ``CC="distcc gcc"`` and no snippet is
  an ACCESS VIOLATION (Portage itself adds DISTCC_DIR only for FEATURES=distcc).

Through cgnetns, as README.rst tells Portage users: ``cgnetns-run --name emerge
-- emerge -1 ...`` with contrib/portage/bashrc as /etc/portage/bashrc and
contrib/portage/make.conf.example in make.conf (its DISTCC_DIR, made by the
snippet), a running cgnetnsd, default FEATURES: every object is compiled
remotely, the phase has only ``lo``, no access violation, each distcc has
libsandbox loaded and no tracer.  The same with FEATURES=cgroup, which on this
hybrid host needs cgroup2 at /sys/fs/cgroup (mounted in emerge's private mount
namespace) and PORTAGE_CGROUP_ROOT=<build cgroup>/portage (README.rst): the
phase then runs in ``.../emerge-<pid>/<cpv>`` below the build cgroup.
"""

import os
import pwd
import re

import pytest

pytest.register_assert_rewrite("gentoo_support")

from testbed.topology import Topology

from conftest import CGNETNS_RUN, REPO
from gentoo_support import CPV, Playground, assert_distcc_sandboxed_untraced, run_bounded

# fixtures: real_sandbox, portage_venv, cgnetns_broker, distcc_allowed
pytest_plugins = ["gentoo_support"]

BASHRC = os.path.join(REPO, "contrib", "portage", "bashrc")
MAKE_CONF_EXAMPLE = os.path.join(REPO, "contrib", "portage", "make.conf.example")
MASQ = "/usr/local/lib/cgnetns/masq"
NFILES = 6
TIMEOUT = 300
NOBODY = pwd.getpwnam("nobody")
DEFAULT_FEATURES = {"sandbox", "usersandbox", "userpriv", "network-sandbox", "pid-sandbox",
                    "ipc-sandbox"}
LEAK_PREFIX = "emerge-"


@pytest.fixture
def playground(real_sandbox, portage_venv):
    """make(**kw) -> a Playground; every one is removed after the test."""
    made = []

    def make(**kw):
        pg = Playground(portage_venv, real_sandbox, nfiles=NFILES, **kw)
        made.append(pg)
        return pg
    yield make
    for pg in made:
        pg.cleanup()


def read(path):
    with open(path) as f:
        return f.read()


def emerge(pg, wrap=(), cgroup2=False, **env):
    """Run ``emerge -1 =CPV`` (as root) in PG, inside WRAP (e.g. cgnetns-run ... --)."""
    argv = [*wrap, *pg.emerge_argv(cgroup2=cgroup2)]
    r = run_bounded(argv, TIMEOUT, env=pg.env(**env), cwd=pg.top)
    with open(pg.log, "w") as f:
        f.write(r.stdout)
    return r


def distcc_conf(topo, distcc_dir=None):
    conf = [f'DISTCC_HOSTS="{topo.distcc_hosts}"', 'DISTCC_FALLBACK="0"',
            'DISTCC_SKIP_LOCAL_RETRY="1"']
    if distcc_dir:
        conf.append(f'DISTCC_DIR="{distcc_dir}"')
    return conf


def own_distcc_dir(pg):
    """A fresh DISTCC_DIR, writable by nobody, outside everything the sandbox allows."""
    d = os.path.join(pg.top, "distcc")
    os.mkdir(d, 0o755)
    os.chown(d, NOBODY.pw_uid, NOBODY.pw_gid)
    return d


def assert_emerged(pg, r):
    out = r.stdout[-6000:]
    assert r.returncode == 0, out
    assert pg.is_installed(), out
    assert pg.installed_objects() == sorted(f"part{i}.o" for i in range(NFILES)), out
    for bad in ("ACCESS VIOLATION", "Problem with sandbox binary", "Unable to unshare",
                "cannot be preloaded", "unexpected EOF while looking for matching"):
        assert bad not in r.stdout, (bad, out)


def assert_phase_sandboxed(pg, network_sandbox=True):
    phase = pg.phase()
    features = set(phase.get("features", "").split())
    want = DEFAULT_FEATURES if network_sandbox else DEFAULT_FEATURES - {"network-sandbox"}
    assert want <= features, (want - features, phase)
    assert ("network-sandbox" in features) == network_sandbox, phase
    assert phase.get("sandbox_on") == "1", phase
    assert phase.get("NoNewPrivs") == "1", phase
    assert phase.get("TracerPid") == "0", phase
    assert int(phase.get("libsandbox", "0")) >= 1, phase
    assert "libsandbox.so" in phase.get("ld_preload", ""), phase
    assert pg.installed("uid.txt").strip() == str(NOBODY.pw_uid)
    if network_sandbox:
        assert pg.links() == ["lo"], pg.installed("links.txt")
    else:
        assert len(pg.links()) > 1, pg.installed("links.txt")


def assert_all_remote(topo, r):
    n = topo.count_compile_ok()
    assert n == NFILES, (f"{n} of {NFILES} objects compiled remotely\n{r.stdout[-4000:]}\n"
                         + topo.log_text()[-2000:])
    assert sorted(os.path.basename(s) for s in topo.compile_ok_sources()) == \
        sorted(f"part{i}.c" for i in range(NFILES))


# -- without cgnetns ---------------------------------------------------------------------

def test_emerge_default_features_real_sandbox_plain_gcc(playground):
    pg = playground()
    r = emerge(pg)
    assert_emerged(pg, r)
    assert_phase_sandboxed(pg)
    assert pg.phase()["gcc"] == "/usr/bin/gcc"
    # the phase stayed in emerge's cgroup (no FEATURES=cgroup)
    assert pg.installed("cgroup.txt").strip() == pg.record()["own"]


def test_emerge_bashrc_masquerade_outside_cgnetns_network_sandbox_off_every_object_remote(
        playground, distcc_allowed):
    """No cgnetns build: the masquerade's cgnetns-exec passes distcc through unchanged,
    and with network-sandbox off distcc reaches distccd itself.  DISTCC_DIR lies outside
    what the sandbox lets a phase write: contrib/portage/bashrc's addwrite is what
    keeps this free of access violations (the control test below)."""
    assert os.path.isfile(os.path.join(MASQ, "gcc")), "masquerade directory not installed"
    with Topology() as topo:
        pg = playground(bashrc=read(BASHRC), make_conf=['FEATURES="-network-sandbox"'])
        distcc_dir = own_distcc_dir(pg)
        with open(os.path.join(pg.eprefix, "etc/portage/make.conf"), "a") as f:
            f.write("\n".join(distcc_conf(topo, distcc_dir)) + "\n")
        r = emerge(pg)
        assert_emerged(pg, r)
        assert_all_remote(topo, r)
    assert_phase_sandboxed(pg, network_sandbox=False)
    phase = pg.phase()
    assert phase["gcc"] == os.path.join(MASQ, "gcc"), phase
    assert phase["path"].split(":")[0] == MASQ, phase
    assert os.listdir(distcc_dir), "distcc wrote nothing into DISTCC_DIR"


def test_control_distcc_dir_outside_sandbox_write_is_access_violation_without_the_bashrc(
        playground):
    """Portage adds DISTCC_DIR to SANDBOX_WRITE only for FEATURES=distcc: plain
    CC="distcc gcc" with the same DISTCC_DIR and no snippet is a violation."""
    with Topology() as topo:
        pg = playground(make_conf=['FEATURES="-network-sandbox"', 'CC="distcc gcc"'])
        distcc_dir = own_distcc_dir(pg)
        with open(os.path.join(pg.eprefix, "etc/portage/make.conf"), "a") as f:
            f.write("\n".join(distcc_conf(topo, distcc_dir)) + "\n")
        r = emerge(pg)
    assert r.returncode != 0, r.stdout[-4000:]
    assert "ACCESS VIOLATION SUMMARY" in r.stdout, r.stdout[-4000:]
    assert re.search(r"^[PAR]: " + re.escape(distcc_dir) + "/", r.stdout, re.M), \
        r.stdout[-4000:]
    assert not pg.is_installed()


# -- through cgnetns ---------------------------------------------------------------------------

@pytest.mark.parametrize("features", ["default", "cgroup"])
def test_emerge_in_cgnetns_run_bashrc_masquerade_every_object_remote(
        playground, cgnetns_broker, distcc_allowed, clean_host, features):
    """README.rst's recipe: cgnetns-run --name emerge -- emerge -1 ..., with
    contrib/portage/bashrc and make.conf.example; default FEATURES (network-sandbox,
    sandbox, userpriv, ...), optionally FEATURES=cgroup."""
    assert os.path.isfile(os.path.join(MASQ, "gcc")), "masquerade directory not installed"
    cgroup = features == "cgroup"
    with Topology() as topo:
        extra = distcc_conf(topo)         # DISTCC_DIR: make.conf.example's
        if cgroup:
            extra.append('FEATURES="cgroup"')
        pg = playground(bashrc=read(BASHRC), make_conf_base=read(MAKE_CONF_EXAMPLE),
                        make_conf=extra, probe=True)
        r = emerge(pg, wrap=[*CGNETNS_RUN, "--name", f"emerge-{features}", "--"],
                   cgroup2=cgroup, PYTHONPATH=REPO, CGNETNS_RUN_NO_BROKER="1")
        assert_emerged(pg, r)
        assert_all_remote(topo, r)
    assert_phase_sandboxed(pg)
    phase = pg.phase()
    assert phase["gcc"] == os.path.join(MASQ, "gcc"), phase
    assert_distcc_sandboxed_untraced(pg.probes(), NOBODY.pw_uid)
    rec = pg.record()
    phase_cgroup = pg.installed("cgroup.txt").strip()
    if cgroup:
        assert "cgroup" in set(phase["features"].split()), phase
        # Portage's leaf, emerge-<pid>/<cpv>, below the cgnetns build cgroup
        assert phase_cgroup.startswith(rec["own"] + "/"), (phase_cgroup, rec)
        assert re.search(r"/emerge-\d+/" + re.escape(CPV.replace("/", "_")) + "$",
                         phase_cgroup), phase_cgroup
        if rec["portage_cgroup_root"]:
            assert ("/sys/fs/cgroup" + phase_cgroup).startswith(
                rec["portage_cgroup_root"] + "/"), (phase_cgroup, rec)
    else:
        assert phase_cgroup == rec["own"], (phase_cgroup, rec)
