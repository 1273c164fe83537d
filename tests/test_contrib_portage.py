"""contrib/portage/bashrc under Portage's own ebuild.sh.

Each test runs real phases of a throwaway ebuild with ``portage.doebuild``
(Portage 3.0.83 from PyPI, its bin/ebuild.sh, phase-functions.sh and
save-ebuild-env.sh) in a ResolverPlayground configuration root whose
/etc/portage/bashrc sources the snippet, exactly as Portage sources a user's
bashrc.  Every phase function records its PATH and what ``gcc`` resolves to;
after every phase the test reads the environment Portage saved in
${T}/environment, which the next phase loads.

The last test runs the same phases inside ``cgnetns-run`` with the installed
masquerade directory, FEATURES=network-sandbox (Portage's default) and a
remote distccd from the test topology: plain ``gcc`` in src_compile compiles
on the remote host while the phase itself has no network.  The phases run as
root there (the playground's "portage" user is the caller); the uid drop of
userpriv is covered by tests/test_distcc.py through portage.process.spawn.

Two things of the playground are adapted to this (non-Gentoo) host, neither of
which touches the code under test: a ``gtar`` symlink to tar on PATH (the
playground insists on that name), and GPG unlock disabled (the PyPI wheel
ships no test keys, and no binary package is signed here).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASHRC = os.path.join(REPO, "contrib", "portage", "bashrc")
COMPILING = ("src_configure", "src_compile", "src_test", "src_install")
OTHERS = ("pkg_setup", "src_unpack", "src_prepare", "pkg_preinst", "pkg_postinst")

HARNESS = textwrap.dedent('''\
    import grp, json, os, pwd, sys
    os.environ["PORTAGE_USERNAME"] = pwd.getpwuid(os.getuid()).pw_name
    os.environ["PORTAGE_GRPNAME"] = grp.getgrgid(os.getgid()).gr_name
    import portage
    portage._internal_caller = True
    portage._disable_legacy_globals()
    import portage.gpg
    portage.gpg.GPG.unlock = lambda self: None
    from portage.tests.resolver.ResolverPlayground import ResolverPlayground
    from portage.package.ebuild._ipc.QueryCommand import QueryCommand
    from _emerge.Package import Package

    cfg = json.loads(sys.argv[1])
    out = cfg["out"]
    funcs = ["pkg_setup", "src_unpack", "src_prepare", "src_configure", "src_compile",
             "src_test", "src_install", "pkg_preinst", "pkg_postinst"]
    body = ["S=${WORKDIR}"]
    for f in funcs:
        d = "default; " if f == "src_prepare" else ""
        extra = cfg.get("compile_body", "") if f == "src_compile" else ""
        body.append(f'{f}() {{ {d}echo "{f} $(type -P gcc) ${{PATH}}" >> {out}; {extra} }}')
    cpv = "dev-util/cgnetns-probe-1"
    pg = ResolverPlayground(ebuilds={cpv: {"EAPI": "8", "MISC_CONTENT": "\\n".join(body) + "\\n"}},
                            user_config={"make.conf": tuple(cfg["make_conf"])})
    res = {}
    try:
        QueryCommand._db = pg.trees
        with open(os.path.join(pg.eroot, "etc/portage/bashrc"), "w") as f:
            f.write(cfg["bashrc"])
        root_config = pg.trees[pg.eroot]["root_config"]
        portdb = root_config.trees["porttree"].dbapi
        settings = portage.config(clone=pg.settings)
        for feat in cfg["features"]:
            settings.features.add(feat)
        settings["PORTAGE_PYTHON"] = portage._python_interpreter
        settings["PORTAGE_QUIET"] = "1"
        md = dict(zip(Package.metadata_keys, portdb.aux_get(cpv, Package.metadata_keys)))
        settings.setcpv(Package(built=False, cpv=cpv, installed=False, metadata=md,
                                root_config=root_config, type_name="ebuild"))
        ebuild = portdb.findname(cpv)
        for phase in ("setup", "unpack", "prepare", "configure", "compile", "test",
                      "install", "qmerge"):
            rc = portage.doebuild(ebuild, phase, settings=settings, mydbapi=portdb,
                                  tree="porttree", vartree=root_config.trees["vartree"],
                                  prev_mtimes={})
            saved = None
            envf = os.path.join(settings["T"], "environment")
            if os.path.exists(envf):
                with open(envf, errors="replace") as f:
                    for line in f:
                        if line.startswith("declare -x PATH="):
                            saved = line.strip()[len("declare -x PATH="):].strip('"')
            res[phase] = {"rc": rc, "saved_path": saved}
    finally:
        pg.cleanup()
        QueryCommand._db = None
    print("RESULT " + json.dumps(res))
    ''')


@pytest.fixture
def tmp():
    d = tempfile.mkdtemp(prefix="cgnetns-portage-bashrc-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run_phases(tmp, bashrc, make_conf=(), features=(), masq=None, compile_body="",
               wrap=(), extra_path=""):
    if masq is None:
        masq = os.path.join(tmp, "masq")
        os.makedirs(masq, exist_ok=True)
        with open(os.path.join(masq, "gcc"), "w") as f:
            f.write("#!/bin/sh\nexit 99\n")
        os.chmod(os.path.join(masq, "gcc"), 0o755)
    tools = os.path.join(tmp, "tools")
    os.makedirs(tools, exist_ok=True)
    if not os.path.exists(os.path.join(tools, "gtar")):
        os.symlink(shutil.which("tar"), os.path.join(tools, "gtar"))
    gpg = os.path.join(tmp, "gpg")
    os.makedirs(gpg, mode=0o700, exist_ok=True)
    out = os.path.join(tmp, "phases.txt")
    if os.path.exists(out):
        os.unlink(out)
    harness = os.path.join(tmp, "harness.py")
    with open(harness, "w") as f:
        f.write(HARNESS)
    cfg = {"out": out, "bashrc": bashrc.replace("@MASQ@", masq),
           "make_conf": [f'CGNETNS_MASQ_DIR="{masq}"', *make_conf],
           "features": ["test", *features],  # FEATURES=test: src_test runs
           "compile_body": compile_body}
    env = {"PATH": tools + extra_path + ":/usr/sbin:/usr/bin:/sbin:/bin", "HOME": tmp,
           "LANG": "C.UTF-8", "PORTAGE_GNUPGHOME": gpg, "TMPDIR": tmp}
    if wrap:
        env["PYTHONPATH"] = REPO
    r = subprocess.run([*wrap, sys.executable, harness, json.dumps(cfg)], env=env, cwd=tmp,
                       capture_output=True, text=True, timeout=180)
    lines = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    assert lines, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    for phase, v in result.items():
        assert v["rc"] == 0, (phase, r.stdout[-3000:], r.stderr[-3000:])
    seen = {}
    with open(out) as f:
        for line in f:
            func, gcc, path = line.rstrip("\n").split(" ", 2)
            seen[func] = {"gcc": gcc, "path": path.split(":")}
    return masq, seen, result


def assert_only_compiling_phases(masq, seen, result):
    assert set(seen) == set(COMPILING) | set(OTHERS), seen
    for func in COMPILING:
        assert seen[func]["path"][0] == masq, (func, seen[func])
        assert seen[func]["path"].count(masq) == 1, (func, seen[func])
        assert seen[func]["gcc"] == os.path.join(masq, "gcc"), (func, seen[func])
    for func in OTHERS:
        assert masq not in seen[func]["path"], (func, seen[func])
        assert seen[func]["gcc"] != os.path.join(masq, "gcc"), (func, seen[func])
    # what Portage saved after each phase (and the next phase loads) never has it
    for phase, v in result.items():
        assert v["saved_path"] is not None, phase
        assert masq not in v["saved_path"].split(":"), (phase, v)


SOURCE = f"source {BASHRC}\n"


@pytest.mark.parametrize("features", [(), ("noauto",)], ids=["default", "noauto"])
def test_masquerade_first_in_path_only_in_compiling_phases(tmp, features):
    """noauto makes ebuild.sh source bashrc again in every phase, with the
    hooks already loaded from the saved environment."""
    masq, seen, result = run_phases(tmp, SOURCE, features=features)
    assert_only_compiling_phases(masq, seen, result)


def test_hooks_defined_before_are_kept(tmp):
    bashrc = textwrap.dedent(f'''\
        pre_src_compile() {{ echo "user-pre $PATH" >> "{tmp}/user.txt"; }}
        post_src_compile() {{ echo "user-post $PATH" >> "{tmp}/user.txt"; }}
        {SOURCE}''')
    masq, seen, result = run_phases(tmp, bashrc)
    assert_only_compiling_phases(masq, seen, result)
    with open(os.path.join(tmp, "user.txt")) as f:
        user = f.read().splitlines()
    assert [l.split()[0] for l in user] == ["user-pre", "user-post"]
    # the user's pre_ runs before the masquerade goes in, post_ after it is out
    assert all(masq not in l.split()[1].split(":") for l in user)


def test_switched_off_per_package(tmp):
    masq, seen, result = run_phases(tmp, SOURCE, make_conf=["CGNETNS_MASQ=0"])
    for func, v in seen.items():
        assert masq not in v["path"], (func, v)


def test_control_a_plain_path_change_outlives_its_phase(tmp):
    """Why the snippet exists: a PATH change made in a compiling phase is saved
    with the environment and reaches pkg_postinst on the live system."""
    naive = 'pre_src_compile() { PATH="@MASQ@:${PATH}"; export PATH; }\n'
    masq, seen, result = run_phases(tmp, naive)
    assert seen["src_compile"]["path"][0] == masq
    assert masq in seen["pkg_postinst"]["path"]
    assert masq in result["install"]["saved_path"].split(":")


def test_real_phases_under_cgnetns_run_compile_on_remote_distccd(tmp):
    """The whole path a Portage user gets: emerge's phases (Portage's ebuild.sh,
    FEATURES=network-sandbox) inside cgnetns-run, the snippet in bashrc, the
    installed masquerade directory, distcc to a remote distccd.  src_compile
    calls plain gcc; every object is compiled remotely, and the phase itself
    has only lo and cannot connect to the server."""
    from testbed.topology import Topology, DISTCC_PORT
    masq = "/usr/local/lib/cgnetns/masq"
    if not os.path.isfile(os.path.join(masq, "gcc")):
        pytest.fail("the masquerade directory is not installed: run 'make install' first")
    with open("/etc/cgnetns/allow") as f:
        if "/usr/bin/distcc" not in {l.split("#")[0].strip() for l in f}:
            pytest.fail("/usr/bin/distcc is not in /etc/cgnetns/allow (make install adds it "
                        "when distcc is installed)")
    distcc_dir = os.path.join(tmp, "distcc")
    os.makedirs(distcc_dir, mode=0o777)
    os.chmod(distcc_dir, 0o777)
    n = 6
    with Topology() as topo:
        body = (f'local i; for i in $(seq {n}); do '
                f'echo "int f$i(void) {{ return $i; }}" > o$i.c; gcc -O2 -c o$i.c -o o$i.o || die; done; '
                f'ip -o link > {tmp}/links.txt; '
                f'bash -c "exec 3<>/dev/tcp/{topo.remote_addr}/{DISTCC_PORT}" 2> {tmp}/connect.txt '
                f'&& echo CONNECTED >> {tmp}/connect.txt; true;')
        make_conf = [f'DISTCC_HOSTS="{topo.distcc_hosts}"', 'DISTCC_FALLBACK="0"',
                     'DISTCC_SKIP_LOCAL_RETRY="1"', f'DISTCC_DIR="{distcc_dir}"']
        from conftest import CGNETNS_RUN
        masq_, seen, result = run_phases(
            tmp, SOURCE, make_conf=make_conf, masq=masq, compile_body=body,
            # --no-broker: this phase runs without no_new_privs, and a broker
            # started here would outlive the test (its env is built from scratch).
            wrap=[*CGNETNS_RUN, "--no-broker", "--name", "portage-bashrc", "--"],
            extra_path=":/usr/local/bin")
        assert topo.count_compile_ok() == n, topo.log_text()[-2000:]
    assert seen["src_compile"]["gcc"] == os.path.join(masq, "gcc")
    with open(os.path.join(tmp, "links.txt")) as f:
        assert [l.split(":")[1].strip() for l in f if l.strip()] == ["lo"]
    with open(os.path.join(tmp, "connect.txt")) as f:
        connect = f.read()
    assert "CONNECTED" not in connect and "unreachable" in connect, connect
