"""The root side on the real kernel: tags, pins, cgroups, cgnetns-run (issue 2)."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from cgnetns import cgroups, namespaces, records, tags
from cgnetns.build import Build
from cgnetns.errors import CgnetnsError, TagFormatError

LEAK_PREFIX = "core"  # conftest.clean_host checks only this file's builds

from conftest import CGNETNS_RUN, PY, USER_PY, host_state, repo_env, run


def test_tag_records_the_creators_namespace_and_the_pin_matches(clean_host, cg2root):
    with Build(name="core-tag") as b:
        tag = tags.read_tag(b.cgroup_path)
        me = namespaces.current_identity()
        assert tag.pin == b.id
        assert (tag.dev, tag.ino, tag.nsid) == (me.dev, me.ino, me.nsid)
        assert me.nsid != 0  # NS_GET_ID works on this kernel (FIELD-NOTES.md)
        assert namespaces.identity_of_path(b.pin_path) == me
        assert namespaces.is_mounted(b.pin_path)
        assert os.stat(b.cgroup_path).st_uid == 0
        assert os.getxattr(b.cgroup_path, "trusted.delegate") == b"1"
        assert b.cgroup_path.startswith(os.path.join(cg2root, "cgnetns") + "/")
        st = os.stat(namespaces.pins_dir())
        assert st.st_mode & 0o777 == 0o700 and st.st_uid == 0
        assert os.stat(namespaces.RUN_DIR).st_mode & 0o777 == 0o755
        assert records.record_is_live(records.record_path(b.id))
    assert not os.path.exists(b.cgroup_path)
    assert not os.path.exists(b.pin_path)


def test_tag_format_is_strict():
    ident = namespaces.NsIdentity(4, 4026531833, 3)
    raw = tags.format_tag("x-1", ident)
    assert raw == b"v1 pin=x-1 dev=4 ino=4026531833 nsid=3"
    assert tags.parse_tag(raw) == tags.Tag("x-1", 4, 4026531833, 3)
    for bad in [b"", b"v1", b"v2 pin=x dev=1 ino=1 nsid=1", b"v1 pin=x dev=01 ino=1 nsid=1",
                b"v1 pin=x dev=1 ino=1 nsid=1 ", b"v1  pin=x dev=1 ino=1 nsid=1",
                b"v1 pin=../x dev=1 ino=1 nsid=1", b"v1 pin=x dev=-1 ino=1 nsid=1",
                b"v1 pin=x dev=1 ino=18446744073709551616 nsid=1", b"v1 pin=x.json dev=1 ino=1 nsid=1",
                b"v1 pin=x dev=1 ino=1 nsid=1\n", b"v1 pin=x ino=1 dev=1 nsid=1", b"\xff" * 10,
                b"v1 pin=x dev=1 ino=1 nsid=1" + b"0" * 300]:
        with pytest.raises(TagFormatError):
            tags.parse_tag(bad)
    with pytest.raises(TagFormatError) as e:
        tags.parse_tag(b"v7 pin=x dev=1 ino=1 nsid=1")
    assert "version v7" in str(e.value)


def _in_build_as_nobody(b, script, unshare_net=True):
    p = b.spawn(["sh", "-c", script], user="nobody", unshare_net=unshare_net,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = p.communicate(timeout=30)
    return p.returncode, out.decode()


def test_build_user_cannot_change_tag_leave_or_enter_another_build(clean_host, cg2root):
    with Build(name="core-victim") as other, Build(name="core-attacker") as b:
        before = os.getxattr(b.cgroup_path, tags.TAG_XATTR)
        other_tag = os.getxattr(other.cgroup_path, tags.TAG_XATTR)
        script = """
            cg=%(root)s$(sed -n 's/^0:://p' /proc/self/cgroup)
            setfattr -x trusted.cgnetns "$cg" 2>/dev/null && echo REMOVED
            setfattr -n trusted.cgnetns -v 'v1 pin=x dev=1 ino=1 nsid=0' "$cg" 2>/dev/null && echo CHANGED
            setfattr -n user.cgnetns -v forged "$cg" 2>/dev/null && echo USERXATTR
            echo $$ > %(root)s/cgroup.procs 2>/dev/null && echo LEFT_TO_ROOT
            echo $$ > %(root)s/cgnetns/cgroup.procs 2>/dev/null && echo LEFT_TO_PARENT
            echo $$ > %(other)s/cgroup.procs 2>/dev/null && echo ENTERED_OTHER
            mkdir "$cg/sub" 2>/dev/null && echo MADE_CHILD
            sed -n 's/^0:://p' /proc/self/cgroup
        """ % {"root": cg2root, "other": other.cgroup_path}
        rc, out = _in_build_as_nobody(b, script)
        for word in ("REMOVED", "CHANGED", "USERXATTR", "LEFT_TO_ROOT", "LEFT_TO_PARENT",
                     "ENTERED_OTHER", "MADE_CHILD"):
            assert word not in out, out
        assert out.strip().splitlines()[-1] == b.cgroup, out
        assert os.getxattr(b.cgroup_path, tags.TAG_XATTR) == before
        assert os.getxattr(other.cgroup_path, tags.TAG_XATTR) == other_tag
        assert cgroups.procs(other.cgroup_path) == []


@pytest.fixture
def parent_server():
    """A TCP server that listens on 127.0.0.1 in the parent namespace only."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    hits = []

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            hits.append(1)
            c.sendall(b"parent\n")
            c.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1], hits
    srv.close()
    t.join(5)


