"""cgnetns-show on the real kernel: the verdict it explains is the one
cgnetns-exec acts on, on both paths; --all lists concurrent builds; --check
checks the helper, the front and the broker; bad input.

The comparison tests need the installed front and helper (``make install``:
cgnetns.paths.FRONT, dynamic and not set-user-ID, and cgnetns.paths.HELPER,
set-user-ID root); they fail, not skip, when either is missing.  Each probe
runs in a private mount namespace with its own allow list (a tmpfs on
/etc/cgnetns), and cgnetns-show is run inside that same mount namespace
(nsenter -m), so both read the same policy; nothing on the host changes.

The broker-path comparisons need cgnetnsd on the socket the installed front
has compiled in (cgnetns.paths.BROKER_SOCKET).  They start one in a private
mount namespace of its own (:func:`system_broker`): a tmpfs on the run
directory (the host's pins directory bound into it) and one on /etc/cgnetns
with the private allow list.  Its socket is on that tmpfs, so a cgnetnsd that
other tests (or the host) run on the real socket is neither seen nor
disturbed.  Probes on that path enter the broker's mount namespace first
(``Probe(mount_ns=broker)``) and cgnetns-show runs there (the broker's helper
reads the allow list, the pins and cgroup2 in that view).
tests/test_reason_codes.py uses the same pieces for every reason code.
"""

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from cgnetns import namespaces, paths, resolve, tags
from cgnetns.build import Build
from cgnetns.cli import show

from conftest import CGNETNS_RUN, PY, repo_env, run


MINE = ("show-", "all", "a-rather-long")
LEAK_PREFIX = MINE  # conftest.clean_host checks only these



SHOW = [PY, "-m", "cgnetns.cli.show"]
FRONT = paths.FRONT      # what builds call: dynamic, not set-user-ID (helper/front.c)
HELPER = paths.HELPER    # the set-user-ID root helper the front executes
# The program every probe runs through cgnetns-exec: Debian's python3 (root's
# interpreter lives under /root, 0700), with the standard library only.
PROBE_PROGRAM = os.path.realpath("/usr/bin/python3")
# It prints the identity of the network namespace it runs in, and what a TCP
# connection to 127.0.0.1:PORT brought: the token of the test's server when
# the connection reached the test's own (the approved) namespace, "none" when
# it did not.  On the broker path the program stays in its own namespace and
# only its AF_INET socket is made in the approved one.
NETPROBE = (
    "import os, socket, sys\n"
    "st = os.stat('/proc/self/ns/net')\n"
    "try:\n"
    "    s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=10)\n"
    "    got = s.recv(64).decode() or 'empty'\n"
    "except OSError:\n"
    "    got = 'none'\n"
    "print(st.st_dev, st.st_ino, got)\n")

# Inside a private mount namespace: a set-up step ($2), our own allow list
# (mode $1), then become nobody (with setpriv's further options or a command
# in front, $3; a command in front of setpriv itself, run as root, $4), say
# "ready", wait, and exec the front on the probe program (the rest of the
# arguments).
PROBE = (
    "eval \"$2\" && mount -t tmpfs -o mode=755,size=64k cgnetns-test %s && "
    "printf '%%s\\n' %s > %s && chmod \"$1\" %s && wrap=$3 && pre=$4 && shift 4 && "
    "exec $pre setpriv --reuid=nobody --regid=nogroup --clear-groups $wrap "
    "sh -c 'echo ready; read go; exec \"$@\"' probe \"$@\""
    % (os.path.dirname(paths.ALLOW_PATH), PROBE_PROGRAM, paths.ALLOW_PATH, paths.ALLOW_PATH))

# What cgnetns-exec says (helper/*.c) for each refusal cgnetns-show names.
HELPER_SAYS = {
    "pin-missing": r"pin \S+ is gone|cannot open the pins directory",
    "pin-not-nsfs": r"pin \S+ is not a namespace file",
    "pin-mismatch": r"pin [^ :]+:? (holds another namespace than its tag names|namespace id differs)",
    "tag-version": r"tag of cgroup \S+ has an unsupported format version",
    "tag-format": r"malformed tag on cgroup \S+|tag of cgroup \S+ is longer",
    "tag-owner": r"tagged cgroup \S+ is not owned by root",
    "allow-list-unsafe": r"unsafe allow list|allow list \S+, line \d+|larger than",
    "allow-list-missing": r"allow list \S+: cannot open",
    "no-cgroup2": r"cgroup2 is mounted neither at",
    "cgroupns": r"process (\d+) is in a cgroup namespace of its own",
    "no-cgroup2-membership": r"no cgroup2 \(0::\) line in /proc/\d+/cgroup",
    "cgroup-unreachable": r"cannot open cgroup /\S* beneath the cgroup2 root|unusable cgroup2 "
                          r"path in /proc/\d+/cgroup|cgroup /\S* is not on the cgroup2 mount|"
                          r"/proc/\d+/cgroup is not on procfs",
    "not-in-cgroup": r"process \d+ is not in cgroup /\S* of the cgroup2 mount",
    "pins-dir-unsafe": r"unsafe pins directory: ",
    "pin-not-net": r"pin \S+ is not a network namespace",
}


