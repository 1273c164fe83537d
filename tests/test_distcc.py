"""Real clients end to end (issue 5): distcc (TCP, ssh, pump), icecream and
Portage's own process and cgroup code, each inside a cgnetns build that has no
network of its own, against real servers in the test topology
(testbed/topology.py).  "Compiled remotely" is read from the servers' own logs
(distccd's COMPILE_OK lines, iceccd's finished remote jobs), and the distcc
settings make a local fallback a failure (DISTCC_FALLBACK=0,
DISTCC_SKIP_LOCAL_RETRY=1), so a build that silently compiled locally fails.

Needs, installed: cgnetns (``make install``: cgnetns-exec setuid root, the
masquerade directory) and Debian's distcc, distcc-pump, icecc, openssh-server,
openssh-client, iproute2, util-linux, make, gcc; Portage 3.0.83 from PyPI in
the interpreter that runs the tests.  The tests add /usr/bin/distcc and
/usr/bin/icecc to /etc/cgnetns/allow when they are missing and take exactly
those lines out again afterwards.

What this machine cannot do, and what the tests do instead:

* distcc-pump: Debian bookworm's include server (distcc 3.4) is broken on
  Python >= 3.10: its C extension parses ``s#`` without PY_SSIZE_T_CLEAN, so
  ``OsPathExists``/``OsPathIsFile``/``CompressLzo1xAlloc`` raise SystemError,
  the include server gives up on every file and distcc preprocesses locally
  ("include server gave up analyzing").  The pump test puts a
  ``sitecustomize.py`` on the include server's PYTHONPATH that replaces those
  three functions by Python equivalents (stat-based tests; an LZO1X stream of
  literal runs, which distccd's decompressor accepts) and leaves everything
  else of Debian's pump untouched.  It then asserts that no file fell back to
  local preprocessing.
* Portage's FEATURES=cgroup anchors its hierarchy in the caller's cgroup only
  when that cgroup is delegated *and* its cgroup.controllers has cpu, io and
  memory (``_usable_anchor``).  On this hybrid host those controllers are
  bound to cgroup v1 (memory holds the VM's own cgroups), so cgroup2 never
  offers them, not even when mounted at /sys/fs/cgroup in a private mount
  namespace, and ``DEFAULT_CGROUP_ROOT`` stays ``/sys/fs/cgroup/portage``.
  The test asserts that Portage sees the cgnetns build cgroup as delegated
  (``_is_delegated``), and, where the controllers are missing, passes
  PORTAGE_CGROUP_ROOT=<build cgroup>/portage (the setting emerge's Scheduler
  and doebuild read) so that ``emerge-<pid>/<cpv>`` nests inside the build; on
  a host whose cgroup2 has the controllers it asserts that Portage's own
  default nests there.
* The no_new_privs row (``setpriv --no-new-privs``, so the setuid bit does
  nothing) goes through a ``cgnetnsd`` that the test starts on the system
  socket and stops by its PID (or, when another broker already answers there,
  through that one; the test then checks nothing of its log).
"""

import json
import shlex
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time

import pytest

from testbed.demo import write_project
from testbed.topology import DISTCC_PORT, SYSTEM_PATH, Topology

from conftest import CGNETNS_RUN, PY, repo_env, host_state

ALLOW = "/etc/cgnetns/allow"
LIBDIR = "/usr/local/lib/cgnetns"
MASQ = os.path.join(LIBDIR, "masq")
BUILD_PATH = "/usr/local/bin:" + SYSTEM_PATH
NFILES = 24          # + main.c: 25 objects
TIMEOUT = 240


# -- fixtures -------------------------------------------------------------------

@pytest.fixture(scope="module")
def helper():
    """The front builds call (cgnetns-exec on PATH); the set-user-ID helper it
    execs must be installed too."""
    from cgnetns import paths
    path = shutil.which("cgnetns-exec", path=BUILD_PATH)
    if not path or not os.path.exists(paths.HELPER) or not os.stat(paths.HELPER).st_mode & 0o4000:
        pytest.fail("cgnetns-exec and its set-user-ID helper %s are not installed: "
                    "run 'make install' first" % paths.HELPER)
    return path


PATHS = ["setuid", "broker"]