def test_unshare_net_sees_only_lo_and_cannot_reach_the_parent(clean_host, parent_server):
    port, hits = parent_server
    with Build(name="core-sandbox") as b:
        probe = ("import socket, os\n"
                 "print(sorted(n for i, n in socket.if_nameindex()))\n"
                 "s = socket.socket()\n"
                 "s.settimeout(2)\n"
                 "try:\n"
                 "    s.connect(('127.0.0.1', %d)); print('CONNECTED', s.recv(10))\n"
                 "except OSError as e:\n"
                 "    print('REFUSED', e.errno)\n" % port)
        p = b.spawn([USER_PY, "-c", probe], user="nobody", unshare_net=True, stdout=subprocess.PIPE)
        out = p.communicate(timeout=30)[0].decode()
    assert "['lo']" in out
    assert "REFUSED" in out and "CONNECTED" not in out
    assert hits == []


def test_cgnetns_run_contract(clean_host):
    r = run(CGNETNS_RUN + ["--unshare-net", "--user", "nobody", "--name", "core-c", "--",
                           "sh", "-c", "id -u; sed -n 's/^0:://p' /proc/self/cgroup; "
                           "readlink /proc/self/ns/net; ip -o link | cut -d: -f2; exit 7"],
            env=repo_env())
    assert r.returncode == 7, r.stderr
    uid, cg, ns, links = r.stdout.decode().split("\n", 3)
    assert uid == "65534"
    assert "/cgnetns/core-c-" in cg
    assert ns != os.readlink("/proc/self/ns/net")
    assert links.split() == ["lo"]
    assert r.stderr == b""


def test_cgnetns_run_exit_status_of_a_signal(clean_host):
    r = run(CGNETNS_RUN + ["--name", "core-sig", "sh", "-c", "kill -TERM $$"], env=repo_env())
    assert r.returncode == 128 + signal.SIGTERM


@pytest.mark.parametrize("argv,status,words", [
    (["--user", "no-such-user-xyz", "true"], 2, "unknown user"),
    (["no-such-command-xyz"], 127, "command not found"),
    (["/proc/self/status"], 126, "not executable"),
    ([], 2, "no COMMAND"),
])
def test_cgnetns_run_bad_input(clean_host, argv, status, words):
    r = run(CGNETNS_RUN + argv, env=repo_env())
    assert r.returncode == status
    err = r.stderr.decode()
    assert words in err and err.count("\n") == 1 and "Traceback" not in err


def test_cgnetns_run_refuses_non_root(clean_host):
    # Import first, then drop: the interpreter lives under /root (0700).
    code = ("import os, sys; from cgnetns.cli import run as r; os.setresuid(65534, 65534, 65534);"
            "sys.exit(r.main(['true']))")
    p = run([PY, "-c", code], env=repo_env())
    assert p.returncode == 125
    assert b"must run as root" in p.stderr and p.stderr.count(b"\n") == 1