def require_helper():
    """The installed front and helper, as make install leaves them."""
    for path in (FRONT, HELPER):
        if not os.path.exists(path):
            pytest.fail("%s is not installed: run `make install` first" % path)
    st = os.stat(HELPER)
    assert st.st_uid == 0 and st.st_mode & stat.S_ISUID, "%s is not setuid root" % HELPER
    st = os.stat(FRONT)
    assert not st.st_mode & stat.S_ISUID, "%s is set-user-ID (only the helper is)" % FRONT
    assert os.path.isdir(os.path.dirname(paths.ALLOW_PATH)), "make install creates it"


@pytest.fixture
def server():
    """A TCP server on 127.0.0.1 in the test's (the approved) network
    namespace that sends a token to whoever connects: (port, token)."""
    token = secrets.token_hex(8)
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    ls.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                c, _ = ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with c:
                c.sendall(token.encode())
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield ls.getsockname()[1], token
    finally:
        stop.set()
        t.join(5)
        ls.close()


@contextlib.contextmanager
def system_broker(tmp_path):
    """cgnetnsd on the socket the installed front asks, in a private mount
    namespace of its own; yields its PID (which names that mount namespace),
    and stops it by that PID.  Its log is in tmp_path.

    Private: a tmpfs on the run directory, with the host's pins directory
    bound into it (root's alone, 0700, as on the host), so the broker's socket
    and lock are on that tmpfs and no other cgnetnsd (another test's, the
    host's) is seen or disturbed; and a tmpfs on /etc/cgnetns with the
    probes' allow list.  Probes reach it by entering that mount namespace
    (``Probe(mount_ns=PID)``).

    The pins it sees are those that exist when it starts (the host's mounts
    do not propagate into it): start it inside the build (``with Build(...)
    as b, system_broker(...)``); it is stopped before the build ends."""
    require_helper()
    namespaces.ensure_run_dirs()
    hold = tmp_path / "pins-hold"
    hold.mkdir()
    logpath = tmp_path / "cgnetnsd.log"
    run_dir = os.path.dirname(paths.BROKER_SOCKET)
    pins = namespaces.pins_dir()
    assert os.path.dirname(pins) == run_dir, (pins, run_dir)
    script = ("set -e; mount --rbind {pins} {hold}; "
              "mount -t tmpfs -o mode=755,size=64k cgnetns-test-run {run}; "
              "mkdir -m 700 {pins}; mount --move {hold} {pins}; "
              "mount -t tmpfs -o mode=755,size=64k cgnetns-test {etc}; "
              "printf '%s\\n' {prog} > {allow}; chmod 644 {allow}; "
              "exec {py} -m cgnetns.cli.broker"
              .format(pins=pins, hold=hold, run=run_dir, etc=os.path.dirname(paths.ALLOW_PATH),
                      prog=PROBE_PROGRAM, allow=paths.ALLOW_PATH, py=PY))
    with open(logpath, "wb") as log:
        p = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                             env=repo_env(), stdout=log, stderr=log)
    try:
        # Ours once it says it serves (it takes the socket's lock first).
        deadline = time.monotonic() + 20
        while "serving " not in logpath.read_text():
            if p.poll() is not None or time.monotonic() > deadline:
                pytest.fail("cgnetnsd did not start: %s" % logpath.read_text())
            time.sleep(0.05)
        yield p.pid
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        sys.stderr.write("cgnetnsd's log:\n%s" % logpath.read_text())


class Probe:
    """A process that shows itself to cgnetns-show, then execs cgnetns-exec.

    In BUILD (spawned into its cgroup, in a network namespace of its own
    with UNSHARE_NET) or in none (a network namespace of its own).  As root
    it enters the mount namespace of process MOUNT_NS first when given (a
    private broker's: :func:`system_broker`), then makes a private one: runs
    SETUP (shell) there, mounts its own allow list (mode ALLOW_MODE), and
    execs ``PRE setpriv --reuid=nobody ... WRAP sh``: PRE runs as root (e.g.
    ``unshare -C``), WRAP as nobody (setpriv options, or a command).  The
    program is PROBE_PROGRAM running NETPROBE against 127.0.0.1:PORT."""

    def __init__(self, build=None, unshare_net=True, allow_mode="644", setup=":", wrap="",
                 port=1, pre="", mount_ns=None):
        argv = ["unshare", "-m", "sh", "-c", PROBE, "probe", allow_mode, setup, wrap, pre,
                FRONT, PROBE_PROGRAM, "-I", "-S", "-c", NETPROBE, str(port)]
        if mount_ns is not None:
            argv = ["nsenter", "-t", str(mount_ns), "-m", "--"] + argv
        kw = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if build is not None:
            self.proc = build.spawn(argv, unshare_net=unshare_net, **kw)
        else:
            self.proc = subprocess.Popen(["unshare", "-n"] + argv, **kw)
        line = self.proc.stdout.readline()
        if line != b"ready\n":
            self.proc.kill()
            out, err = self.proc.communicate(timeout=10)
            pytest.fail("probe did not start: %r %r" % (line + out, err))
        self.pid = self.proc.pid

    def show(self, *extra, mount_ns_of=None, cgroupns=False, command=None):
        """cgnetns-show --json PID, run in the probe's mount namespace (or in
        that of process MOUNT_NS_OF: the broker's, whose view its helper
        reads); with CGROUPNS in the probe's cgroup namespace too (the view
        the set-user-ID helper judges by).  COMMAND replaces the
        ``python -m cgnetns.cli.show`` (e.g. one that drops privilege)."""
        cmd = ["nsenter", "-t", str(mount_ns_of or self.pid), "-m"]
        if cgroupns:
            cmd.append("--cgroup=/proc/%d/ns/cgroup" % self.pid)
        cmd += ["--"] + list(command or SHOW) + ["--json"] + list(extra) + [str(self.pid)]
        r = run(cmd, env=repo_env())
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def exec_helper(self):
        out, err = self.proc.communicate(b"go\n", timeout=30)
        return self.proc.returncode, out.decode(), err.decode()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)