@pytest.fixture(params=PATHS)
def path(request):
    """Each client test runs through both paths: the set-user-ID one, and the
    broker's (under no_new_privs, as in Gentoo's sandbox), with a cgnetnsd of
    its own.  Yields (name, wrap) where wrap(script) is the script as that
    path runs it."""
    if request.param == "setuid":
        yield "setuid", lambda script: script
        return
    request.getfixturevalue("system_broker")
    yield "broker", lambda script: "setpriv --no-new-privs /bin/sh -c " + shlex.quote(script)


@pytest.fixture(scope="module")
def allowed():
    """distcc and icecc in the allow list; only the lines added here go again."""
    # ssh: distcc's ssh mode through the broker path, where only allow-listed
    # executables get network -- listing it gives any ssh the build runs the
    # network (README, security)
    wanted = [os.path.realpath(shutil.which(p, path=SYSTEM_PATH) or "/usr/bin/" + p)
              for p in ("distcc", "icecc", "ssh")]
    with open(ALLOW) as f:
        present = {l.split("#", 1)[0].strip() for l in f}
    added = [w for w in wanted if w not in present]
    if added:
        with open(ALLOW, "a") as f:
            f.write("".join(a + "\n" for a in added))
    yield wanted
    if added:
        with open(ALLOW) as f:
            lines = f.readlines()
        for a in added:
            lines.remove(a + "\n") if a + "\n" in lines else None
        tmp = ALLOW + ".cgnetns-test"
        with open(tmp, "w") as f:
            f.writelines(lines)
        os.chmod(tmp, 0o644)
        os.replace(tmp, ALLOW)


@pytest.fixture
def work():
    """A directory tree the build user (nobody) can write: src/ and distcc/."""
    top = tempfile.mkdtemp(prefix="cgnetns-distcc-")
    os.chmod(top, 0o755)
    nobody = pwd.getpwnam("nobody")
    dirs = {}
    for d in ("src", "distcc"):
        dirs[d] = os.path.join(top, d)
        os.mkdir(dirs[d], 0o755)
        os.chown(dirs[d], nobody.pw_uid, nobody.pw_gid)
    dirs["top"] = top
    yield dirs
    shutil.rmtree(top, ignore_errors=True)
    # Only this module's builds (names t5 and portage): other suites on the
    # same host may have builds of their own going on at the same time.
    after = host_state()
    for key, items in after.items():
        ours = {i for i in items if any(n in str(i) for n in ("t5-", "portage-"))}
        assert not ours, "cgnetns left %s: %s" % (key, ours)


def project(work, nfiles=NFILES):
    return write_project(work["src"], nfiles, owner="nobody")


def build_env(topo, work, mode="tcp", **extra):
    env = repo_env()
    env.update(PATH=BUILD_PATH, HOME=work["src"], LANG="C", TMPDIR="/tmp")
    env.update(topo.distcc_env(work["distcc"], mode))
    env.update(extra)
    return env