@pytest.fixture
def marker_dir():
    """A directory for a marker the command would write if it ran (outside
    /run and /sys, which the tests below hide); removed afterwards."""
    d = tempfile.mkdtemp(prefix="cgnetns-core-marker-", dir="/var/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d)


def _run_in_mount_namespace(setup, marker_dir, name):
    """Run cgnetns-run in a private mount namespace made by `setup` (shell,
    may be empty), with a command that writes a marker.  (result, marker)."""
    marker = os.path.join(marker_dir, name)
    script = ("mount --make-rprivate / && %s"
              "exec %s -m cgnetns.cli.run --name core-x -- sh -c 'echo ran > \"$0\"' %s"
              % (setup + " && " if setup else "", PY, marker))
    return run(["unshare", "-m", "sh", "-c", script], env=repo_env()), marker


def test_no_cgroup2_is_refused_with_a_hint(clean_host, cg2root, marker_dir):
    # Control: the same command line, cgroup2 in place, runs the command.
    r, marker = _run_in_mount_namespace("", marker_dir, "control")
    assert r.returncode == 0, r.stderr
    assert os.path.exists(marker)
    # Hide cgroup2 in a private mount namespace.
    r, marker = _run_in_mount_namespace("umount -l %s" % cg2root, marker_dir, "ran")
    assert r.returncode == 125
    err = r.stderr.decode()
    assert err.startswith("cgnetns-run: ") and err.count("\n") == 1
    assert "no cgroup2" in err and "mount -t cgroup2" in err
    assert not os.path.exists(marker), "the command ran"


def test_unwritable_run_is_refused(clean_host, marker_dir):
    r, marker = _run_in_mount_namespace("", marker_dir, "control")
    assert r.returncode == 0, r.stderr
    assert os.path.exists(marker)
    r, marker = _run_in_mount_namespace("mount -t tmpfs -o ro,mode=755 none /run",
                                            marker_dir, "ran")
    assert r.returncode == 125
    assert r.stderr.startswith(b"cgnetns-run: ") and r.stderr.count(b"\n") == 1
    assert b"/run" in r.stderr
    assert not os.path.exists(marker), "the command ran"


def test_unified_layout_in_a_private_mount_namespace(cg2root):
    # Mount cgroup2 at /sys/fs/cgroup itself, as on a unified host.
    script = ("mount --make-rprivate / && mount -t tmpfs none /sys/fs/cgroup && "
              "mount -t cgroup2 none /sys/fs/cgroup && "
              "exec %s -m cgnetns.cli.run --name core-unified -- sh -c "
              "'sed -n s/^0:://p /proc/self/cgroup; getfattr --only-values -n trusted.cgnetns "
              "/sys/fs/cgroup$(sed -n s/^0:://p /proc/self/cgroup)'" % PY)
    before = host_state(cg2root)
    r = run(["unshare", "-m", "sh", "-c", script], env=repo_env())
    assert r.returncode == 0, r.stderr
    cg, tag = r.stdout.decode().split("\n", 1)
    assert cg.startswith("/cgnetns/core-unified-")
    assert tag.startswith("v1 pin=core-unified-")
    after = host_state(cg2root)
    for key in after:
        assert not {x for x in after[key] - before[key]
                    if os.path.basename(x).startswith(LEAK_PREFIX)}, key


def test_teardown_after_exception(clean_host):
    b = Build(name="core-exc")
    with pytest.raises(RuntimeError):
        with b:
            p = b.spawn(["sleep", "300"])
            raise RuntimeError("boom")
    assert p.wait(10) == -signal.SIGKILL
    assert not os.path.exists(b.cgroup_path)
    assert not namespaces.is_mounted(b.pin_path)


def test_teardown_after_sigterm_to_cgnetns_run(clean_host, tmp_path):
    marker = tmp_path / "started"
    p = subprocess.Popen(CGNETNS_RUN + ["--unshare-net", "--name", "core-term", "--", "sh", "-c",
                                        "sleep 300 & touch %s; wait" % marker],
                         env=repo_env(), stderr=subprocess.PIPE)
    for _ in range(500):
        if marker.exists():
            break
        time.sleep(0.02)
    assert marker.exists()
    mid = host_state()
    assert mid["cgroups"] - clean_host["cgroups"]  # the build exists now
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 128 + signal.SIGTERM
    # sleep 300 was in the build's cgroup: killed with it.


def test_twenty_runs_at_once_each_get_their_own(clean_host):
    procs = []
    for i in range(20):
        procs.append(subprocess.Popen(
            CGNETNS_RUN + ["--unshare-net", "--name", "core-par%d" % i, "--", "sh", "-c",
                           "sed -n 's/^0:://p' /proc/self/cgroup; "
                           "getfattr --only-values -n trusted.cgnetns "
                           "%s$(sed -n 's/^0:://p' /proc/self/cgroup); echo; sleep 0.5"
                           % cgroups.find_cgroup2()],
            env=repo_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 20, [o[1] for o in outs]
    cgs, pins = set(), set()
    me = namespaces.current_identity()
    for i, (out, _) in enumerate(outs):
        cg, tag = out.decode().split("\n")[:2]
        assert "/core-par%d-" % i in cg
        t = tags.parse_tag(tag.encode())
        assert t.pin == os.path.basename(cg)
        assert (t.dev, t.ino, t.nsid) == tuple(me)
        cgs.add(cg)
        pins.add(t.pin)
    assert len(cgs) == 20 and len(pins) == 20


def test_adopt_tags_a_cgroup_another_tool_made(clean_host, cg2root):
    path = os.path.join(cg2root, "adopt-test-%d" % os.getpid())
    os.mkdir(path)
    try:
        b = Build.adopt(path, name="emerge")
        try:
            assert tags.read_tag(path).pin == b.id
        finally:
            b.close()
        assert os.path.isdir(path)
        assert tags.read_raw_tag(path) is None
        assert not namespaces.is_mounted(b.pin_path)
        with pytest.raises(CgnetnsError):
            Build.adopt("/tmp", name="x")
    finally:
        os.rmdir(path)


def test_setup_failure_in_child_fails_closed(clean_host):
    with Build(name="core-failclosed") as b:
        p = b.spawn(["true"], user="nobody", unshare_net=True,
                    pre_exec=lambda: (_ for _ in ()).throw(RuntimeError("no")),
                    stderr=subprocess.PIPE)
        _, err = p.communicate(timeout=10)
    assert p.returncode == 125
    assert b"failed" in err