def check_outcome(d, rc, out, err, token=None, says=None):
    """The helper's outcome (status RC, OUT, ERR of the probe) is the one
    cgnetns-show's document D announces: a join ran the program in the
    approved namespace (set-user-ID path) or in its own with its socket
    minted there (broker path); a pass-through ran it unchanged; a refusal
    ran nothing, exited 125 and said, in one line, what HELPER_SAYS has for
    the reason code (or SAYS, a pattern, where the helper names it
    otherwise)."""
    verdict = d["verdict"]
    assert d["exec_path"] in resolve.EXEC_PATHS, d["exec_path"]
    assert (d["on_join"] is not None) == (verdict == "join")
    if verdict in ("join", "pass-through"):
        assert rc == 0 and err == "", (d["reason"], rc, err)
        dev, ino, got = out.split()
        ran_in = (int(dev), int(ino))
        own = (d["netns"]["dev"], d["netns"]["ino"])
    if verdict == "join":
        approved = (d["approved_netns"]["dev"], d["approved_netns"]["ino"])
        assert approved != own
        if d["exec_path"] == "set-user-id":
            assert ran_in == approved  # the program runs in the approved namespace
        else:
            assert ran_in == own       # it stays in its own; its socket was made there
        assert got == token, (d["exec_path"], got)
    elif verdict == "pass-through":
        assert ran_in == own
        assert (got == token) == bool(d["in_approved_netns"]), got
    elif verdict == "refuse":
        assert rc == 125, (d["reason"], rc, out, err)
        assert out == "", out  # nothing was run
        assert err.count("\n") == 1 and err.startswith("cgnetns-exec: "), err
        pattern = says or HELPER_SAYS[d["reason_code"]]
        assert re.search(pattern, err), (d["reason_code"], err)
        if d["tagged_cgroup"] and d["category"] == "tag":
            assert d["tagged_cgroup"] in err, (d["tagged_cgroup"], err)
    else:
        pytest.fail("unexpected verdict %r" % verdict)


def compare(probe, token=None, mount_ns_of=None, says=None, **show_kw):
    """Show the probe, let it exec the front, and check that both agree."""
    d = probe.show(mount_ns_of=mount_ns_of, **show_kw)
    rc, out, err = probe.exec_helper()
    check_outcome(d, rc, out, err, token, says)
    return d, rc, out, err


def _set_tag(path, value):
    subprocess.run(["setfattr", "-n", tags.TAG_XATTR, "-v", value, path], check=True)


# -- the same verdict as cgnetns-exec ----------------------------------------

def test_probe_inside_a_build_joins(clean_host, server):
    require_helper()
    port, token = server
    with Build(name="show-join") as b:
        p = Probe(b, unshare_net=True, port=port)
        try:
            d, rc, out, err = compare(p, token)
        finally:
            p.close()
    assert d["verdict"] == "join" and d["reason_code"] == "approved-netns-differs"
    assert d["cgroup"] == b.cgroup and d["tagged_cgroup"] == b.cgroup
    assert d["in_cgroup_procs"] is True
    assert d["tag"]["pin"] == b.id and d["pin"]["state"] == "ok" and d["pin"]["matches"]
    me = namespaces.current_identity()
    assert d["approved_netns"] == {"name": "net:[%d]" % me.ino, "dev": me.dev, "ino": me.ino,
                                   "nsid": me.nsid}
    assert d["build"]["live"] is True and d["build"]["owner_pid"] == os.getpid()
    assert d["user"] == "nobody" and d["uid"] == 65534
    assert d["allow_list"]["state"] == "ok" and d["allow_list"]["programs"] == [PROBE_PROGRAM]
    assert isinstance(d["pid"], int) and isinstance(d["build"]["age"], float)
    assert d["in_approved_netns"] is False
    assert d["same_cgroupns"] is True
    assert d["exec_path"] == "set-user-id" and "set-user-ID helper" in d["exec_path_reason"]
    assert "run in the approved namespace" in d["on_join"]["set_user_id"]
    assert "AF_INET and AF_INET6 sockets" in d["on_join"]["broker"]