def sandboxed(script, work, env, name="t5", unshare=True, timeout=TIMEOUT):
    """Run SCRIPT (sh) in cgnetns-run --unshare-net --user nobody, cwd src."""
    argv = [*CGNETNS_RUN, "--user", "nobody", "--name", name]
    if unshare:
        argv.append("--unshare-net")
    argv += ["--", "/bin/sh", "-c", script]
    return subprocess.run(argv, cwd=work["src"], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


def probes(addr, port):
    """Shell lines run after make, in the same build: links and a direct connect."""
    return (f"ip -o link > links.txt; "
            f"if bash -c 'exec 3<>/dev/tcp/{addr}/{port}' 2> connect.txt; "
            f"then echo CONNECTED >> connect.txt; fi; "
            f"sed -n 's/^0:://p' /proc/self/cgroup > cgroup.txt; id -u > uid.txt")


def read(work, name):
    with open(os.path.join(work["src"], name)) as f:
        return f.read()


def assert_all_remote(topo, work, objs, out, log_counter=None):
    missing = [o for o in objs if not os.path.exists(os.path.join(work["src"], o))]
    assert not missing, f"objects not built: {missing}\n{out}"
    n = log_counter() if log_counter else topo.count_compile_ok()
    assert n == len(objs), (f"{n} of {len(objs)} objects compiled remotely\n{out}\n"
                            + topo.log_text()[-3000:])
    nobody = pwd.getpwnam("nobody").pw_uid
    assert all(os.stat(os.path.join(work["src"], o)).st_uid == nobody for o in objs)


def assert_no_network(work, addr):
    links = [l.split(":")[1].strip() for l in read(work, "links.txt").splitlines() if l.strip()]
    assert links == ["lo"], links
    connect = read(work, "connect.txt")
    assert "CONNECTED" not in connect and "unreachable" in connect, connect
    assert read(work, "uid.txt").strip() == str(pwd.getpwnam("nobody").pw_uid)


# -- distcc over TCP --------------------------------------------------------------

def test_distcc_tcp_every_object_remote_and_no_direct_connect(helper, allowed, work, path):
    objs = project(work)
    with Topology() as topo:
        env = build_env(topo, work)
        r = sandboxed(path[1](f"make -j4 CC='{helper} distcc gcc'") + " && ./prog > run.txt && "
                      + probes(topo.remote_addr, DISTCC_PORT), work, env)
        assert r.returncode == 0, r.stdout
        assert_all_remote(topo, work, objs, r.stdout)
        assert sorted(os.path.basename(s) for s in topo.compile_ok_sources()) == \
            sorted(o[:-2] + ".c" for o in objs)
    assert_no_network(work, topo.remote_addr)
    assert read(work, "run.txt").strip() == "sum=%d" % sum(4 * i for i in range(NFILES))
    assert "/cgnetns/t5-" in read(work, "cgroup.txt")


def test_distcc_tcp_through_masquerade_dir_with_cc_gcc(helper, allowed, work, path):
    assert os.path.isfile(os.path.join(MASQ, "gcc")), "masquerade directory not installed"
    objs = project(work)
    with Topology() as topo:
        env = build_env(topo, work)
        env["PATH"] = MASQ + ":" + env["PATH"]
        r = sandboxed(path[1]("make -j4 CC=gcc") + " && " + probes(topo.remote_addr, DISTCC_PORT),
                      work, env)
        assert r.returncode == 0, r.stdout
        assert_all_remote(topo, work, objs, r.stdout)
    assert_no_network(work, topo.remote_addr)


@pytest.fixture
def system_broker(tmp_path):
    """A cgnetnsd on the system socket for one test, ended by its PID.

    Yields the path of its log (None when another broker already answered
    there: the test then uses that one and leaves it alone)."""
    from cgnetns.broker import SOCKET_PATH
    from cgnetns.cli.run import broker_answers
    if broker_answers(SOCKET_PATH):
        print("system_broker: another broker answers already")
        yield None
        return
    log = str(tmp_path / "cgnetnsd.log")
    with open(log, "wb") as f:
        proc = subprocess.Popen([PY, "-m", "cgnetns.cli.broker", "--socket", SOCKET_PATH],
                                env=repo_env(), stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not broker_answers(SOCKET_PATH):
            if proc.poll() is not None:
                with open(log) as f:
                    pytest.fail("cgnetnsd exited with %s: %s" % (proc.returncode, f.read()))
            if time.monotonic() > deadline:
                pytest.fail("cgnetnsd does not answer on %s" % SOCKET_PATH)
            time.sleep(0.02)
        # Ours exited (status 1) when another broker started first and holds
        # the lock: the test then uses that one.
        own = proc.poll() is None
        print("system_broker:", ("own cgnetnsd, log " + log) if own else "another broker")
        yield log if own else None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode is not None


def test_distcc_tcp_no_new_privs_through_broker_every_object_remote(helper, allowed, work,
                                                                     system_broker):
    """Under setpriv --no-new-privs the setuid bit does nothing: cgnetns-exec asks
    cgnetnsd, which runs distcc in the approved namespace as the build user."""
    objs = project(work)
    with Topology() as topo:
        env = build_env(topo, work)
        r = sandboxed("setpriv --no-new-privs sh -c "
                      "\"grep NoNewPrivs /proc/self/status > nnp.txt && "
                      f"make -j4 CC='{helper} distcc gcc'\" && ./prog > run.txt && "
                      + probes(topo.remote_addr, DISTCC_PORT), work, env)
        assert r.returncode == 0, r.stdout
        assert "no broker" not in r.stdout and "without network" not in r.stdout, r.stdout
        assert_all_remote(topo, work, objs, r.stdout)
        assert sorted(os.path.basename(s) for s in topo.compile_ok_sources()) == \
            sorted(o[:-2] + ".c" for o in objs)
    assert read(work, "nnp.txt").split() == ["NoNewPrivs:", "1"]
    assert_no_network(work, topo.remote_addr)
    assert read(work, "run.txt").strip() == "sum=%d" % sum(4 * i for i in range(NFILES))
    if system_broker is not None:
        with open(system_broker) as f:
            text = f.read()
        # one brokered distcc per object, plus the link
        joins = re.findall(r"program=\S*distcc: join", text)
        assert len(joins) >= len(objs), text[-3000:]
        # (the fixture's own readiness probe, as root, connects and goes away:
        # that refusal is root's; the build's calls are nobody's)
        assert not re.search(r"uid=65534[^\n]*: refuse", text), text[-3000:]


def test_distcc_runs_a_non_compile_command_without_network_on_the_broker_path(
        helper, allowed, work, path):
    """distcc runs a command that is not a compile locally (`distcc python3 -c
    ...`).  On the broker path only allow-listed executables get sockets in
    the approved namespace, so python3 has none: it cannot reach the distcc
    server.  On the set-user-ID path everything distcc starts runs in the
    approved namespace (README, security): it can."""
    project(work, 1)
    code = ("import socket\n"
            "try:\n"
            "    socket.create_connection((%r, %d), 5).close(); print('CONNECTED')\n"
            "except OSError as e:\n"
            "    print('FAILED', e.errno)\n")
    with Topology() as topo:
        env = build_env(topo, work)
        script = path[1]("%s distcc /usr/bin/python3 -c %s > py.txt"
                         % (helper, shlex.quote(code % (topo.remote_addr, DISTCC_PORT))))
        r = sandboxed(script, work, env)
        assert r.returncode == 0, r.stdout
    out = read(work, "py.txt").split()
    if path[0] == "broker":
        assert out[0] == "FAILED", out
    else:
        assert out == ["CONNECTED"], out


def test_distcc_without_cgnetns_exec_fails_in_the_sandbox(helper, allowed, work):
    """Control: plain distcc in the same sandbox cannot reach the server, and
    with the tests' settings that is a failure, not a silent local compile."""
    project(work, 2)
    with Topology() as topo:
        r = sandboxed("make CC='distcc gcc'", work, build_env(topo, work))
        assert r.returncode != 0, r.stdout
        assert topo.count_compile_ok() == 0


# -- distcc over ssh, and pump mode ---------------------------------------------------

def test_distcc_ssh_mode_every_object_remote(helper, allowed, work, path):
    objs = project(work)
    with Topology(ssh=True) as topo:
        env = build_env(topo, work, "ssh")
        assert env["DISTCC_HOSTS"].startswith("@remote")
        r = sandboxed(path[1](f"make -j4 CC='{helper} distcc gcc'") + " && "
                      + probes(topo.remote_addr, 2222), work, env)
        assert r.returncode == 0, r.stdout
        assert_all_remote(topo, work, objs, r.stdout)
        assert topo.log_text("ssh-distccd").count("COMPILE_OK") == len(objs)
        assert topo.log_text("distccd").count("COMPILE_OK") == 0
    assert_no_network(work, topo.remote_addr)


# Replaces the three functions of Debian's distcc_pump_c_extensions that raise
# SystemError on Python >= 3.10 (see the module docstring).
PUMP_FIX = textwrap.dedent('''\
    """cgnetns test shim for Debian's distcc-pump include server on Python >= 3.10."""
    import os
    import struct
    import sys

    def _lzo1x_literals(data):
        """An LZO1X-1 stream made of literal runs only, ended by the EOF marker."""
        if isinstance(data, str):
            data = data.encode("latin-1")
        n = len(data)
        if n == 0:
            return b"\\x11\\x00\\x00"
        if n <= 238:
            head = bytes([17 + n])
        else:
            rest = n - 18
            head = bytearray(b"\\x00")
            while rest > 255:
                head.append(0)
                rest -= 255
            head.append(rest)
            head = bytes(head)
        return head + data + b"\\x11\\x00\\x00"

    if "include_server" in (sys.argv[0] if sys.argv else ""):
        try:
            import distcc_pump_c_extensions as _ext
        except ImportError:
            _ext = None
        if _ext is not None:
            try:
                _ext.OsPathIsFile("/")
            except SystemError:
                _ext.OsPathExists = os.path.exists
                _ext.OsPathIsFile = os.path.isfile
                _ext.CompressLzo1xAlloc = _lzo1x_literals
    ''')


def test_distcc_pump_mode_every_object_remote(helper, allowed, work, path):
    objs = project(work)
    fix = os.path.join(work["top"], "pumpfix")
    os.mkdir(fix, 0o755)
    with open(os.path.join(fix, "sitecustomize.py"), "w") as f:
        f.write(PUMP_FIX)
    pump = shutil.which("distcc-pump", path=SYSTEM_PATH) or shutil.which("pump", path=SYSTEM_PATH)
    assert pump, "distcc-pump not installed (Debian package distcc-pump)"
    with Topology() as topo:
        env = build_env(topo, work, "pump")
        env["PYTHONPATH"] = fix + os.pathsep + env["PYTHONPATH"]
        r = sandboxed(path[1](f"{pump} make -j4 CC='{helper} distcc gcc'") + " && "
                      + probes(topo.remote_addr, DISTCC_PORT), work, env)
        assert r.returncode == 0, r.stdout
        assert "pump mode" in r.stdout, r.stdout
        for bad in ("gave up", "preprocessing locally", "failed", "Traceback"):
            assert bad not in r.stdout, r.stdout
        assert_all_remote(topo, work, objs, r.stdout)
        # distccd preprocessed on the server (pump mode) for every object
        assert topo.log_text().count("(dcc_fix_debug_info)") == len(objs), topo.log_text()
    assert_no_network(work, topo.remote_addr)


# -- icecream ---------------------------------------------------------------------

def test_icecc_compiles_on_the_remote_iceccd(helper, allowed, work, path):
    objs = project(work, 6)
    with Topology(icecc=True) as topo:
        env = build_env(topo, work, **topo.icecc_env())
        r = sandboxed(path[1](f"make -j2 CC='{helper} icecc gcc'") + " && "
                      + probes(topo.remote_addr, 10245), work, env)
        assert r.returncode == 0, r.stdout
        assert_all_remote(topo, work, objs, r.stdout, topo.count_icecc_remote_jobs)
        # the same client without cgnetns-exec: icecc cannot reach the compile
        # host and compiles locally (icecream has no "no fallback" setting)
        before = topo.count_icecc_remote_jobs()
        r = sandboxed("rm -f part00.o && make part00.o CC='icecc gcc'", work, env)
        assert r.returncode == 0, r.stdout
        assert topo.count_icecc_remote_jobs() == before
    assert_no_network(work, topo.remote_addr)


# -- Portage ------------------------------------------------------------------------

PORTAGE_SCRIPT = textwrap.dedent('''\
    """Runs as root inside cgnetns-run, in the build cgroup, as emerge would."""
    import json, os, pwd, sys
    import portage.process

    cfg = json.loads(sys.argv[1])
    own = [l for l in open("/proc/self/cgroup") if l.startswith("0::")][0][3:].strip()
    info = {"own": own}
    cgroup = None
    if cfg["mode"] == "spawn":
        for root in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
            if os.path.exists(os.path.join(root, "cgroup.procs")) and \\
                    os.path.exists(os.path.join(root, "cgroup.subtree_control")):
                break
        cgroup = root + own
    else:
        import portage.util.cgroup as pcg
        own_path = "/sys/fs/cgroup" + own
        info["available"] = pcg.available()
        info["delegated"] = pcg._is_delegated(own_path)
        info["controllers"] = sorted(pcg._read_controllers(own_path))
        info["default_root"] = pcg.DEFAULT_CGROUP_ROOT
        root = os.environ.get("PORTAGE_CGROUP_ROOT")
        if root is None and not pcg.DEFAULT_CGROUP_ROOT.startswith(own_path + "/"):
            root = os.path.join(own_path, "portage")  # see the test module docstring
            info["override"] = root
        root = root or pcg.DEFAULT_CGROUP_ROOT
        mgr = pcg.CgroupManager(root)          # as _emerge.Scheduler does
        info["setup"] = mgr.setup()
        cgroup = pcg.ensure_leaf(mgr.emerge_root, "dev-util/cgnetns-probe-1")  # as doebuild
        info["emerge_root"] = mgr.emerge_root
    info["leaf"] = cgroup
    pw = pwd.getpwnam("nobody")
    rc = portage.process.spawn(["/bin/sh", "-c", cfg["script"]], env=cfg["env"],
                               uid=pw.pw_uid, gid=pw.pw_gid, groups=[pw.pw_gid],
                               unshare_net=True, cgroup=cgroup, cwd=cfg["cwd"])
    info["rc"] = rc
    if cfg["mode"] != "spawn":
        mgr.close()
        info["left"] = os.path.exists(mgr.emerge_root)
    with open(cfg["out"], "w") as f:
        json.dump(info, f)
    sys.exit(0 if rc == 0 else 1)
    ''')


def run_portage(topo, work, mode, helper, private_cgroup2=False):
    objs = project(work, 8)
    script = os.path.join(work["top"], "portage_phase.py")
    with open(script, "w") as f:
        f.write(PORTAGE_SCRIPT)
    out = os.path.join(work["top"], "portage.json")
    env = build_env(topo, work)
    phase_env = {k: env[k] for k in ("PATH", "HOME", "LANG", "TMPDIR", "DISTCC_HOSTS",
                                     "DISTCC_FALLBACK", "DISTCC_SKIP_LOCAL_RETRY", "DISTCC_DIR")}
    cfg = {"mode": mode, "env": phase_env, "cwd": work["src"], "out": out,
           "script": f"make -j4 CC='{helper} distcc gcc' && "
                     + probes(topo.remote_addr, DISTCC_PORT)}
    inner = [*CGNETNS_RUN, "--name", "portage", "--", PY, script, json.dumps(cfg)]
    if private_cgroup2:
        argv = ["unshare", "--mount", "--", "/bin/sh", "-c",
                'mount --make-rprivate / && mount -t cgroup2 none /sys/fs/cgroup && exec "$@"',
                "sh", *inner]
    else:
        argv = inner
    r = subprocess.run(argv, env=env, cwd=work["top"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT)
    info = {}
    if os.path.exists(out):
        with open(out) as f:
            info = json.load(f)
    return r, info, objs


def test_portage_spawn_unshare_net_in_cgnetns_run_distcc_remote(helper, allowed, work):
    """portage.process.spawn(unshare_net=True, uid, gid, cgroup) -- how Portage
    starts a sandboxed phase -- inside cgnetns-run: distcc still compiles remotely."""
    with Topology() as topo:
        r, info, objs = run_portage(topo, work, "spawn", helper)
        assert r.returncode == 0, (r.stdout, info)
        assert info["rc"] == 0
        assert_all_remote(topo, work, objs, r.stdout)
    assert "Unable to unshare" not in r.stdout
    assert_no_network(work, topo.remote_addr)
    assert read(work, "cgroup.txt").strip() == info["own"]


def test_portage_features_cgroup_nests_in_build_cgroup_distcc_resolves(helper, allowed, work):
    with Topology() as topo:
        r, info, objs = run_portage(topo, work, "cgroup", helper, private_cgroup2=True)
        assert r.returncode == 0, (r.stdout, info)
        assert info["available"] and info["setup"], info
        assert info["delegated"], "Portage does not see the cgnetns build cgroup as delegated"
        if "override" in info:
            # hybrid host: cpu/io/memory are bound to cgroup v1 (module docstring)
            assert not {"cpu", "io", "memory"} <= set(info["controllers"]), info
        else:
            assert info["default_root"].startswith("/sys/fs/cgroup" + info["own"] + "/")
        own_path = "/sys/fs/cgroup" + info["own"]
        assert info["emerge_root"] == os.path.join(os.path.dirname(info["leaf"]))
        assert os.path.basename(info["emerge_root"]).startswith("emerge-")
        assert info["leaf"].startswith(own_path + "/"), info
        # the phase ran in Portage's leaf, below the cgnetns build cgroup
        assert "/sys/fs/cgroup" + read(work, "cgroup.txt").strip() == info["leaf"]
        assert_all_remote(topo, work, objs, r.stdout)
        assert not info["left"]
    assert_no_network(work, topo.remote_addr)


# -- make demo ----------------------------------------------------------------------

def test_demo_end_to_end(helper, allowed):
    """python3 -m testbed.demo, as `make demo` runs it (the installed commands)."""
    r = subprocess.run([PY, "-m", "testbed.demo"], env=repo_env(), capture_output=True,
                       text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Demo passed" in r.stdout
    assert "all 9 objects were compiled on the remote host" in r.stdout
    assert "ip -o link inside the build: lo\n" in r.stdout
    assert "Network is unreachable" in r.stdout
    netns = re.search(r"\(namespace (cgnetns-remote-[0-9a-f]+)\)", r.stdout).group(1)
    assert not os.path.exists(os.path.join("/run/netns", netns))


def test_demo_failure_is_one_line_without_traceback(monkeypatch, capsys):
    from testbed import demo
    monkeypatch.setattr(demo.os, "geteuid", lambda: 1000)
    assert demo.main([]) == 1
    err = capsys.readouterr().err
    assert err.startswith("demo: FAILED: ") and err.count("\n") == 1
    assert "Traceback" not in err
