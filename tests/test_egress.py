"""The egress policy (issue 16, cgnetns/egress.py), on the real kernel.

A build with a policy reaches exactly its listed destinations through
cgnetns: the kernel rejects (not drops) every other connection or datagram
of the build's sockets, counted by the build's own rule, while processes
outside the build, in the same namespace, are untouched.  Shown here:

* the policy's lines, file rules and name resolution (one bad line, one line
  of error that names the line and the fix);
* the filter keyed to the build cgroup and everything below it (a
  Portage-like ``emerge-<pid>/<cpv>`` cgroup), TCP reset and datagram
  refusal, counters, two concurrent builds with different policies, a
  policy in another namespace (entered through the pin), teardown;
* a distcc build against the test topology's remote host
  (testbed/topology.py) plus a second server of the test's own on it:
  every object compiled remotely, while ``cgnetns-exec distcc python3 -c``
  (set-user-ID path: distcc's children run in the approved namespace) is
  refused at once by the kernel on the unlisted port; the broker path with
  an allow-listed probe (helper/testsupport/netprobe.c); distcc's ssh mode
  with only the ssh port listed, on both paths;
* ``cgnetns-run``: a bad policy and a filter that cannot be installed are
  refused (125, one line, nothing made); SIGKILL of cgnetns-run, then
  ``cgnetns-gc``, leaves no filter; no policy file changes nothing;
* ``cgnetns-show`` prints the policy of a process and ``--check`` tries
  nftables.

The system's /etc/cgnetns/egress is never written: the library takes a
per-build policy (``Build(egress=...)``), and ``cgnetns-run`` runs with
``paths.EGRESS_PATH`` pointed at a private file (in a process of its own).
Lines this module adds to /etc/cgnetns/allow (distcc, ssh, the probe) go
again afterwards.  Everything is removed by name or PID: builds, nft
chains and tables, servers, the topology, the test directory.
"""

import contextlib
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from cgnetns import cgroups, egress, namespaces, paths
from cgnetns.build import Build
from testbed.demo import write_project
from cgnetns.errors import CgnetnsError
from testbed.topology import DISTCC_PORT, SSH_PORT, SYSTEM_PATH, Topology

from conftest import PY, REPO, USER_PY, host_state, repo_env

LEAK_PREFIX = "egt"
ALLOW = paths.ALLOW_PATH
BUILD_PATH = "/usr/local/bin:" + SYSTEM_PATH
NETPROBE_SRC = os.path.join(REPO, "helper", "testsupport", "netprobe.c")
OTHER_PORT = 4040     # the second server on the remote host (not in any policy)
TOKEN = b"egress-token"
NFILES = 6            # + main.c: 7 objects
REFUSED_FAST = 2.0    # seconds: a rejection, not a timeout (connects wait 10 s)

# cgnetns-run with paths.EGRESS_PATH pointed at argv[1] (and, with a second
# argument "nolib", libnftables unloadable), in a process of its own.
RUN_WITH_POLICY = r"""
import sys
sys.path.insert(0, %r)
from cgnetns import egress, paths
paths.EGRESS_PATH = sys.argv[1]
if sys.argv[2] == "nolib":
    egress.LIBNFTABLES = ("libcgnetns-test-no-such-library.so.0",)
from cgnetns.cli import run
sys.exit(run.main(sys.argv[3:]))
""" % REPO

# One try a spec PROTO,HOST,PORT: tcp connects and reads the server's line,
# syn only connects, udp sends two datagrams; prints {spec: [outcome, seconds]}
# with outcome "ok <line>", "ok", "sent" or "errno N".
PROBE = r"""
import json, socket, sys, time
out = {}
for spec in sys.argv[1:]:
    proto, host, port = spec.split(",")
    t = time.monotonic()
    try:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        if proto in ("tcp", "syn"):
            s = socket.create_connection((host, int(port)), 10)
            r = "ok"
            if proto == "tcp":
                r += " " + s.makefile("rb").readline().decode().strip()
        else:
            s = socket.socket(fam, socket.SOCK_DGRAM)
            s.connect((host, int(port)))
            s.send(b"x")
            time.sleep(0.05)
            s.send(b"y")
            r = "sent"
        s.close()
    except OSError as e:
        r = "errno %d" % e.errno
    out[spec] = [r, time.monotonic() - t]
print(json.dumps(out))
"""

SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"%s\n")
    c.close()
""" % TOKEN.decode()


# -- helpers ----------------------------------------------------------------------

class LineServer:
    """A TCP server on 127.0.0.1 in this process's namespace that sends one
    line to each client; and a UDP socket that takes datagrams."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp_port = self.udp.getsockname()[1]
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(0.1)
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with c:
                try:
                    c.sendall(TOKEN + b"\n")
                except OSError:
                    pass

    def close(self):
        self.stop = True
        self.thread.join(5)
        self.sock.close()
        self.udp.close()


@pytest.fixture
def servers():
    made = [LineServer(), LineServer()]
    try:
        yield made
    finally:
        for s in made:
            s.close()


@pytest.fixture
def tdir():
    """A root-owned directory below /run (the policy file rules refuse /tmp)."""
    d = os.path.join("/run", "cgnetns-egress-test-" + secrets.token_hex(5))
    os.mkdir(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def write_policy(tdir, text, name="egress", mode=0o644):
    path = os.path.join(tdir, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def leftovers():
    """This module's builds that host_state() still finds (other suites'
    builds may come and go meanwhile)."""
    return {k: sorted(x for x in v if os.path.basename(x).startswith(LEAK_PREFIX + "-"))
            for k, v in host_state().items() if any(
                os.path.basename(x).startswith(LEAK_PREFIX + "-") for x in v)}


def our_chains():
    """The build chains of this module's builds in this namespace's table."""
    return [c for c in egress.chains() or () if c.startswith(egress.CHAIN_PREFIX + LEAK_PREFIX)]


@pytest.fixture(autouse=True)
def no_filter_left():
    """Every test leaves no chain of its builds, and no table it made."""
    had_table = egress.table_exists()
    yield
    left = our_chains()
    for chain in left:  # leave the host clean whatever happened, then fail
        with contextlib.suppress(Exception):
            egress._in_netns(None, None, lambda nft, c=chain: egress._remove(nft, c, None, None))
    assert not left, "filters left behind: %s" % left
    if not had_table and egress.table_exists():
        # another suite's build may hold it; ours are gone (checked above)
        assert [c for c in egress.chains() if c.startswith(egress.CHAIN_PREFIX)], \
            "an empty inet cgnetns table was left behind"


def probe(build, specs, user="nobody", pre_exec=None, **kw):
    """Run PROBE in BUILD (its cgroup, this namespace) as USER; {spec: (outcome, s)}."""
    p = build.spawn([USER_PY, "-c", PROBE] + list(specs), user=user, pre_exec=pre_exec,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    return {k: tuple(v) for k, v in json.loads(out).items()}


def probe_outside(specs):
    r = subprocess.run([USER_PY, "-c", PROBE] + list(specs), capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return {k: tuple(v) for k, v in json.loads(r.stdout).items()}


def assert_refused(result, errno_=111):
    outcome, seconds = result
    assert outcome == "errno %d" % errno_, result
    assert seconds < REFUSED_FAST, result


def assert_reached(result):
    assert result[0] == "ok " + TOKEN.decode(), result


def rejected(build):
    """Packets the build's rejecting rules counted."""
    return sum(r["packets"] or 0 for r in egress.counters(build) or ()
               if r["verdict"] == "reject")


def passed(build, line):
    return sum(r["packets"] or 0 for r in egress.counters(build) or ()
               if r["comment"] == "line %d" % line)


# -- the policy ---------------------------------------------------------------------

GOOD = """\
# distcc hosts
tcp 198.18.0.2 3632
udp fd00::1 53      # a resolver
tcp 10.0.0.0/8 1000-2000

tcp distcc-1.example.org 3632
tcp 2001:db8::/32 22
"""

BAD = [
    ("tcp 10.0.0.1/8 3632", "not a network", "10.0.0.0/8"),
    ("icmp 1.2.3.4 1", "not a protocol", "tcp or udp"),
    ("TCP 1.2.3.4 1", "not a protocol", "tcp or udp"),
    ("tcp 1.2.3.4", "2 fields, not 3", "tcp|udp ADDRESS"),
    ("tcp 1.2.3.4 22 extra", "4 fields, not 3", "tcp|udp ADDRESS"),
    ("tcp 1.2.3.4 0", "not in 1-65535", "a port (1-65535)"),
    ("tcp 1.2.3.4 70000", "not in 1-65535", "a port (1-65535)"),
    ("tcp 1.2.3.4 20-10", "runs backwards", "10-20"),
    ("tcp 1.2.3.4 ssh", "not a port", "3632-3633"),
    ("tcp [::1] 22", "neither an address nor a host name", "no brackets"),
    ("tcp fe80::1%eth0 22", "neither an address nor a host name", "no zone"),
    ("tcp 300.1.1.1 22", "neither an address nor a host name", "host name"),
    ("tcp a..b 22", "neither an address nor a host name", "host name"),
    ("tcp h\u00e9te 22", "not ASCII", "tcp|udp ADDRESS"),
]


def test_policy_lines():
    pol = egress.Policy.parse(GOOD, "/x/egress")
    got = [(r.line, r.proto, str(r.network) if r.network else r.name, r.ports)
           for r in pol.rules]
    assert got == [(2, "tcp", "198.18.0.2/32", "3632"), (3, "udp", "fd00::1/128", "53"),
                   (4, "tcp", "10.0.0.0/8", "1000-2000"),
                   (6, "tcp", "distcc-1.example.org", "3632"), (7, "tcp", "2001:db8::/32", "22")]
    assert egress.Policy.parse("# nothing\n\n").rules == []
    for line, problem, fix in BAD:
        with pytest.raises(egress.PolicyError) as e:
            egress.Policy.parse(GOOD + line + "\n" + "tcp 1.2.3.4 1\n", "/x/egress")
        one = e.value.line()
        assert "\n" not in one
        assert one.startswith("/x/egress line 8: "), one  # the first bad line, by number
        assert problem in e.value.message and fix in e.value.hint, (line, one)
    with pytest.raises(egress.PolicyError) as e:
        egress.Policy.parse("tcp 1.2.3.4 1\ntcp 1.2\x003.4 1\n", "/x/egress")
    assert "line 2 contains a NUL byte" in e.value.message


def test_policy_file_rules(tdir):
    assert egress.load(os.path.join(tdir, "missing")) is None  # no file: no policy
    with pytest.raises(egress.PolicyError, match="does not exist"):
        egress.load(os.path.join(tdir, "missing"), missing_ok=False)
    good = write_policy(tdir, "tcp 127.0.0.1 3632\n")
    assert [r.text for r in egress.load(good).rules] == ["tcp 127.0.0.1 3632"]
    for mode, problem in ((0o664, "group or other writable"), (0o646, "group or other writable")):
        os.chmod(good, mode)
        with pytest.raises(egress.PolicyError, match=problem) as e:
            egress.load(good)
        assert "chown root:root" in e.value.hint and "remove it" in e.value.hint
    os.chmod(good, 0o644)
    os.chown(good, pwd.getpwnam("nobody").pw_uid, -1)
    with pytest.raises(egress.PolicyError, match="not root"):
        egress.load(good)
    os.chown(good, 0, 0)
    link = os.path.join(tdir, "link")
    os.symlink(good, link)
    with pytest.raises(egress.PolicyError, match="symbolic link"):
        egress.load(link)
    sub = os.path.join(tdir, "open")
    os.mkdir(sub, 0o777)
    os.chmod(sub, 0o777)
    with pytest.raises(egress.PolicyError, match="writable"):
        egress.load(write_policy(sub, "tcp 127.0.0.1 1\n"))
    big = write_policy(tdir, "# x\n" * (egress.MAX_SIZE // 4 + 1), "big")
    with pytest.raises(egress.PolicyError, match="larger than 64 KiB"):
        egress.load(big)


def test_names_resolved_at_creation_and_recorded(clean_host):
    pol = egress.Policy.parse("tcp localhost 3632\nudp 127.0.0.2 53\n")
    with Build(name="egt-names", egress=pol) as b:
        with open(os.path.join(namespaces.pins_dir(), b.id + ".json")) as f:
            rec = json.load(f)["egress"]
        assert rec["chain"] == "b_" + b.id and rec["level"] == len(b.cgroup.split("/")) - 1
        assert rec["source"] == "<library>" and rec["table"] == "inet cgnetns"
        first, second = rec["rules"]
        assert first["name"] == "localhost" and "127.0.0.1" in first["addresses"]
        assert first["ports"] == [3632, 3632] and second["addresses"] == ["127.0.0.2"]
    bad = egress.Policy.parse("tcp 127.0.0.1 1\ntcp cgnetns-no-such-host.invalid 3632\n")
    with pytest.raises(egress.PolicyError) as e:
        Build(name="egt-names", egress=bad).create()
    assert "line 2: cannot resolve cgnetns-no-such-host.invalid" in e.value.message
    assert "write its address" in e.value.hint
    assert leftovers() == {}


# -- the filter, on loopback ----------------------------------------------------------

def test_filter_keyed_to_the_build_and_below(servers, clean_host):
    """Listed passes; the unlisted port is reset at once, an unlisted datagram
    refused; the same from a cgroup below the build (Portage's
    emerge-<pid>/<cpv>); counted by the build's rule; a process outside the
    build reaches everything."""
    listed, other = servers
    pol = egress.Policy.parse("tcp 127.0.0.1 %d\nudp 127.0.0.1 %d\n"
                              % (listed.port, listed.udp_port))
    specs = ["tcp,127.0.0.1,%d" % listed.port, "tcp,127.0.0.1,%d" % other.port,
             "udp,127.0.0.1,%d" % listed.udp_port, "udp,127.0.0.1,%d" % other.udp_port]
    with Build(name="egt-filter", egress=pol) as b:
        assert our_chains() == [b.egress_plan.chain]
        got = probe(b, specs)
        assert_reached(got[specs[0]])
        assert_refused(got[specs[1]])                  # ECONNREFUSED: a TCP reset
        assert got[specs[2]][0] == "sent"
        assert_refused(got[specs[3]], 1)               # EPERM: the datagram was rejected
        assert passed(b, 1) == 1 and passed(b, 2) == 2  # a SYN; two datagrams
        assert rejected(b) == 2                         # the SYN and the first datagram
        # root, in a cgroup below the build (moving there takes root)
        sub = os.path.join(b.cgroup_path, "emerge-4242", "dev-util_x-1")
        os.makedirs(sub)
        got = probe(b, specs[:2], user=None, pre_exec=lambda: cgroups.attach(sub, 0))
        assert_reached(got[specs[0]])
        assert_refused(got[specs[1]])
        assert rejected(b) == 3
        outside = probe_outside(specs)
        assert_reached(outside[specs[0]])
        assert_reached(outside[specs[1]])
        assert outside[specs[3]][0] == "sent"
        assert rejected(b) == 3
    assert not our_chains()


def test_two_concurrent_builds_each_get_their_own(servers, clean_host):
    a_srv, b_srv = servers
    a_spec, b_spec = "tcp,127.0.0.1,%d" % a_srv.port, "tcp,127.0.0.1,%d" % b_srv.port
    with Build(name="egt-a", egress=egress.Policy.parse("tcp 127.0.0.1 %d" % a_srv.port)) as a, \
            Build(name="egt-b", egress=egress.Policy.parse("tcp 127.0.0.1 %d" % b_srv.port)) \
            as b:
        assert sorted(our_chains()) == sorted([a.egress_plan.chain, b.egress_plan.chain])
        ga, gb = probe(a, [a_spec, b_spec]), probe(b, [a_spec, b_spec])
        assert_reached(ga[a_spec])
        assert_refused(ga[b_spec])
        assert_refused(gb[a_spec])
        assert_reached(gb[b_spec])
        assert rejected(a) == 1 and rejected(b) == 1
        a.close()  # the other build keeps its filter
        assert our_chains() == [b.egress_plan.chain]
        assert_refused(probe(b, [a_spec])[a_spec])
    assert not our_chains()


def test_policy_in_another_namespace_through_the_pin(clean_host):
    """A build approving a namespace that is not its creator's: the filter is
    installed there (entered through the pin), not here."""
    name = "cgnetns-egt-" + secrets.token_hex(4)
    subprocess.run(["ip", "netns", "add", name], check=True)
    srv = None
    try:
        ns = "/run/netns/" + name
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        srv = subprocess.Popen(["nsenter", "--net=" + ns, USER_PY, "-c", SERVER, "127.0.0.1",
                                "5050"], stdout=subprocess.PIPE)
        assert srv.stdout.readline() == b"ready\n"
        srv2 = subprocess.Popen(["nsenter", "--net=" + ns, USER_PY, "-c", SERVER, "127.0.0.1",
                                 "5051"], stdout=subprocess.PIPE)
        try:
            assert srv2.stdout.readline() == b"ready\n"
            with Build(name="egt-ns", netns_source=ns,
                       egress=egress.Policy.parse("tcp 127.0.0.1 5050")) as b:
                assert our_chains() == []      # not in this namespace
                assert egress.chains(b.identity, b.pin_path) == [b.egress_plan.chain]
                got = probe(b, ["tcp,127.0.0.1,5050", "tcp,127.0.0.1,5051"], user=None,
                            pre_exec=_enter(ns))
                assert_reached(got["tcp,127.0.0.1,5050"])
                assert_refused(got["tcp,127.0.0.1,5051"])
                assert rejected(b) == 1
                pin, ident = b.pin_path, b.identity
            assert not os.path.exists(pin)
            with open(ns) as f:  # the namespace itself is still there: no table left
                assert egress.namespaces.identity_of_fd(f.fileno()).same(ident)
            out = subprocess.run(["nsenter", "--net=" + ns, "nft", "list", "tables"],
                                 capture_output=True, text=True, check=True).stdout
            assert "cgnetns" not in out
        finally:
            srv2.kill()
            srv2.wait()
    finally:
        if srv is not None:
            srv.kill()
            srv.wait()
        subprocess.run(["ip", "netns", "del", name], check=True)


def _enter(ns):
    from cgnetns import _sys

    def enter():
        fd = os.open(ns, os.O_RDONLY)
        _sys.setns(fd, _sys.CLONE_NEWNET)
        os.close(fd)
    return enter


def test_no_policy_changes_nothing(servers, tdir, monkeypatch, clean_host):
    listed, other = servers
    monkeypatch.setattr(paths, "EGRESS_PATH", os.path.join(tdir, "egress"))  # no such file
    spec = "tcp,127.0.0.1,%d" % other.port
    had = egress.table_exists()
    with Build(name="egt-none") as b:
        assert b.egress_plan is None
        with open(os.path.join(namespaces.pins_dir(), b.id + ".json")) as f:
            assert json.load(f)["egress"] is None
        assert_reached(probe(b, [spec])[spec])
        assert egress.table_exists() == had
    # cgnetns-run with no policy file: the same
    r = subprocess.run([PY, "-c", RUN_WITH_POLICY, os.path.join(tdir, "egress"), "lib",
                        "--user", "nobody", "--name", "egt-none", "--", USER_PY, "-c", PROBE,
                        spec], capture_output=True, env=repo_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    assert_reached(tuple(json.loads(r.stdout)[spec]))


# -- cgnetns-run and cgnetns-gc ---------------------------------------------------

def run_with_policy(policy, *argv, lib="lib", **kw):
    return subprocess.Popen([PY, "-c", RUN_WITH_POLICY, policy, lib] + list(argv),
                            env=repo_env(), **kw)


def test_cgnetns_run_refuses_a_bad_policy_with_one_line(tdir, clean_host):
    path = write_policy(tdir, "tcp 127.0.0.1 3632\ntcp 127.0.0.1 99999\n")
    p = run_with_policy(path, "--name", "egt-bad", "--", "true", stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=60)
    lines = err.decode().splitlines()
    assert p.returncode == 125 and len(lines) == 1, err
    assert lines[0].startswith("cgnetns-run: %s line 2: " % path), lines
    assert "not in 1-65535" in lines[0] and "a port (1-65535)" in lines[0]
    os.chmod(path, 0o666)  # unsafe file: also one line
    p = run_with_policy(path, "--", "true", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = p.communicate(timeout=60)[1].decode().splitlines()
    assert p.returncode == 125 and len(err) == 1 and "unsafe" in err[0] and "chmod" in err[0]
    assert leftovers() == {}


def test_cgnetns_run_refuses_when_the_filter_cannot_be_installed(tdir, clean_host):
    path = write_policy(tdir, "tcp 127.0.0.1 3632\n")
    p = run_with_policy(path, "--name", "egt-nolib", "--", "true", lib="nolib",
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=60)
    lines = err.decode().splitlines()
    assert p.returncode == 125 and len(lines) == 1, err
    assert "cannot install the egress filter of %s" % path in lines[0], lines
    assert "install nftables" in lines[0]
    assert leftovers() == {}  # nothing made: no cgroup, pin or record


def test_sigkill_of_cgnetns_run_then_gc_leaves_no_filter(servers, tdir, clean_host):
    listed, other = servers
    path = write_policy(tdir, "tcp 127.0.0.1 %d\n" % listed.port)
    out = os.path.join(tdir, "probe.json")
    script = "%s -c %s %s > %s; exec sleep 60" % (
        USER_PY, shlex.quote(PROBE), "tcp,127.0.0.1,%d" % other.port, out)
    p = run_with_policy(path, "--name", "egt-kill", "--", "/bin/sh", "-c", script)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(out) or not os.path.getsize(out):
            assert p.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert len(our_chains()) == 1
        with open(out) as f:
            assert_refused(tuple(json.load(f).values())[0])
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert len(our_chains()) == 1  # the run is dead; its build (and filter) are left
    g = subprocess.run([PY, "-m", "cgnetns.cli.gc"], capture_output=True, text=True,
                       env=repo_env(), timeout=60)
    assert g.returncode == 0, g.stdout + g.stderr
    assert "removed egress filter inet cgnetns b_egt-kill-" in g.stdout, g.stdout
    lines = g.stdout.splitlines()
    kill = next(i for i, l in enumerate(lines) if l.startswith("killed") and "egt-kill" in l)
    filt = next(i for i, l in enumerate(lines) if "egress filter" in l)
    cg = next(i for i, l in enumerate(lines) if l.startswith("removed cgroup") and "egt-kill" in l)
    assert kill < filt < cg, lines  # its processes die before the filter goes
    assert our_chains() == []


# -- distcc against the remote host -------------------------------------------------

@pytest.fixture(scope="module")
def front():
    path = shutil.which("cgnetns-exec", path=BUILD_PATH)
    if not path or not os.stat(paths.HELPER).st_mode & 0o4000:
        pytest.fail("cgnetns-exec and its set-user-ID helper are not installed: make install")
    return path


@pytest.fixture(scope="module")
def mdir():
    """A root-owned directory for this module's probe (allow-listed)."""
    d = os.path.join("/run", "cgnetns-egress-mod-" + secrets.token_hex(5))
    os.mkdir(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def netprobe(mdir):
    path = os.path.join(mdir, "netprobe")
    subprocess.run(["gcc", "-O1", "-Wall", "-o", path, NETPROBE_SRC], check=True)
    os.chmod(path, 0o755)
    return path


@pytest.fixture(scope="module")
def allowed(netprobe):
    """distcc, ssh (distcc's ssh mode on the broker path) and the probe in the
    allow list; only the lines added here go again."""
    wanted = [os.path.realpath(shutil.which(p, path=SYSTEM_PATH) or "/usr/bin/" + p)
              for p in ("distcc", "ssh")] + [netprobe]
    with open(ALLOW) as f:
        present = {line.split("#", 1)[0].strip() for line in f}
    added = [w for w in wanted if w not in present]
    with open(ALLOW, "a") as f:
        f.write("".join(a + "\n" for a in added))
    try:
        yield wanted
    finally:
        with open(ALLOW) as f:
            lines = f.readlines()
        for a in added:
            if a + "\n" in lines:
                lines.remove(a + "\n")
        tmp = ALLOW + ".egress-test"
        with open(tmp, "w") as f:
            f.writelines(lines)
        os.chmod(tmp, 0o644)
        os.replace(tmp, ALLOW)


class Broker:
    """A cgnetnsd on the system socket when none answers there, ended by its
    PID.  Another suite's broker may answer instead, and may go away (idle
    exit) while a test runs: ensure() starts ours again."""

    def __init__(self, logdir):
        self.logdir = logdir
        self.procs = []

    def ensure(self):
        from cgnetns.broker import SOCKET_PATH
        from cgnetns.cli.run import broker_answers
        if broker_answers(SOCKET_PATH):
            return
        log = open(os.path.join(self.logdir, "cgnetnsd-%d.log" % len(self.procs)), "wb")
        proc = subprocess.Popen([PY, "-m", "cgnetns.cli.broker", "--socket", SOCKET_PATH],
                                env=repo_env(), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs.append(proc)
        deadline = time.monotonic() + 10
        while not broker_answers(SOCKET_PATH):
            assert time.monotonic() < deadline, "cgnetnsd did not start"
            time.sleep(0.02)

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
def broker(tmp_path):
    b = Broker(str(tmp_path))
    try:
        b.ensure()
        yield b
    finally:
        b.close()


@pytest.fixture
def work():
    top = os.path.join("/tmp", "cgnetns-egress-" + secrets.token_hex(5))
    os.mkdir(top, 0o755)
    nobody = pwd.getpwnam("nobody")
    dirs = {"top": top}
    for d in ("src", "distcc"):
        dirs[d] = os.path.join(top, d)
        os.mkdir(dirs[d], 0o755)
        os.chown(dirs[d], nobody.pw_uid, nobody.pw_gid)
    try:
        yield dirs
    finally:
        shutil.rmtree(top, ignore_errors=True)


@contextlib.contextmanager
def remote_server(topo, port=OTHER_PORT):
    """A second TCP server on the remote host (its own namespace), by PID."""
    p = subprocess.Popen(["nsenter", "--net=" + topo.netns_path, USER_PY, "-c", SERVER,
                          topo.remote_addr, str(port)], stdout=subprocess.PIPE,
                         start_new_session=True)
    try:
        assert p.stdout.readline() == b"ready\n"
        yield port
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


def build_env(topo, work, mode="tcp"):
    env = repo_env()
    env.update(PATH=BUILD_PATH, HOME=work["src"], LANG="C", TMPDIR="/tmp")
    env.update(topo.distcc_env(work["distcc"], mode))
    return env


def in_build(b, script, work, env, nnp=False, broker=None):
    """SCRIPT as nobody in B with a network namespace of its own; under
    no_new_privs (NNP), through BROKER, again if the broker went away."""
    argv = ["/bin/sh", "-c", script]
    if nnp:
        argv = ["setpriv", "--no-new-privs"] + argv
    for attempt in range(3):
        if broker is not None:
            broker.ensure()
        p = b.spawn(argv, user="nobody", unshare_net=True, cwd=work["src"], env=env,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out = p.communicate(timeout=240)[0]
        if not (nnp and "no broker at" in out):
            break
    return p.returncode, out


def read(work, name):
    with open(os.path.join(work["src"], name)) as f:
        return f.read()


def test_distcc_set_user_id_path_reaches_only_the_listed_port(front, allowed, work, clean_host):
    """Every object is compiled on the remote host; `cgnetns-exec distcc
    python3 -c` runs in the approved namespace (set-user-ID path) and is
    refused at once on the remote's other port, counted by the build's
    rule, though it reaches the listed one; this process reaches both."""
    objs = write_project(work["src"], NFILES, owner="nobody")
    with Topology() as topo, remote_server(topo) as other:
        pol = egress.Policy.parse("tcp %s %d\n" % (topo.remote_addr, DISTCC_PORT))
        specs = ["tcp,%s,%d" % (topo.remote_addr, other),
                 "syn,%s,%d" % (topo.remote_addr, DISTCC_PORT)]
        with Build(name="egt-distcc", egress=pol) as b:
            rc, out = in_build(b, "make -j4 CC='%s distcc gcc' && %s distcc %s -c %s %s > py.json"
                               % (front, front, USER_PY, shlex.quote(PROBE), " ".join(specs)),
                               work, build_env(topo, work))
            assert rc == 0, out
            assert topo.count_compile_ok() == len(objs), out + topo.log_text()[-2000:]
            got = json.loads(read(work, "py.json"))
            assert_refused(got[specs[0]])
            assert got[specs[1]][0] == "ok", got
            assert rejected(b) == 1
            assert passed(b, 1) >= len(objs) + 1
        assert_reached(probe_outside(specs[:1])[specs[0]])  # outside the build: reached


def test_broker_path_listed_port_only(front, allowed, netprobe, broker, servers, work,
                                      clean_host):
    """Under no_new_privs the allow-listed probe's sockets are made by the
    supervisor, in the build's cgroup: the listed port answers, the other is
    reset; this process, outside the build, reaches the other port."""
    listed, other = servers
    pol = egress.Policy.parse("tcp 127.0.0.1 %d\n" % listed.port)
    with Build(name="egt-broker", egress=pol) as b:
        rc, out = in_build(b, "%s %s report ok.json --connect=%d && %s %s report no.json "
                           "--connect=%d" % (front, netprobe, listed.port, front, netprobe,
                                             other.port), work, repo_env(), nnp=True,
                           broker=broker)
        assert rc == 0, out
        ok, no = (json.loads(read(work, n)) for n in ("ok.json", "no.json"))
        assert ok["connect"] == "token:" + TOKEN.decode(), ok
        assert no["connect"] == "connect:111", no     # ECONNREFUSED
        assert ok["status"].count("NoNewPrivs:\t1") == 1
        assert rejected(b) == 1 and passed(b, 1) == 1
    got = probe_outside(["tcp,127.0.0.1,%d" % other.port])
    assert_reached(got["tcp,127.0.0.1,%d" % other.port])


@pytest.mark.parametrize("nnp", [False, True], ids=["setuid", "broker"])
def test_distcc_ssh_mode_with_only_the_ssh_port(front, allowed, broker, work, nnp, clean_host):
    objs = write_project(work["src"], NFILES, owner="nobody")
    with Topology(ssh=True) as topo:
        pol = egress.Policy.parse("tcp %s %d\n" % (topo.remote_addr, SSH_PORT))
        spec = "tcp,%s,%d" % (topo.remote_addr, DISTCC_PORT)
        with Build(name="egt-ssh", egress=pol) as b:
            rc, out = in_build(b, "make -j4 CC='%s distcc gcc'" % front, work,
                               build_env(topo, work, "ssh"), nnp=nnp, broker=broker)
            assert rc == 0, out
            assert topo.log_text("ssh-distccd").count("COMPILE_OK") == len(objs), out
            assert passed(b, 1) >= 1
            if not nnp:  # distccd's own TCP port is not listed
                rc, out = in_build(b, "%s distcc %s -c %s %s > py.json"
                                   % (front, USER_PY, shlex.quote(PROBE), spec), work,
                                   build_env(topo, work, "ssh"))
                assert rc == 0, out
                assert_refused(json.loads(read(work, "py.json"))[spec])
                assert rejected(b) == 1


# -- cgnetns-show ----------------------------------------------------------------------

def test_show_prints_the_policy_of_a_process(servers, clean_host):
    listed, other = servers
    pol = egress.Policy.parse("# x\ntcp localhost %d\n" % listed.port)
    with Build(name="egt-show", egress=pol) as b:
        probe(b, ["tcp,127.0.0.1,%d" % other.port])
        p = b.spawn(["sleep", "60"], user="nobody", unshare_net=True)
        try:
            r = subprocess.run([PY, "-m", "cgnetns.cli.show", str(p.pid)], capture_output=True,
                               text=True, env=repo_env(), timeout=60)
            j = subprocess.run([PY, "-m", "cgnetns.cli.show", "--json", str(p.pid)],
                               capture_output=True, text=True, env=repo_env(), timeout=60)
        finally:
            p.kill()
            p.wait()
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert all(len(line) <= 100 for line in text.splitlines())
    assert "\negress " in text, text
    flat = " ".join(text.split())
    assert "egress <library>, installed as inet cgnetns b_%s" % b.id in flat, text
    assert "line 2: tcp localhost %d -> 127.0.0.1" % listed.port in flat, text
    assert "rejected (1 packet so far)" in flat, text
    e = json.loads(j.stdout)["egress"]
    assert e["installed"] is True and e["policy"]["chain"] == "b_" + b.id
    assert [r["packets"] for r in e["rules"] if r["verdict"] == "reject"] == [1, 0]


def test_show_check_tries_nftables():
    r = subprocess.run([PY, "-m", "cgnetns.cli.show", "--check", "--json"],
                       capture_output=True, text=True, env=repo_env(), timeout=60)
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["egress-nftables"]["status"] == "ok", checks["egress-nftables"]
    assert checks["egress-policy"]["status"] in ("ok", "fail")
    assert not egress.table_exists() or egress.chains()  # the check commits nothing
    # and the check itself, in-process: the dry run left no table behind
    had = egress.table_exists()
    assert [c[1] for c in egress.check() if c[0] == "egress-nftables"] == ["ok"]
    assert egress.table_exists() == had
    with pytest.raises(CgnetnsError):
        egress.load("/nonexistent/egress", missing_ok=False)