def test_probe_in_the_approved_netns_passes_through(clean_host, server):
    require_helper()
    port, token = server
    with Build(name="show-already") as b:
        p = Probe(b, unshare_net=False, port=port)
        try:
            d, rc, out, err = compare(p, token)
        finally:
            p.close()
    assert d["verdict"] == "pass-through" and d["reason_code"] == "already-in-approved-netns"
    assert d["in_approved_netns"] is True and d["on_join"] is None


def test_probe_outside_any_build_passes_through(clean_host, server):
    require_helper()
    port, token = server
    p = Probe(None, port=port)
    try:
        d, rc, out, err = compare(p, token)
    finally:
        p.close()
    assert d["verdict"] == "pass-through" and d["reason_code"] == "no-build"
    assert d["tagged_cgroup"] is None and d["tag"] is None and d["approved_netns"] is None
    assert d["ancestors"][-1]["cgroup"] == "/" and all(a["tag"] is None for a in d["ancestors"])


# -- the broker path: the same verdicts, another outcome for a join -----------

def test_broker_path_join_mints_the_programs_socket(clean_host, server, tmp_path):
    """Under no_new_privs: cgnetns-show says join, on the broker path; the
    program stays in its own namespace and its AF_INET socket reaches the
    approved one."""
    port, token = server
    with Build(name="show-broker-join") as b, system_broker(tmp_path) as broker:
        p = Probe(b, unshare_net=True, wrap="--no-new-privs", port=port,
                  mount_ns=broker)
        try:
            d, rc, out, err = compare(p, token, mount_ns_of=broker)
        finally:
            p.close()
    assert d["verdict"] == "join" and d["exec_path"] == "broker"
    assert "no_new_privs" in d["exec_path_reason"]
    assert d["allow_list"]["programs"] == [PROBE_PROGRAM]


def test_broker_path_outside_any_build_passes_through(clean_host, server, tmp_path):
    port, token = server
    with system_broker(tmp_path) as broker:
        p = Probe(None, wrap="--no-new-privs", port=port, mount_ns=broker)
        try:
            d, rc, out, err = compare(p, token, mount_ns_of=broker)
        finally:
            p.close()
    assert d["verdict"] == "pass-through" and d["reason_code"] == "no-build"
    assert d["exec_path"] == "broker"


def test_own_cgroup_namespace_is_refused_by_both(clean_host, server, tmp_path):
    """A build process in a cgroup namespace of its own (unshare -C, which an
    unprivileged process can only do in a user namespace, where the helper
    has no privilege and asks the broker): cgnetns-show says refuse
    (cgroupns), and the broker refuses it at once (125, helper/resolve.c
    step 0), although the build itself is intact."""
    port, token = server
    with Build(name="show-cgroupns") as b, system_broker(tmp_path) as broker:
        p = Probe(b, unshare_net=True, wrap="unshare -U -C --map-root-user", port=port,
                  mount_ns=broker)
        try:
            d, rc, out, err = compare(p, token, mount_ns_of=broker)
        finally:
            p.close()
    assert d["verdict"] == "refuse" and d["reason_code"] == "cgroupns", d["reason"]
    assert d["category"] == "cgroup" and d["fix"]
    assert d["same_cgroupns"] is False and d["exec_path"] == "broker"
    assert "user namespace" in d["exec_path_reason"]
    # the pid the broker names is the one cgnetns-show explained
    assert int(re.search(HELPER_SAYS["cgroupns"], err).group(1)) == d["tgid"] == p.pid
    # and from this cgroup namespace the build would have joined
    assert d["tagged_cgroup"] == b.cgroup and d["pin"]["matches"]
    assert any("would be join" in n for n in d["notes"]), d["notes"]


def _remove_pin_by_hand(b):
    subprocess.run(["umount", b.pin_path], check=True)
    subprocess.run(["rm", b.pin_path], check=True)


def _unmount_pin_by_hand(b):
    subprocess.run(["umount", b.pin_path], check=True)


def _other_inode(b):
    i = b.identity
    _set_tag(b.cgroup_path, "v1 pin=%s dev=%d ino=%d nsid=%d" % (b.id, i.dev, i.ino + 1, i.nsid))


def _other_nsid(b):
    i = b.identity
    _set_tag(b.cgroup_path, "v1 pin=%s dev=%d ino=%d nsid=%d" % (b.id, i.dev, i.ino, i.nsid + 1))


def _version_2(b):
    i = b.identity
    _set_tag(b.cgroup_path, "v2 pin=%s dev=%d ino=%d nsid=%d" % (b.id, i.dev, i.ino, i.nsid))


def _garbage(b):
    _set_tag(b.cgroup_path, "v1 pin=%s dev=x" % b.id)


def _chown_cgroup(b):
    subprocess.run(["chown", "nobody", b.cgroup_path], check=True)


@pytest.mark.parametrize("change,code", [
    (_remove_pin_by_hand, "pin-missing"),
    (_unmount_pin_by_hand, "pin-not-nsfs"),
    (_other_inode, "pin-mismatch"),
    (_other_nsid, "pin-mismatch"),
    (_version_2, "tag-version"),
    (_garbage, "tag-format"),
    (_chown_cgroup, "tag-owner"),
], ids=["pin-removed", "pin-unmounted", "tag-other-inode", "tag-other-nsid", "tag-v2",
        "tag-garbage", "cgroup-not-root"])
