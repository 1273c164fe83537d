"""The test topology itself (testbed/topology.py): a remote host in its own
network namespace, joined by a veth pair, with real servers from Debian's
packages.  These tests use no part of cgnetns but the topology: they check that
it comes up, serves distcc (TCP and ssh) from the parent namespace, refuses a
client without a route, coexists with a second one, and leaves nothing behind
on a normal exit, an exception in the block, or a failure half way through
start-up.  Network traffic goes only to the veth addresses it made."""

import ipaddress
import os
import subprocess
import tempfile
import time

import pytest

from testbed.topology import SUBNET_POOL, Topology, TopologyError

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def netns_list():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def link_exists(name):
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def snapshot(topo):
    return {"netns": topo.netns, "veth": topo.veth_parent, "tmpdir": topo.tmpdir,
            "pids": topo.pids()}


def assert_gone(snap):
    assert snap["netns"] not in netns_list()
    assert not os.path.exists(f"/run/netns/{snap['netns']}")
    assert not link_exists(snap["veth"])
    assert not os.path.exists(snap["tmpdir"])
    alive = [p for p in snap["pids"] if pid_alive(p)]
    assert not alive, f"server processes left: {alive}"


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="cgnetns-topotest-")
    os.chmod(d, 0o777)
    yield d
    subprocess.run(["rm", "-rf", d])


def compile_one(workdir, env_extra, name="t", user_cmd=()):
    src = os.path.join(workdir, f"{name}.c")
    with open(src, "w") as f:
        f.write(f"int {name}_fn(int x) {{ return x + 1; }}\n")
    os.chmod(src, 0o644)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": workdir, **env_extra}
    return subprocess.run([*user_cmd, "distcc", "gcc", "-c", src, "-o",
                           os.path.join(workdir, f"{name}.o")],
                          env=env, capture_output=True, text=True, timeout=120)


def test_comes_up_serves_and_goes(workdir):
    with Topology() as topo:
        snap = snapshot(topo)
        net = ipaddress.ip_network(topo.subnet)
        assert net.prefixlen == 30 and net.subnet_of(SUBNET_POOL)
        assert ipaddress.ip_address(topo.remote_addr) in net
        assert ipaddress.ip_address(topo.parent_addr) in net
        assert topo.netns in netns_list()
        assert link_exists(topo.veth_parent)
        # the remote address lives in the remote namespace only
        out = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
        assert topo.remote_addr + "/" not in out and topo.parent_addr + "/30" in out
        assert all(pid_alive(p) for p in topo.pids())
        os.chown(workdir, 65534, 65534)
        r = compile_one(workdir, topo.distcc_env(workdir), user_cmd=NOBODY)
        assert r.returncode == 0, r.stderr
        assert topo.count_compile_ok() == 1
        assert [os.path.basename(s) for s in topo.compile_ok_sources()] == ["t.c"]
    assert_gone(snap)


def test_client_without_route_fails_instead_of_compiling_locally(workdir):
    """The distcc settings the tests use make a local fallback a failure."""
    with Topology() as topo:
        r = compile_one(workdir, topo.distcc_env(workdir), user_cmd=["unshare", "--net"])
        assert r.returncode != 0, "distcc fell back to a local compile"
        assert not os.path.exists(os.path.join(workdir, "t.o"))
        assert topo.count_compile_ok() == 0


def test_ssh_mode_as_unprivileged_client(workdir):
    with Topology(ssh=True) as topo:
        snap = snapshot(topo)
        os.chown(workdir, 65534, 65534)
        r = compile_one(workdir, topo.distcc_env(workdir, "ssh"), user_cmd=NOBODY)
        assert r.returncode == 0, r.stderr
        assert topo.count_compile_ok() == 1
        assert "COMPILE_OK" in topo.log_text("ssh-distccd")
        # the forced command refuses anything but distccd --inetd
        r = subprocess.run([*NOBODY, topo.ssh_wrapper, "remote", "id"], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode != 0 and "refused" in r.stderr
    assert_gone(snap)
    # the test account existed only in the remote host's view of /etc/passwd
    with open("/etc/passwd") as f:
        assert topo.remote_user not in f.read()


def test_two_at_once_do_not_collide():
    with Topology() as a, Topology() as b:
        assert a.netns != b.netns and a.veth_parent != b.veth_parent
        assert not ipaddress.ip_network(a.subnet).overlaps(ipaddress.ip_network(b.subnet))
        snaps = [snapshot(a), snapshot(b)]
    for s in snaps:
        assert_gone(s)


def test_exception_in_block_tears_down():
    with pytest.raises(RuntimeError, match="boom"):
        with Topology(ssh=True) as topo:
            snap = snapshot(topo)
            raise RuntimeError("boom")
    assert_gone(snap)


def test_failure_during_start_tears_down():
    seen = {}

    class Broken(Topology):
        def _start_sshd(self):
            seen.update(snapshot(self))
            raise TopologyError("sshd would not start")

    with pytest.raises(TopologyError, match="sshd would not start"):
        with Broken(ssh=True):
            pass  # pragma: no cover
    assert seen["netns"] and seen["pids"]
    assert_gone(seen)


def _in_namespace(pid, path):
    """Is process PID in the network namespace bound at PATH?"""
    want = os.stat(path)
    try:
        got = os.stat("/proc/%d/ns/net" % pid)
    except FileNotFoundError:
        return False
    return (got.st_dev, got.st_ino) == (want.st_dev, want.st_ino)


def test_stray_process_in_remote_namespace_is_ended():
    stray = None
    try:
        with Topology() as topo:
            snap = snapshot(topo)
            stray = subprocess.Popen(["nsenter", f"--net={topo.netns_path}", "--", "sleep",
                                      "300"], start_new_session=True)
            # In the namespace before the teardown looks: Popen returns
            # before nsenter has called setns.
            deadline = time.monotonic() + 10
            while not _in_namespace(stray.pid, topo.netns_path):
                assert stray.poll() is None, "nsenter failed"
                assert time.monotonic() < deadline, "the stray never entered the namespace"
                time.sleep(0.01)
        stray.wait(10)
    finally:
        if stray is not None and stray.poll() is None:
            stray.kill()
            stray.wait()
    assert stray.returncode is not None
    assert_gone(snap)