def test_build_changed_by_hand_is_refused_by_both(clean_host, change, code):
    require_helper()
    with Build(name="show-" + code) as b:
        change(b)
        p = Probe(b, unshare_net=True)
        try:
            d, rc, out, err = compare(p)
        finally:
            p.close()
        if change is _chown_cgroup:
            os.chown(b.cgroup_path, 0, 0)
    assert d["verdict"] == "refuse" and d["reason_code"] == code, d["reason"]
    assert d["fix"]


def test_unsafe_allow_list_is_refused_by_both(clean_host):
    require_helper()
    with Build(name="show-allow") as b:
        p = Probe(b, unshare_net=True, allow_mode="664")
        try:
            d, rc, out, err = compare(p)
        finally:
            p.close()
    assert d["reason_code"] == "allow-list-unsafe" and d["allow_list"]["state"] == "unsafe"
    assert "would be join" in " ".join(d["notes"])


def test_no_cgroup2_is_refused_by_both(clean_host, cg2root):
    require_helper()
    with Build(name="show-nocg2") as b:
        p = Probe(b, unshare_net=True, setup="umount -l %s" % cg2root)
        try:
            d, rc, out, err = compare(p)
        finally:
            p.close()
    assert d["reason_code"] == "no-cgroup2" and d["cgroup_root"] is None


def test_missing_allow_list_is_refused_by_both(clean_host):
    require_helper()
    with Build(name="show-noallow") as b:
        p = Probe(b, unshare_net=True)
        try:
            subprocess.run(["nsenter", "-t", str(p.pid), "-m", "rm", paths.ALLOW_PATH],
                           check=True)
            d, rc, out, err = compare(p)
        finally:
            p.close()
    assert d["reason_code"] == "allow-list-missing" and d["allow_list"]["state"] == "missing"


# -- human output ---------------------------------------------------------

def test_human_output_explains_each_step(clean_host):
    with Build(name="show-human") as b:
        p = b.spawn(["sleep", "60"], user="nobody", unshare_net=True)
        try:
            r = run(SHOW + [str(p.pid)], env=repo_env())
        finally:
            p.kill()
            p.wait()
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode()
    labels = [line.split()[0] for line in text.splitlines() if line[:1] != " "]
    for label in ("process", "command", "netns", "cgroup", "walk", "tag", "pin", "build",
                  "allow", "verdict"):
        assert label in labels, text
    assert "JOIN" in text and b.id in text and "sleep 60" in text
    assert all(len(line) <= 100 for line in text.splitlines()), text


def test_default_is_itself():
    r = run(SHOW + ["--json"], env=repo_env())
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert "cgnetns.cli.show" in d["command"]
    for key in ("pid", "cgroup", "tagged_cgroup", "approved_netns", "netns", "verdict", "reason"):
        assert key in d


# -- unprivileged ---------------------------------------------------------

def _as_nobody(args):
    # Import first, then drop: the interpreter lives under /root (0700).
    code = ("import os, sys; from cgnetns.cli import show; import cgnetns.gc, cgnetns.records;"
            "os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534);"
            "sys.exit(show.main(%r))" % (args,))
    return run([PY, "-c", code], env=repo_env())


def test_unprivileged_says_it_cannot_read_tags(clean_host):
    with Build(name="show-unpriv") as b:
        p = b.spawn(["sleep", "60"], user="nobody", unshare_net=True)
        try:
            r = _as_nobody(["--json", str(p.pid)])
            h = _as_nobody([str(p.pid)])
        finally:
            p.kill()
            p.wait()
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["privileged"] is False
    assert d["verdict"] == "unknown" and d["reason_code"] == "tags-unreadable"
    assert d["cgroup"] == b.cgroup and d["in_cgroup_procs"] is True
    assert [a["cgroup"] for a in d["ancestors"]] == [b.cgroup, "/cgnetns", "/"]
    assert all(a["tag_readable"] is False for a in d["ancestors"])
    assert d["netns"] is not None  # its own process: readable
    assert "looks like a cgnetns build" in d["reason"] and "as root" in d["fix"]
    assert h.returncode == 0 and b"UNKNOWN" in h.stdout and b"tag unreadable" in h.stdout


def test_unprivileged_all_is_one_line_status_4():
    r = _as_nobody(["--all"])
    assert r.returncode == 4
    assert r.stderr.count(b"\n") == 1 and b"needs root" in r.stderr and r.stdout == b""


# -- bad input ----------------------------------------------------------------

def _pid_max():
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read())


@pytest.mark.parametrize("argv,status,words", [
    ([str(_pid_max())], 3, "no such process"),
    (["12x"], 2, "not a process ID"),
    (["0"], 2, "not a process ID"),
    (["--no-such-option"], 2, "unrecognized arguments"),
    (["--all", "1"], 2, "cannot be combined"),
    (["--all", "--check"], 2, "not allowed with"),
])
def test_bad_input_is_one_line(argv, status, words):
    r = run(SHOW + argv, env=repo_env())
    assert r.returncode == status, r.stderr
    err = r.stderr.decode()
    assert words in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("cgnetns-show: ")


def test_debug_shows_the_traceback():
    r = run(SHOW + ["--debug", str(_pid_max())], env=repo_env())
    assert r.returncode != 0 and b"Traceback" in r.stderr and b"ProcessGone" in r.stderr


def test_process_exiting_while_shown(monkeypatch, capsys):
    p = subprocess.Popen(["sleep", "60"])
    real = resolve.check_allow_list

    def kill_then_check(*a, **kw):
        p.kill()
        p.wait()
        return real(*a, **kw)
    monkeypatch.setattr(resolve, "check_allow_list", kill_then_check)
    try:
        rc = show.main([str(p.pid)])
    finally:
        p.kill()
        p.wait()
    out, err = capsys.readouterr()
    assert rc == 3 and out == ""
    assert "exited while it was being shown" in err and err.count("\n") == 1


def test_no_cgroup2(cg2root):
    script = "mount --make-rprivate / && umount -l %s && %s -m cgnetns.cli.show --json; " \
             "echo \"rc=$?\" >&2; exec %s -m cgnetns.cli.show --all" % (cg2root, PY, PY)
    r = run(["unshare", "-m", "sh", "-c", script], env=repo_env())
    d = json.loads(r.stdout)
    assert d["verdict"] == "refuse" and d["reason_code"] == "no-cgroup2"
    assert "mount -t cgroup2" in d["fix"]
    err = r.stderr.decode().splitlines()
    assert err[0] == "rc=0"
    assert r.returncode == 125 and len(err) == 2 and "no cgroup2" in err[1], err


# -- --all --------------------------------------------------------------------

def test_all_lists_five_concurrent_builds_with_members(clean_host):
    me = namespaces.current_identity()
    long_name = "a-rather-long-build-name-for-col"
    runs = []
    try:
        for i in range(5):
            args = ["--name", long_name if i == 4 else "all%d" % i]
            if i % 2 == 0:
                args += ["--unshare-net", "--user", "nobody"]
            cmd = "sleep 300 & sleep 300 & echo ready; wait # " + "x" * (120 if i == 4 else 1)
            p = subprocess.Popen(CGNETNS_RUN + args + ["--", "sh", "-c", cmd], env=repo_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            runs.append(p)
        for p in runs:
            assert p.stdout.readline() == b"ready\n"
        rj = run(SHOW + ["--all", "--json"], env=repo_env())
        rh = run(SHOW + ["--all"], env=repo_env())
    finally:
        for p in runs:
            p.send_signal(signal.SIGTERM)
        rcs = [p.wait(30) for p in runs]
    assert rcs == [128 + signal.SIGTERM] * 5
    assert rj.returncode == 0, rj.stderr
    builds = {b["owner_pid"]: b for b in json.loads(rj.stdout)["builds"]}
    for i, p in enumerate(runs):
        b = builds[p.pid]
        assert b["name"] == (long_name if i == 4 else "all%d" % i)
        assert b["state"] == "live" and b["pin"]["state"] == "ok" and b["pin"]["matches"]
        assert b["approved_netns"]["ino"] == me.ino and b["approved_netns"]["nsid"] == me.nsid
        assert b["cgroup"] == "/cgnetns/" + b["id"] and b["cgroup_exists"]
        assert isinstance(b["age"], float) and 0 <= b["age"] < 60
        members = b["members"]
        assert len(members) == 3, members  # sh and two sleeps
        assert sorted(m["command"].split()[0] for m in members) == ["sh", "sleep", "sleep"]
        for m in members:
            assert m["cgroup"] == b["cgroup"]
            assert m["user"] == ("nobody" if i % 2 == 0 else "root")
            assert m["in_approved_netns"] is (i % 2 == 1)
            assert isinstance(m["pid"], int) and isinstance(m["netns"]["ino"], int)
    assert rh.returncode == 0, rh.stderr
    text = rh.stdout.decode()
    lines = text.splitlines()
    assert all(len(line) <= 100 for line in lines), [x for x in lines if len(x) > 100]
    for b in (builds[p.pid] for p in runs):
        assert b["id"] in text
        for m in b["members"]:
            assert any(line.split("\u2500 ")[-1].startswith("%-7d" % m["pid"]) for line in lines)
    assert any(line.endswith("\u2026") for line in lines)  # the long command was cut
    starred = [line for line in lines if re.search(r"net:\[\d+\]\*", line)]
    assert len(starred) >= 6  # the members of the two builds without --unshare-net


# -- --check ------------------------------------------------------------------

def _check(prefix=""):
    script = prefix + "exec %s -m cgnetns.cli.show --check --json" % PY
    r = run(["unshare", "-m", "sh", "-c", "mount --make-rprivate / && " + script],
            env=repo_env())
    d = json.loads(r.stdout)
    return r.returncode, {c["name"]: c for c in d["checks"]}, d


ALLOW_DIR = os.path.dirname(paths.ALLOW_PATH)


def _allow_list(content, mode):
    """Shell steps: a private allow list with CONTENT (printf format) and MODE."""
    return ("mount -t tmpfs -o mode=755 none %s && printf '%s' > %s && chmod %s %s && "
            % (ALLOW_DIR, content, paths.ALLOW_PATH, mode, paths.ALLOW_PATH))


def test_check_on_this_machine():
    require_helper()
    r = run(SHOW + ["--check", "--json"], env=repo_env())
    d = json.loads(r.stdout)
    checks = {c["name"]: c for c in d["checks"]}
    assert r.returncode == (1 if d["failed"] else 0)
    assert d["failed"] == sum(c["status"] == "fail" for c in d["checks"])
    for name in ("helper", "helper-setuid", "helper-static", "helper-paths", "front",
                 "front-mode", "front-dynamic", "front-paths", "allow-list", "cgroup2",
                 "cgroup-xattrs", "systemd", "run-dir", "ns-get-id", "openat2", "so-peerpidfd",
                 "cgroup-kill", "clone-into-cgroup", "broker", "python", "debris"):
        assert name in checks, name
    for c in d["checks"]:
        assert c["status"] in ("ok", "warn", "fail")
        assert (c["fix"] is None) == (c["status"] == "ok"), c
    for name in ("helper", "helper-setuid", "helper-static", "helper-paths", "front",
                 "front-mode", "front-dynamic", "front-paths", "cgroup2", "cgroup-xattrs",
                 "ns-get-id", "openat2", "so-peerpidfd", "cgroup-kill", "clone-into-cgroup"):
        assert checks[name]["status"] == "ok", checks[name]  # kernel 6.18, make install
    assert HELPER in checks["helper"]["message"] and FRONT in checks["front"]["message"]
    assert "/sys/fs/cgroup/unified (hybrid" in checks["cgroup2"]["message"]
    h = run(SHOW + ["--check"], env=repo_env())
    assert h.returncode == r.returncode
    lines = h.stdout.decode().splitlines()
    assert all(len(line) <= 100 for line in lines)
    assert lines[-1].startswith("%d checks: %d failed" % (len(d["checks"]), d["failed"]))
    assert all(re.match(r"(ok|warn|fail) +\S| {6}", line) for line in lines[:-1]), lines


def test_check_helper_without_setuid_bit(tmp_path):
    require_helper()
    copy = tmp_path / "cgnetns-helper"
    subprocess.run(["cp", HELPER, str(copy)], check=True)
    os.chmod(copy, 0o755)
    rc, checks, d = _check("mount --bind %s %s && " % (copy, HELPER))
    assert rc == 1
    c = checks["helper-setuid"]
    assert c["status"] == "fail" and "setuid bit is not set" in c["message"]
    assert "chmod 4755" in c["fix"]
    assert checks["front"]["status"] == "ok"  # the front is checked on its own
    assert os.stat(HELPER).st_mode & stat.S_ISUID  # the real one is untouched


def test_check_helper_missing():
    require_helper()
    rc, checks, d = _check("mount -t tmpfs -o mode=755 none %s && " % os.path.dirname(HELPER))
    assert rc == 1
    c = checks["helper"]
    assert c["status"] == "fail" and HELPER in c["message"] and "make install" in c["fix"]
    assert "helper-setuid" not in checks
    assert checks["front"]["status"] == "ok"


def test_check_front_set_user_id(tmp_path):
    """A set-user-ID front is a failure: only the helper may hold privilege."""
    require_helper()
    copy = tmp_path / "cgnetns-exec"
    subprocess.run(["cp", FRONT, str(copy)], check=True)
    os.chmod(copy, 0o4755)
    rc, checks, d = _check("mount --bind %s %s && " % (copy, FRONT))
    assert rc == 1
    c = checks["front-mode"]
    assert c["status"] == "fail" and "set-user-ID" in c["message"], c
    assert "chmod 0755" in c["fix"]
    assert checks["front-dynamic"]["status"] == "ok" and checks["front-paths"]["status"] == "ok"
    assert checks["helper-setuid"]["status"] == "ok"
    assert not os.stat(FRONT).st_mode & stat.S_ISUID  # the real one is untouched


def test_check_front_that_is_static_and_built_for_another_helper(tmp_path):
    """The static helper installed as the front (not set-user-ID): a warning
    (Gentoo's sandbox would ptrace it), and a failure because it does not
    execute the installed helper."""
    require_helper()
    copy = tmp_path / "cgnetns-exec"
    subprocess.run(["cp", HELPER, str(copy)], check=True)
    os.chmod(copy, 0o755)
    rc, checks, d = _check("mount --bind %s %s && " % (copy, FRONT))
    assert rc == 1
    assert checks["front-mode"]["status"] == "ok"
    c = checks["front-dynamic"]
    assert c["status"] == "warn" and "statically linked" in c["message"] and c["fix"]
    c = checks["front-paths"]
    assert c["status"] == "fail" and HELPER in c["message"], c
    assert "same PREFIX" in c["fix"]


def test_check_front_missing():
    require_helper()
    rc, checks, d = _check("mount -t tmpfs -o mode=755 none %s && " % os.path.dirname(FRONT))
    assert rc == 1
    c = checks["front"]
    assert c["status"] == "fail" and FRONT in c["message"] and "make install" in c["fix"]
    assert "front-mode" not in checks
    assert checks["helper-setuid"]["status"] == "ok"


def test_check_group_writable_allow_list():
    require_helper()
    rc, checks, d = _check(_allow_list(PROBE_PROGRAM + "\\n", "664"))
    assert rc == 1
    c = checks["allow-list"]
    assert c["status"] == "fail" and "group or other writable" in c["message"]
    assert "chmod 644" in c["fix"]
    # and the same list with a safe mode is fine
    rc, checks, d = _check(_allow_list("/usr/bin/stat\\n", "644"))
    assert checks["allow-list"]["status"] == "ok", checks["allow-list"]
    # a general-purpose launcher on the list is worth a warning
    rc, checks, d = _check(_allow_list("/usr/bin/env\\n", "644"))
    c = checks["allow-list-program"]
    assert c["status"] == "warn" and "/usr/bin/env runs whatever" in c["message"]


def _start_private_broker(sock):
    log = str(sock) + ".log"
    with open(log, "wb") as f:
        p = subprocess.Popen(SHOW[:2] + ["cgnetns.cli.broker", "--socket", str(sock)],
                             env=repo_env(), stdout=f, stderr=f)
    deadline = time.monotonic() + 20
    while not os.path.exists(log) or "serving " not in open(log).read():
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            pytest.fail("cgnetnsd did not start: %s" % open(log).read())
        time.sleep(0.05)
    return p, log


def test_check_broker(tmp_path):
    """check_broker asks the broker for a program no allow list names: its
    helper answers with a refusal, which proves the socket, the broker and
    the helper it starts.  A socket builds cannot connect to, one nobody
    serves, and one that accepts and never answers are failures."""
    require_helper()
    sock = tmp_path / "b.sock"
    p, log = _start_private_broker(sock)
    try:
        c, = show.check_broker(str(sock))
        assert c.status == "ok" and str(sock) in c.message, c.message
        os.chmod(sock, 0o644)
        c, = show.check_broker(str(sock))
        assert c.status == "fail" and "mode 0644" in c.message and c.fix
        os.chmod(sock, 0o666)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(10)
    text = open(log).read()
    assert re.search(r"refuse 126: %s: not in the allow list" % show.BROKER_PROBE_NAME, text), text
    # the socket is gone with the broker
    c, = show.check_broker(str(sock))
    assert c.status == "warn" and "not running" in c.message
    # a stale socket: nobody accepts
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()
    os.chmod(sock, 0o666)
    c, = show.check_broker(str(sock))
    assert c.status == "fail" and "does not answer" in c.message
    os.unlink(sock)
    # accepted by the kernel (backlog), never answered
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        mute.bind(str(sock))
        mute.listen(4)
        os.chmod(sock, 0o666)
        t0 = time.monotonic()
        c, = show.check_broker(str(sock), timeout=0.5)
        assert c.status == "fail" and "does not answer within" in c.message, c.message
        assert time.monotonic() - t0 < 5
    finally:
        mute.close()


def test_check_library_probes():
    # The kernel features of this machine (Linux 6.18).
    assert show.probe_ns_get_id() and show.probe_openat2()
    assert show.probe_so_peerpidfd() and show.probe_clone_into_cgroup()
    assert show._elf_interp(sys.executable) is not None  # a dynamic program
    assert show._elf_interp(FRONT) is not None and show._elf_interp(HELPER) is None


def test_exec_path_rule():
    """Which path cgnetns-exec takes (helper/front.c, helper/main.c), from
    /proc/PID/status and the user namespace."""
    init = (0, resolve.INIT_USER_NS_INO)
    user = {"NoNewPrivs": "0", "Uid": "1000\t1000\t1000\t1000", "CapBnd": "000001ffffffffff",
            "TracerPid": "0"}
    assert resolve.exec_path(user, init, HELPER)[0] == "set-user-id"
    assert resolve.exec_path(dict(user, NoNewPrivs="1"), init, HELPER)[0] == "broker"
    assert resolve.exec_path(user, (0, 4026532000), HELPER)[0] == "broker"
    path, why = resolve.exec_path(dict(user, TracerPid="77"), init, HELPER)
    assert path == "broker" and "traced (by process 77)" in why
    path, why = resolve.exec_path(dict(user, CapBnd="000001ffffdfffff"), init, HELPER)
    assert path == "broker" and "bounding set lacks CAP_SYS_ADMIN" in why
    path, why = resolve.exec_path(user, init, "/nonexistent/cgnetns-helper")
    assert path == "broker" and "cannot be found" in why
    path, why = resolve.exec_path(user, init, sys.executable)
    assert path == "broker" and "not set-user-ID root" in why
    # root is privileged without the bit (also when traced), not under no_new_privs
    root = dict(user, Uid="0\t0\t0\t0")
    assert resolve.exec_path(root, init, "/nonexistent/cgnetns-helper")[0] == "set-user-id"
    assert resolve.exec_path(dict(root, TracerPid="1"), init, HELPER)[0] == "set-user-id"
    assert resolve.exec_path(dict(root, NoNewPrivs="1"), init, HELPER)[0] == "broker"
