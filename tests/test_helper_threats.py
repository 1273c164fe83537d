"""THREATS.md items 1-14 against cgnetns-exec, each played by an attacker on
the real kernel (setpriv as nobody, unshare, ip netns, nsenter).

Every test checks what happened, not only the exit status: the program the
attacker tried to run would have written a report (the marker) naming the
network namespace it ran in; it must be absent, or name the attacker's own
namespace and no privilege.  A server that listens only in the approved
namespace, and a decoy on the same port in the attacker's private one, tell
which namespace was reached.

Tests that change the allow list or the pins directory use the private
variants of the helper (same sources, compiled with paths inside the test
directory), so that nothing shared is made unsafe even for a moment.  The
tests that `make mutants` (tools/mutants_table.py) relies on run against a
variant too: built from helper/, they carry the mutant.

Where the kernel would protect anyway, the test takes that protection away
first (fs.suid_dumpable and kernel.core_pattern for core dumps, restored
afterwards also on failure), and each refusal is asserted by its exact
message, so that another check printing a similar line cannot stand in for
it.  Checks that no real kernel state reaches (the drop's verification) are
reached through a root ptrace tracer compiled here that changes one system
call's result.
"""

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import threading
import time

import pytest

try:
    from . import helper_support as hs
except ImportError:
    import helper_support as hs

henv, builds, netns, servers, world = hs.henv, hs.builds, hs.netns, hs.servers, hs.world

NOTICE = "no privilege"
# the pins directory each helper reads (a private variant's is compiled in)
PINS_OF = {"installed": lambda henv: hs.PINS, "musl": lambda henv: henv.private_pins,
           "glibc": lambda henv: henv.private_pins}


def other_build(world, builds, netns, servers, name="b"):
    """A second build B approving another namespace, with a server that sends
    "OTHER-..." on the same port there."""
    n = netns(name)
    token = "OTHER-" + os.urandom(4).hex()
    servers(token, n.path, world.port)
    b = builds(n.path, name=name)
    return b, n, token


def compile_attacker_lib(henv, d):
    """A library that, wherever it is loaded, appends /proc/self/exe to a
    marker in the attacker's directory."""
    src = os.path.join(d, "evil.c")
    with open(src, "w") as f:
        f.write('#include <stdio.h>\n#include <unistd.h>\n'
                '__attribute__((constructor)) static void evil(void) {\n'
                ' char b[512] = ""; ssize_t n = readlink("/proc/self/exe", b, 511);\n'
                ' if (n > 0) b[n] = 0; FILE *f = fopen("%s/loaded-in", "a");\n'
                ' if (f) { fprintf(f, "%%s\\n", b); fclose(f); } }\n' % d)
    lib = os.path.join(d, "libevil.so")
    hs.sh(["gcc", "-shared", "-fPIC", "-o", lib, src])
    marker = os.path.join(d, "loaded-in")
    with open(marker, "w"):
        pass
    os.chmod(marker, 0o666)  # root's sh/nsenter/setpriv load it too
    return lib


def fake_program(d, name, marker):
    """An attacker's program named like a listed one: writes marker if run."""
    p = os.path.join(d, name)
    with open(p, "w") as f:
        f.write("#!/bin/sh\necho ran > %s\n" % marker)
    os.chmod(p, 0o755)
    os.chown(p, hs.NOBODY, hs.NOGROUP)
    return p


# ---------------------------------------------------------------------------
# 1. Forged environment variables

def forged_env(henv, world, b, attacker):
    lib = compile_attacker_lib(henv, attacker)
    return {
        "PATH": attacker + ":/usr/bin:/bin",
        "CGNETNS_PIN": b.pin_path, "CGNETNS_ID": b.id, "CGNETNS_TAG": b.tag(),
        "CGNETNS_CGROUP": b.cgroup_path, "CGNETNS_EXEC": attacker + "/probe",
        "CGNETNS_ALLOW": attacker + "/allow", "CGNETNS_PINS": attacker,
        "IFS": "/ \t", "LD_PRELOAD": lib, "LD_LIBRARY_PATH": attacker,
        "LD_AUDIT": lib, "LD_DEBUG": "all", "LD_DEBUG_OUTPUT": attacker + "/ld",
        "GLIBC_TUNABLES": "glibc.malloc.check=3:glibc.malloc.mmap_threshold=1",
        "MALLOC_CHECK_": "3", "MALLOC_PERTURB_": "165",
        "LANG": "xx_XX.UTF-8", "LC_ALL": "xx_XX", "LANGUAGE": "xx", "LOCPATH": attacker,
        "NLSPATH": attacker + "/%N", "GCONV_PATH": attacker, "TZ": attacker + "/tz",
        "TMPDIR": attacker, "HOSTALIASES": attacker + "/hosts", "RES_OPTIONS": "debug",
    }


@pytest.mark.parametrize("variant", ["installed", "glibc"])
def test_t01_forged_environment_in_a_build(henv, world, builds, netns, servers, variant):
    """Inside build A, env naming build B's pin, tag and cgroup, a PATH with a
    fake "probe", loader and libc variables: the helper still joins A's
    namespace (never B's), runs the listed probe (never the PATH one), and the
    attacker's library is never loaded into the helper itself."""
    if variant == "installed":
        helper, a = henv.installed, world.a
        b, _, other = other_build(world, builds, netns, servers)
    else:
        helper = henv.variants["glibc"]
        a = builds(name="ga", pins=henv.private_pins)
        n = netns("gb")
        other = "OTHER-" + os.urandom(4).hex()
        servers(other, n.path, world.port)
        b = builds(n.path, name="gb", pins=henv.private_pins)
    attacker = henv.attacker_dir()
    fake_marker = os.path.join(attacker, "fake-ran")
    fake_program(attacker, henv.probe_name, fake_marker)
    report = henv.out_path()
    env = forged_env(henv, world, b, attacker)
    r = a.run([helper, henv.probe_name, "report", report, "--connect=%d" % world.port],
              netns=world.private.path, env=env)
    assert r.returncode == 0, r.stderr
    got = hs.read_report(report)
    hs.assert_joined(got, world.host_ns, world.parent_token)
    assert got["connect"]["token"] != other
    assert got["exe"] == henv.probe
    hs.assert_not_run(fake_marker)
    with open(os.path.join(attacker, "loaded-in")) as f:
        loaded = set(f.read().split())
    # Never into the set-user-ID helper.  The installed front (not set-user-ID,
    # no privilege) is an ordinary program of the caller's: it may load what
    # the caller's environment names, as the program itself may.
    setuid_helper = henv.helper if variant == "installed" else helper
    assert setuid_helper not in loaded and os.path.realpath(setuid_helper) not in loaded
    assert henv.probe in loaded  # the program may load it: the boundary (README)


def test_t01_forged_environment_outside_a_build(henv, world):
    """Outside every build, env naming build A's pin and tag gains nothing."""
    attacker = henv.attacker_dir()
    cg = henv.untagged_cgroup()
    report = henv.out_path()
    env = forged_env(henv, world, world.a, attacker)
    r = henv.run([henv.installed, henv.probe_name, "report", report, "--connect=%d" % world.port],
                 cgroup=cg, netns=world.private.path, env=env)
    assert r.returncode == 0, r.stderr
    hs.assert_not_joined(hs.read_report(report), world.private, world.private_token)


# ---------------------------------------------------------------------------
# 2. Forged files

def test_t02_own_mount_namespace_over_run_cgnetns(henv, world, builds):
    """As nobody in its own user+mount namespace, with its own pins directory
    (a pin of its choosing) and its own allow list mounted over the real
    ones: no privilege there, the probe runs in the attacker's namespace.
    (Private variant: no broker socket, so the no-privilege path is the
    same whether or not a cgnetnsd runs on the host.)"""
    b = builds(name="mnt", pins=henv.private_pins)
    attacker = henv.attacker_dir()
    report = henv.out_path()
    run_dir = os.path.dirname(henv.private_pins)
    script = (
        'set -e; mount -t tmpfs none %(run)s; mkdir -p %(run)s/pins; '
        'touch %(run)s/pins/%(id)s; mount --bind %(ns)s %(run)s/pins/%(id)s; '
        'printf "%(probe)s\\n" > %(a)s/allow; mount --bind %(a)s/allow %(allow)s; '
        'exec "$@"' % {"id": b.id, "ns": "/proc/self/ns/net", "probe": henv.probe,
                       "a": attacker, "run": run_dir, "allow": henv.private_allow})
    r = b.run(["/bin/sh", "-c", script, "sh", henv.variants["musl"], henv.probe_name, "report", report,
               "--connect=%d" % world.port],
              netns=world.private.path, pre=["unshare", "-Urm", "--"])
    assert r.returncode == 0, r.stderr
    assert NOTICE in hs.one_line(r.stderr)
    hs.assert_not_joined(hs.read_report(report), world.private, world.private_token,
                         unprivileged=False)


def _pin_cases(world, netns):
    def symlink(b):
        b.unpin()
        os.symlink("/proc/self/ns/net", b.pin_path)

    def regular(b):
        b.unpin(remove=False)  # the empty file stays

    def uts(b):
        b.unpin(remove=False)
        b.pin("/proc/self/ns/uts")
        dev, ino, nsid = hs.ns_identity(b.pin_path)
        b.set_tag(hs.tag_value(b.id, dev, ino, nsid))

    def fifo(b):
        b.unpin()
        os.mkfifo(b.pin_path, 0o600)

    return {"symlink": (symlink, "Too many levels of symbolic links"),
            "regular-file": (regular, "not a namespace file"),
            "uts-namespace": (uts, "not a network namespace"),
            "fifo": (fifo, "not a namespace file")}


@pytest.mark.parametrize("case", ["symlink", "regular-file", "uts-namespace", "fifo"])
def test_t02_forged_pin(henv, world, netns, case):
    make, reason = _pin_cases(world, netns)[case]
    make(world.a)
    report = henv.out_path()
    r = world.a.run(world.probe_argv(report), netns=world.private.path)
    assert r.returncode == hs.EXIT_REFUSE
    assert reason in hs.one_line(r.stderr)
    hs.assert_not_run(report)


@pytest.mark.parametrize("case", ["mode-0777", "mode-0770", "owner-nobody", "symlink",
                                  "parent-writable"])
def test_t02_unsafe_pins_directory(henv, world, builds, case):
    """The pins directory (private variant): not root's, writable by others,
    or reached through a symlink: refuse."""
    b = builds(name="p", pins=henv.private_pins)
    pins, parent = henv.private_pins, os.path.dirname(henv.private_pins)
    moved = pins + ".real"
    try:
        if case == "mode-0777":
            os.chmod(pins, 0o777)
        elif case == "mode-0770":
            os.chmod(pins, 0o770)
        elif case == "owner-nobody":
            os.chown(pins, hs.NOBODY, hs.NOGROUP)
        elif case == "symlink":
            os.rename(pins, moved)
            os.symlink(moved, pins)
        elif case == "parent-writable":
            os.chmod(parent, 0o777)
        report = henv.out_path()
        r = b.run(world.probe_argv(report, henv.variants["musl"]), netns=world.private.path)
        assert r.returncode == hs.EXIT_REFUSE
        assert "unsafe pins directory" in hs.one_line(r.stderr)
        hs.assert_not_run(report)
    finally:
        if os.path.islink(pins):
            os.unlink(pins)
            os.rename(moved, pins)
        os.chmod(pins, 0o700)
        os.chown(pins, 0, 0)
        os.chmod(parent, 0o755)
    # and the same build works again once it is safe
    report = henv.out_path()
    r = b.run(world.probe_argv(report, henv.variants["musl"]), netns=world.private.path)
    assert r.returncode == 0, r.stderr
    hs.assert_joined(hs.read_report(report), world.host_ns, world.parent_token)


# ---------------------------------------------------------------------------
# 3. Forged tags

def _build_for(henv, world, builds, helper, name):
    """(helper path, build approving the host namespace) for one helper: the
    installed one with the shared build A, or a private variant (built from
    this checkout's helper/, with its own pins directory) with a build of its
    own in that directory."""
    if helper == "installed":
        return henv.installed, world.a
    return henv.variants[helper], builds(name=name, pins=henv.private_pins)


@pytest.mark.parametrize("helper", ["installed", "musl"])
def test_t03_user_xattr_on_own_cgroup_is_not_a_tag(henv, world, builds, helper):
    """nobody owns a delegated cgroup and writes a build's exact tag there as
    user.cgnetns (trusted.cgnetns is refused to it): not a tag, no join."""
    exe, a = _build_for(henv, world, builds, helper, "ux")
    d = henv.untagged_cgroup(owner=hs.NOBODY)
    report = henv.out_path()
    script = ('setfattr -n trusted.cgnetns -v "$1" "$2" 2>/dev/null && echo TRUSTED-SET; '
              'setfattr -n user.cgnetns -v "$1" "$2" || exit 98; shift 2; exec "$@"')
    r = henv.run(["/bin/sh", "-c", script, "sh", a.tag(), d, exe, henv.probe_name,
                  "report", report, "--connect=%d" % world.port],
                 cgroup=d, netns=world.private.path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == b""
    assert b"TRUSTED-SET" not in r.stdout
    assert os.getxattr(d, "user.cgnetns").decode() == a.tag()  # it was really there
    hs.assert_not_joined(hs.read_report(report), world.private, world.private_token)


@pytest.mark.parametrize("helper", ["installed", "musl"])
def test_t03_tag_on_cgroup_not_owned_by_root(henv, world, builds, helper):
    """A trusted tag (root's mistake) on a cgroup that nobody owns: refuse,
    also from a child cgroup the owner made and moved itself into."""
    exe, a = _build_for(henv, world, builds, helper, "own")
    d = a.child("delegated", owner=hs.NOBODY)
    a.set_tag(a.tag(), path=d)
    want = "cgnetns-exec: tagged cgroup /cgnetns/%s/delegated is not owned by root" % a.id
    report = henv.out_path()
    r = henv.run(world.probe_argv(report, exe), cgroup=d, netns=world.private.path)
    assert r.returncode == hs.EXIT_REFUSE
    assert hs.one_line(r.stderr) == want
    hs.assert_not_run(report)
    # the owner makes a child and moves itself there: the walk finds the tag
    script = 'mkdir "$0/x" && echo $$ > "$0/x/cgroup.procs" && exec "$@"'
    r = henv.run(["/bin/sh", "-c", script, d] + world.probe_argv(report, exe), cgroup=d,
                 netns=world.private.path)
    assert r.returncode == hs.EXIT_REFUSE
    assert hs.one_line(r.stderr) == want
    hs.assert_not_run(report)


# ---------------------------------------------------------------------------
# 4. Moving between cgroups

def test_t04_cannot_move_to_sibling_parent_or_root(henv, world, builds, netns, servers):
    b, _, other = other_build(world, builds, netns, servers)
    targets = [b.cgroup_path, os.path.dirname(b.cgroup_path), henv.cgroot]
    script = ('for t in "$@"; do case $t in --) break;; esac; '
              'echo $$ > "$t/cgroup.procs" 2>/dev/null && echo "MOVED $t"; shift; done; '
              'shift; exec "$@"')
    report = henv.out_path()
    r = world.a.run(["/bin/sh", "-c", script, "sh"] + targets + ["--"] + world.probe_argv(report),
                    netns=world.private.path)
    assert r.returncode == 0, r.stderr
    assert b"MOVED" not in r.stdout
    got = hs.read_report(report)
    hs.assert_joined(got, world.host_ns, world.parent_token)
    assert got["cgroup"] == "/cgnetns/" + world.a.id


@pytest.mark.parametrize("owner", [None, hs.NOBODY])
def test_t04_outsider_cannot_move_into_a_build(henv, world, owner):
    """From a root-owned or an own (delegated) cgroup, nobody cannot enter A."""
    u = henv.untagged_cgroup(owner=owner)
    script = 'echo $$ > "$0/cgroup.procs" 2>/dev/null && echo MOVED; exec "$@"'
    report = henv.out_path()
    r = henv.run(["/bin/sh", "-c", script, world.a.cgroup_path] + world.probe_argv(report),
                 cgroup=u, netns=world.private.path)
    assert r.returncode == 0, r.stderr
    assert b"MOVED" not in r.stdout
    hs.assert_not_joined(hs.read_report(report), world.private, world.private_token)


# ---------------------------------------------------------------------------
# 5. cgroup namespace, user namespace, cgroup v1

def test_t05_own_cgroup_namespace(henv, world):
    """A cgroup namespace rooted at A shows "0::/": the path means something
    else on the cgroup2 mount, and the membership check refuses it."""
    report = henv.out_path()
    r = world.a.run(world.probe_argv(report), netns=world.private.path, unshare=["-C"])
    assert r.returncode == hs.EXIT_REFUSE
    assert "is not in cgroup" in hs.one_line(r.stderr)
    hs.assert_not_run(report)


def test_t05_cgroup_namespace_path_confusion(henv, world, builds, netns, servers):
    """In A/<x> with a cgroup namespace rooted at A, /proc/self/cgroup says
    "/<x>"; a top-level cgroup /<x> carries build B's valid tag.  Following
    the path would join B's namespace: the membership check refuses."""
    b, _, other = other_build(world, builds, netns, servers)
    name = "confuse-" + os.urandom(4).hex()
    top = os.path.join(henv.cgroot, name)
    os.mkdir(top)
    henv.untagged_cgroups.append(top)
    os.setxattr(top, hs.TAG, b.tag().encode())
    inner = world.a.child(name)
    report = henv.out_path()
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    script = ('echo $$ > "$0/cgroup.procs" || exit 97; '
              'grep -qx "0::/%s" /proc/self/cgroup || exit 96; exec "$@"' % name)
    r = world.a.run(["/bin/sh", "-c", script, inner] + drop + world.probe_argv(report),
                    netns=world.private.path, unshare=["-C"], user=None)
    assert r.returncode == hs.EXIT_REFUSE, (r.returncode, r.stderr)
    assert "is not in cgroup /%s" % name in hs.one_line(r.stderr)
    hs.assert_not_run(report)


@pytest.mark.parametrize("helper", ["installed", "musl"])
def test_t05_cgroup2_mount_of_another_subtree(henv, world, builds, netns, servers, helper):
    """In the initial cgroup namespace, but in a mount namespace (root's, as a
    container runtime makes it) whose cgroup2 mount shows another subtree T:
    /proc/self/cgroup says /cgnetns/<A>, which there is T/cgnetns/<A>, tagged
    for build B.  Following the path would join B's namespace: the
    membership check on the tagged walk refuses (cgroup namespace checks do
    not apply: there is none)."""
    exe, a = _build_for(henv, world, builds, helper, "mm")
    n = netns("mmb")
    other = "OTHER-" + os.urandom(4).hex()
    servers(other, n.path, world.port)
    b = builds(n.path, name="mmb", pins=PINS_OF[helper](henv))
    t = henv.untagged_cgroup()
    decoy = os.path.join(t, "cgnetns", a.id)
    os.makedirs(decoy)
    os.setxattr(decoy, hs.TAG, b.tag().encode())
    report = henv.out_path()
    script = ('c=$1; shift; mount --make-rprivate / && mount --bind "$0" "$c" || exit 97; '
              'grep -qx "0::/cgnetns/%s" /proc/self/cgroup || exit 96; '
              'test -n "$(getfattr --absolute-names --only-values -n %s "$c/cgnetns/%s")" '
              '|| exit 95; exec "$@"' % (a.id, hs.TAG, a.id))
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    r = a.run(["/bin/sh", "-c", script, t, henv.cgroot] + drop + world.probe_argv(report, exe),
              netns=world.private.path, unshare=["-m"], user=None)
    assert r.returncode == hs.EXIT_REFUSE, (r.returncode, r.stderr)
    assert re.fullmatch(r"cgnetns-exec: process \d+ is not in cgroup /cgnetns/%s of the cgroup2 "
                        r"mount \(cgroup namespace or mount mismatch\)" % re.escape(a.id),
                        hs.one_line(r.stderr)), r.stderr
    hs.assert_not_run(report)


def test_t05_user_namespace(henv, world, builds):
    """In its own user namespace the set-user-ID bit gives nothing: no join,
    one line saying so (private variant: no broker)."""
    b = builds(name="userns", pins=henv.private_pins)
    report = henv.out_path()
    r = b.run(world.probe_argv(report, henv.variants["musl"]), netns=world.private.path,
              pre=["unshare", "-Ur", "--"])
    assert r.returncode == 0, r.stderr
    assert NOTICE in hs.one_line(r.stderr)
    hs.assert_not_joined(hs.read_report(report), world.private, world.private_token,
                         unprivileged=False)


def test_t05_cgroup_v1_hierarchy_disagrees(henv, world):
    """A v1 hierarchy that places the caller at A's path is not believed:
    only the 0:: line counts."""
    v1 = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] == "cgroup" and "pids" in fields[-1].split(","):
                v1 = fields[4]
    if v1 is None:
        pytest.skip("no cgroup v1 pids hierarchy on this host (not hybrid)")
    d = os.path.join(v1, "cgnetns", world.a.id)
    made = []
    try:
        for p in (os.path.dirname(d), d):
            if not os.path.isdir(p):
                os.mkdir(p)
                made.append(p)
        u = henv.untagged_cgroup()
        report = henv.out_path()
        script = 'echo $$ > "$0/cgroup.procs" || exit 97; exec "$@"'
        r = henv.run(["/bin/sh", "-c", script, d] + ["setpriv", "--reuid=65534",
                     "--regid=65534", "--clear-groups", "--"] + world.probe_argv(report),
                     cgroup=u, netns=world.private.path, user=None)
        assert r.returncode == 0, r.stderr
        got = hs.read_report(report)
        hs.assert_not_joined(got, world.private, world.private_token)
    finally:
        for p in reversed(made):
            with open(os.path.join(p, "cgroup.procs")) as f:
                for pid in f.read().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            for _ in range(200):
                try:
                    os.rmdir(p)
                    break
                except OSError:
                    time.sleep(0.02)


# ---------------------------------------------------------------------------
# 6. Two builds whose parents sit in different namespaces

def test_t06_two_builds_each_get_their_own_parent(henv, world, builds, netns, servers):
    n1, n2 = netns("p1"), netns("p2")
    t1, t2 = "ONE-" + os.urandom(4).hex(), "TWO-" + os.urandom(4).hex()
    servers(t1, n1.path, world.port)
    servers(t2, n2.path, world.port)
    b1, b2 = builds(n1.path, name="one"), builds(n2.path, name="two")
    results = {}

    def call(build, key):
        report = henv.out_path(key)
        r = build.run(world.probe_argv(report), netns=world.private.path)
        results[key] = (r, hs.read_report(report))

    threads = [threading.Thread(target=call, args=(b, "%s-%d" % (name, i)))
               for i in range(4) for b, name in ((b1, "one"), (b2, "two"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 8
    for key, (r, got) in results.items():
        assert r.returncode == 0, r.stderr
        if key.startswith("one"):
            hs.assert_joined(got, n1.identity, t1)
        else:
            hs.assert_joined(got, n2.identity, t2)


# ---------------------------------------------------------------------------
# 7. The approved namespace died, the pin is gone, the tag outlived its run

def test_t07_pin_removed(henv, world):
    world.a.unpin()
    report = henv.out_path()
    r = world.a.run(world.probe_argv(report), netns=world.private.path)
    assert r.returncode == hs.EXIT_REFUSE
    assert "is gone" in hs.one_line(r.stderr)
    hs.assert_not_run(report)


def test_t07_pin_replaced_by_another_namespace(henv, world, netns, servers):
    n = netns("other")
    servers("OTHER", n.path, world.port)
    world.a.unpin(remove=False)
    world.a.pin(n.path)
    report = henv.out_path()
    r = world.a.run(world.probe_argv(report), netns=world.private.path)
    assert r.returncode == hs.EXIT_REFUSE
    assert "another namespace" in hs.one_line(r.stderr)
    hs.assert_not_run(report)


@pytest.mark.parametrize("helper", ["installed", "musl"])
def test_t07_namespace_id_differs(henv, world, builds, helper):
    """Same st_dev/st_ino, another kernel namespace id: what inode reuse looks
    like.  Refused."""
    exe, a = _build_for(henv, world, builds, helper, "nsid")
    dev, ino, nsid = a.identity
    a.set_tag(hs.tag_value(a.id, dev, ino, nsid + 1))
    report = henv.out_path()
    r = a.run(world.probe_argv(report, exe), netns=world.private.path)
    assert r.returncode == hs.EXIT_REFUSE
    assert hs.one_line(r.stderr) == ("cgnetns-exec: pin %s: namespace id differs from its tag "
                                     "(namespace replaced)" % a.id)
    hs.assert_not_run(report)


def test_t07_real_inode_reuse(henv, world, builds, netns, servers):
    """The approved namespace dies and a new one gets its inode number, and
    is pinned under the build's ID: the tag's namespace id tells them apart."""
    # nsfs inode numbers come from an IDA (proc_inum_ida), lowest free first,
    # shared with /proc entries, and namespaces are freed asynchronously
    # (cleanup_net).  So: fill the holes that earlier tests left below the
    # frontier (kept until the test ends), make the old namespace there, free
    # it, then make namespaces until one gets its number -- keeping any that
    # land below it (a hole we missed), closing those above it (the old
    # number is not free yet; theirs are freed above it).
    fillers = [netns("fill") for _ in range(40)]
    old = netns("old")
    b = builds(old.path, name="reuse")
    tag = b.tag()
    b.unpin()
    old.close()  # the namespace is freed: its inode number is free again
    reused = None
    tries = 0
    deadline = time.monotonic() + 60
    while reused is None and time.monotonic() < deadline:
        n = netns("new")
        tries += 1
        if n.identity[1] == b.identity[1]:
            reused = n
        elif n.identity[1] > b.identity[1]:
            n.close()
        else:
            fillers.append(n)
    assert reused is not None, "no inode reuse observed within 60 s (%d tries)" % tries
    assert reused.identity[2] != b.identity[2]
    servers("REUSED", reused.path, world.port)
    b.pin(reused.path)
    assert b.tag() == tag
    report = henv.out_path()
    r = b.run(world.probe_argv(report), netns=world.private.path)
    assert r.returncode == hs.EXIT_REFUSE
    assert "namespace id differs" in hs.one_line(r.stderr)
    hs.assert_not_run(report)


BAD_TAGS = {
    "v2": ("v2 pin={id} dev={dev} ino={ino} nsid={nsid}", "unsupported"),
    "v10": ("v10 pin={id}", "unsupported"),
    "newline": ("v1 pin={id} dev={dev} ino={ino} nsid={nsid}\n", "malformed"),
    "leading-zero": ("v1 pin={id} dev=0{dev} ino={ino} nsid={nsid}", "malformed"),
    "overflow": ("v1 pin={id} dev={dev} ino=18446744073709551616 nsid={nsid}", "malformed"),
    "order": ("v1 pin={id} ino={ino} dev={dev} nsid={nsid}", "malformed"),
    "two-spaces": ("v1  pin={id} dev={dev} ino={ino} nsid={nsid}", "malformed"),
    "dotdot-id": ("v1 pin=../pins/{id} dev={dev} ino={ino} nsid={nsid}", "malformed"),
    "json-id": ("v1 pin={id}.json dev={dev} ino={ino} nsid={nsid}", "malformed"),
    "empty": ("", "malformed"),
    "long": ("v1 pin={id} dev={dev} ino={ino} nsid={nsid}" + " " * 200, "longer than"),
    "negative": ("v1 pin={id} dev=-{dev} ino={ino} nsid={nsid}", "malformed"),
}


@pytest.mark.parametrize("case", sorted(BAD_TAGS))
def test_t07_bad_tag_is_refused_not_passed(henv, world, case):
    fmt, reason = BAD_TAGS[case]
    dev, ino, nsid = world.a.identity
    world.a.set_tag(fmt.format(id=world.a.id, dev=dev, ino=ino, nsid=nsid))
    report = henv.out_path()
    r = world.a.run(world.probe_argv(report), netns=world.private.path)
    assert r.returncode == hs.EXIT_REFUSE
    assert reason in hs.one_line(r.stderr)
    hs.assert_not_run(report)


# ---------------------------------------------------------------------------
# 8. argc == 0, empty argv[0], huge argv and environment, closed fds 0-2

@pytest.mark.parametrize("opt", ["--empty-argv", "--argv0="])
def test_t08_no_or_empty_argv0(henv, world, opt):
    launched, report = henv.out_path("launch"), henv.out_path()
    r = world.a.run([henv.probe, "launch", launched, opt, "--"] + world.probe_argv(report),
                    netns=world.private.path)
    assert r.returncode == hs.EXIT_REFUSE
    assert "empty argv[0]" in hs.one_line(r.stderr)
    assert os.path.exists(launched)  # the attacker ran ...
    hs.assert_not_run(report)        # ... the probe did not


def test_t08_huge_argv_and_environment(henv, world):
    launched, report = henv.out_path("launch"), henv.out_path()
    args = ["a%d" % i for i in range(20000)] + ["x" * 131071]
    env = {"PATH": "/usr/bin:/bin"}
    env.update({"BIG%d" % i: "y" * 4000 for i in range(150)})
    r = world.a.run([henv.probe, "launch", launched, "--"] + world.probe_argv(report) + args,
                    netns=world.private.path, env=env)
    assert r.returncode == 0, r.stderr[:500]
    assert r.stderr == b""
    got, want = hs.read_report(report), hs.read_report(launched)
    hs.assert_joined(got, world.host_ns, world.parent_token)
    assert got["argv_b"] == want["argv_b"] and len(got["argv_b"]) > 20000
    assert got["env_b"] == want["env_b"] and len(got["env_b"]) > 150


def test_t08_closed_standard_fds(henv, world):
    """fds 0-2 closed: the helper's own files never land there (libc opens
    /dev/null in secure mode, and the helper checks); nothing is written."""
    with open(hs.ALLOW, "rb") as f:
        allow_before = f.read()
    launched, report = henv.out_path("launch"), henv.out_path()
    close = ["--close=0", "--close=1", "--close=2"]
    r = world.a.run([henv.probe, "launch", launched] + close + ["--"] + world.probe_argv(report),
                    netns=world.private.path)
    assert r.returncode == 0
    got = hs.read_report(report)
    hs.assert_joined(got, world.host_ns, world.parent_token)
    assert {fd: v["target"] for fd, v in got["fds"].items()} == \
        {"0": "/dev/null", "1": "/dev/null", "2": "/dev/null"}
    # a refusal with fds 0-2 closed: nothing run, nothing written anywhere
    r = world.a.run([henv.probe, "launch", launched] + close + ["--", henv.installed,
                    henv.unlisted_probe, "report", report + "2"], netns=world.private.path)
    assert r.returncode == hs.EXIT_NOT_USABLE
    hs.assert_not_run(report + "2")
    with open(hs.ALLOW, "rb") as f:
        assert f.read() == allow_before
    with open(os.path.join(world.a.cgroup_path, "cgroup.procs")) as f:
        assert f.read() == ""


# ---------------------------------------------------------------------------
# 9. Programs that are not allow-listed

def _not_listed_cases(henv, attacker):
    """case -> (argv, the program the helper refuses, as its message names it).
    Whatever would run instead writes a marker: the unlisted probe its report,
    the attacker's programs (also found first in PATH as "python3" and
    "unlisted-name") attacker/evil-ran, python3 itself the report."""
    link = os.path.join(attacker, "probe")
    os.symlink(henv.unlisted_probe, link)
    marker = os.path.join(attacker, "evil-ran")
    evil = fake_program(attacker, "evil", marker)
    masq_evil = os.path.join(attacker, "unlisted-name")
    os.symlink(henv.installed, masq_evil)
    path_dir = os.path.join(attacker, "path")
    os.mkdir(path_dir)
    os.chown(path_dir, hs.NOBODY, hs.NOGROUP)
    for name in ("python3", "unlisted-name", "evil"):
        fake_program(path_dir, name, marker)
    dotdot = os.path.join(henv.bin, "..", "unlisted", "probe")
    listed_link = os.path.join(henv.bin, "probe-link")
    with contextlib.suppress(FileExistsError):
        os.symlink(henv.probe, listed_link)
    # python3 -c CODE report OUT ...: sys.argv[2] is OUT, the marker
    py = ["python3", "-c", "import sys; open(sys.argv[2], 'w').write('ran')"]
    return {
        "absolute": ([henv.installed, henv.unlisted_probe], henv.unlisted_probe),
        "bare-name-via-PATH": ([henv.installed, "evil"], "evil"),
        "dotdot": ([henv.installed, dotdot], dotdot),
        "relative": ([henv.installed, "bin/probe"], "bin/probe"),
        "dot-relative": ([henv.installed, "./probe"], "./probe"),
        "attacker-symlink": ([henv.installed, link], link),
        "attacker-program": ([henv.installed, evil], evil),
        "double-slash": ([henv.installed, henv.bin + "//probe"], henv.bin + "//probe"),
        "masquerade-unlisted-name": ([masq_evil], "unlisted-name"),
        "python": ([henv.installed] + py, "python3"),
    }, path_dir


@pytest.mark.parametrize("case", ["absolute", "bare-name-via-PATH", "dotdot", "relative",
                                  "dot-relative", "attacker-symlink", "attacker-program",
                                  "double-slash", "masquerade-unlisted-name", "python"])
def test_t09_not_allow_listed(henv, world, case):
    """Refused with 126 and exactly the message for that program; nothing ran
    (neither the named program, nor anything of the attacker's that PATH
    would have found first)."""
    attacker = henv.attacker_dir()
    cases, path_dir = _not_listed_cases(henv, attacker)
    argv, program = cases[case]
    report = henv.out_path()
    env = {"PATH": path_dir + ":" + attacker + ":" + henv.unlisted + ":/usr/bin:/bin"}
    r = world.a.run(argv + ["report", report, "--connect=%d" % world.port],
                    netns=world.private.path, env=env, cwd=henv.tdir if "relative" in case
                    else (henv.bin if case == "dot-relative" else None))
    assert r.returncode == hs.EXIT_NOT_USABLE, (r.returncode, r.stderr)
    if "relative" in case:
        want = "%s: name a program by absolute path or bare name" % program
    else:
        want = ("%s: not in the allow list; root may add its canonical path to %s"
                % (program, hs.ALLOW))
    assert hs.one_line(r.stderr) == "cgnetns-exec: " + want
    hs.assert_not_run(report)
    hs.assert_not_run(os.path.join(attacker, "evil-ran"))


def test_t09_markers_are_written_when_the_program_runs(henv, world):
    """Control for the test above: the programs it offers do write their
    markers when they run (python3's code, the attacker's PATH programs)."""
    attacker = henv.attacker_dir()
    cases, path_dir = _not_listed_cases(henv, attacker)
    report = henv.out_path()
    argv = cases["python"][0][1:] + ["report", report]
    r = henv.run(argv, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert os.path.exists(report)
    for name in ("python3", "unlisted-name", "evil"):
        r = henv.run([name], env={"PATH": path_dir + ":/usr/bin:/bin"})
        assert r.returncode == 0, r.stderr
        os.unlink(os.path.join(attacker, "evil-ran"))


def test_t09_listed_entry_that_is_a_symlink(henv, world, builds):
    """An allow-list entry through a symlink is not canonical: refused."""
    b = builds(name="l", pins=henv.private_pins)
    link = os.path.join(henv.bin, "probe-link")
    with contextlib.suppress(FileExistsError):
        os.symlink(henv.probe, link)
    henv.write_private_allow(henv.private_allow_text + link + "\n")
    try:
        report = henv.out_path()
        r = b.run([henv.variants["musl"], link, "report", report], netns=world.private.path)
        assert r.returncode == hs.EXIT_NOT_USABLE
        assert "symbolic link" in hs.one_line(r.stderr)
        hs.assert_not_run(report)
    finally:
        henv.write_private_allow(henv.private_allow_text)


def test_t09_masquerade_named_after_a_listed_program_runs_only_that(henv, world):
    """The attacker names a symlink "probe" and puts its own "probe" first in
    PATH: the listed probe runs, the attacker's never."""
    attacker = henv.attacker_dir()
    fake = fake_program(attacker, "probe-fake", os.path.join(attacker, "fake-ran"))
    os.rename(fake, os.path.join(attacker, "probe-bin"))
    masq = os.path.join(attacker, "m")
    os.mkdir(masq)
    os.symlink(henv.installed, os.path.join(masq, henv.probe_name))
    pathdir = os.path.join(attacker, "p")
    os.mkdir(pathdir)
    fake_program(pathdir, henv.probe_name, os.path.join(attacker, "fake-ran"))
    report = henv.out_path()
    r = world.a.run([os.path.join(masq, henv.probe_name), "report", report,
                     "--connect=%d" % world.port],
                    netns=world.private.path, env={"PATH": pathdir + ":/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    got = hs.read_report(report)
    hs.assert_joined(got, world.host_ns, world.parent_token)
    assert got["exe"] == henv.probe
    hs.assert_not_run(os.path.join(attacker, "fake-ran"))


# ---------------------------------------------------------------------------
# 10. Unsafe allow list or program (private variant: its own allow list)

@contextlib.contextmanager
def changed(henv, case):
    """Make one thing unsafe; yield (argv program, expected status, reason)."""
    etc = henv.etc
    allow = henv.private_allow
    prog_dir = os.path.join(henv.tdir, "prog-" + os.urandom(3).hex())
    os.mkdir(prog_dir)
    prog = os.path.join(prog_dir, "probe")
    shutil.copy(henv.probe, prog)
    henv.write_private_allow(henv.private_allow_text + prog + "\n")
    allow_cases = {
        "allow-0664": lambda: os.chmod(allow, 0o664),
        "allow-0646": lambda: os.chmod(allow, 0o646),
        "allow-owner-nobody": lambda: os.chown(allow, hs.NOBODY, hs.NOGROUP),
        "allow-dir-0775": lambda: os.chmod(etc, 0o775),
        "allow-dir-1777": lambda: os.chmod(etc, 0o1777),
        "allow-dir-owner-nobody": lambda: os.chown(etc, hs.NOBODY, hs.NOGROUP),
        "allow-grandparent-0777": lambda: os.chmod(os.path.dirname(etc), 0o777),
        "allow-symlink": lambda: (os.rename(allow, allow + ".real"),
                                  os.symlink(allow + ".real", allow)),
        "allow-missing": lambda: os.unlink(allow),
        "allow-directory": lambda: (os.unlink(allow), os.mkdir(allow)),
        "allow-bad-line": lambda: henv.write_private_allow(
            henv.private_allow_text + prog + "\n/usr/bin/../bin/x\n"),
        "allow-fifo": lambda: (os.unlink(allow), os.mkfifo(allow, 0o644)),
    }
    prog_cases = {
        "prog-0775": lambda: os.chmod(prog, 0o775),
        "prog-0757": lambda: os.chmod(prog, 0o757),
        "prog-owner-nobody": lambda: os.chown(prog, hs.NOBODY, hs.NOGROUP),
        "prog-dir-0775": lambda: os.chmod(prog_dir, 0o775),
        "prog-dir-1777": lambda: os.chmod(prog_dir, 0o1777),
        "prog-dir-owner-nobody": lambda: os.chown(prog_dir, hs.NOBODY, hs.NOGROUP),
        "prog-is-directory": lambda: (os.unlink(prog), os.mkdir(prog)),
    }
    try:
        if case in allow_cases:
            allow_cases[case]()
            yield prog, hs.EXIT_REFUSE, "allow list"
        else:
            prog_cases[case]()
            yield prog, hs.EXIT_NOT_USABLE, "not safe to run"
    finally:
        for p in (allow,):
            if os.path.islink(p) or os.path.isfile(p) and not os.path.isfile(allow + ".real"):
                pass
            if os.path.islink(p):
                os.unlink(p)
            elif os.path.isdir(p):
                os.rmdir(p)
            elif os.path.exists(p) and not os.path.isfile(p):
                os.unlink(p)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(allow + ".real")
        os.chmod(etc, 0o755)
        os.chown(etc, 0, 0)
        os.chmod(os.path.dirname(etc), 0o755)
        henv.write_private_allow(henv.private_allow_text)
        os.chown(allow, 0, 0)
        shutil.rmtree(prog_dir)


UNSAFE = ["allow-0664", "allow-0646", "allow-owner-nobody", "allow-dir-0775", "allow-dir-1777",
          "allow-dir-owner-nobody", "allow-grandparent-0777", "allow-symlink", "allow-missing",
          "allow-directory", "allow-bad-line", "allow-fifo", "prog-0775", "prog-0757",
          "prog-owner-nobody", "prog-dir-0775", "prog-dir-1777", "prog-dir-owner-nobody",
          "prog-is-directory"]


@pytest.mark.parametrize("case", UNSAFE)
def test_t10_unsafe_allow_list_or_program(henv, world, builds, case):
    b = builds(name="u", pins=henv.private_pins)
    with changed(henv, case) as (prog, status, reason):
        report = henv.out_path()
        r = b.run([henv.variants["musl"], prog, "report", report], netns=world.private.path)
        assert r.returncode == status, (r.returncode, r.stderr)
        assert reason in hs.one_line(r.stderr)
        hs.assert_not_run(report)
    # outside any build too: an unsafe policy refuses everything
    with changed(henv, case) as (prog, status, reason):
        report = henv.out_path()
        r = henv.run([henv.variants["musl"], prog, "report", report],
                     cgroup=henv.untagged_cgroup(), netns=world.private.path)
        assert r.returncode == status
        hs.assert_not_run(report)


def test_t10_allow_list_may_be_0600(henv, world, builds):
    b = builds(name="s", pins=henv.private_pins)
    os.chmod(henv.private_allow, 0o600)
    try:
        report = henv.out_path()
        r = b.run(world.probe_argv(report, henv.variants["musl"]), netns=world.private.path)
        assert r.returncode == 0, r.stderr
        hs.assert_joined(hs.read_report(report), world.host_ns, world.parent_token)
    finally:
        os.chmod(henv.private_allow, 0o644)


# ---------------------------------------------------------------------------
# 11. Inherited fds of privileged files

def test_t11_inherited_privileged_fds(henv, world, builds, netns, servers):
    """Root hands the attacker write fds of build B's and the root cgroup's
    cgroup.procs (as its stderr and as fd 7): the helper writes nothing into
    them, so neither it nor the program ends up in B or the root cgroup."""
    b, _, other = other_build(world, builds, netns, servers)
    b_procs = os.open(os.path.join(b.cgroup_path, "cgroup.procs"), os.O_WRONLY)
    root_procs = os.open(os.path.join(henv.cgroot, "cgroup.procs"), os.O_WRONLY)
    try:
        refused, report = henv.out_path("refused"), henv.out_path()
        # a refusal: its message goes to fd 2
        r = world.a.run([henv.installed, henv.unlisted_probe, "report", refused],
                        netns=world.private.path, stderr=b_procs, pass_fds=(root_procs,))
        assert r.returncode == hs.EXIT_NOT_USABLE
        hs.assert_not_run(refused)
        # a join
        r = world.a.run(world.probe_argv(report), netns=world.private.path,
                        stderr=b_procs, pass_fds=(root_procs,))
        assert r.returncode == 0
        got = hs.read_report(report)
        hs.assert_joined(got, world.host_ns, world.parent_token)
        assert got["cgroup"] == "/cgnetns/" + world.a.id
        fd = str(root_procs)
        assert got["fds"][fd]["target"] == os.path.join(henv.cgroot, "cgroup.procs")
        assert got["fds"]["2"]["target"] == os.path.join(b.cgroup_path, "cgroup.procs")
        with open(os.path.join(b.cgroup_path, "cgroup.procs")) as f:
            assert f.read() == ""
    finally:
        os.close(b_procs)
        os.close(root_procs)


# ---------------------------------------------------------------------------
# 12. Signals, SIGSTOP, ptrace, /proc/PID/mem, core dumps in the privileged window

def _sysctl_path(name):
    return "/proc/sys/" + name.replace(".", "/")


@contextlib.contextmanager
def sysctls(*settings):
    """Set (name, value) pairs in this order; the old values come back in the
    reverse order when the block ends, also when it fails."""
    done = []
    try:
        for name, value in settings:
            with open(_sysctl_path(name)) as f:
                old = f.read().rstrip("\n")
            with open(_sysctl_path(name), "w") as f:
                f.write(str(value))
            done.append((name, old))
        yield
    finally:
        errors = []
        for name, old in reversed(done):
            try:
                with open(_sysctl_path(name), "w") as f:
                    f.write(old)
            except OSError as e:
                errors.append(e)
        if errors:
            raise errors[0]


@contextlib.contextmanager
def core_dumps(henv, suid_dumpable):
    """Where the kernel dumps cores of set-user-ID processes too:
    fs.suid_dumpable=N (1: as the process is, 2: root's alone) and an absolute
    kernel.core_pattern into a directory of the test (with 2 a relative
    pattern makes the kernel refuse such dumps itself).  Yields the
    directory; the sysctls come back and the directory goes, also on failure."""
    d = os.path.join(henv.tdir, "cores-" + os.urandom(4).hex())
    os.mkdir(d)
    os.chmod(d, 0o1777)
    try:
        # the pattern first: suid_dumpable=2 with a relative one is refused
        with sysctls(("kernel.core_pattern", d + "/core.%e.%p"),
                     ("fs.suid_dumpable", suid_dumpable)):
            yield d
    finally:
        shutil.rmtree(d)


def _cores_in(d):
    return sorted(n for n in os.listdir(d) if n.startswith("core"))


@pytest.mark.parametrize("mode", ["cont", "kill", "abort"])
def test_t12_attacks_during_privileged_window(henv, world, mode):
    """The attacker stops the helper while its effective uid is 0 (checked in
    /proc/PID/status), then tries ptrace attach/seize, /proc/PID/mem,
    environ, fd, cwd and process_vm_readv: all refused.  Then it lets it go
    on (it joins A, correctly), kills it (nothing runs) or sends SIGABRT.

    Run with fs.suid_dumpable=2 and an absolute core_pattern, where the
    kernel dumps set-user-ID processes.  What refuses the attacks then is
    the kernel's credential rule, whatever the helper's dumpable flag says:
    __ptrace_may_access() wants the caller's uid equal to the target's real,
    effective and saved uid (0 here) before it looks at dumpable at all.
    The race stops the helper as soon as the exec made it root, before its
    first instruction and so before its own PR_SET_DUMPABLE: the SIGABRT may
    leave a core, and it must be root's alone (SUID_DUMP_ROOT: uid 0, mode
    0600, in root's directory), never in the attacker's.  The helper's own
    prctl is tested by test_t12_no_core_dump_once_privileged below."""
    attacker = henv.attacker_dir()
    result, report = henv.out_path("race"), henv.out_path()
    with core_dumps(henv, 2) as cores:
        r = world.a.run([henv.probe, "launch", henv.out_path("launch"), "--core=unlimited", "--",
                         henv.probe, "race", result, mode, "--"] + world.probe_argv(report),
                        netns=world.private.path, cwd=attacker, timeout=120)
        dumped = {n: os.stat(os.path.join(cores, n)) for n in _cores_in(cores)}
    assert r.returncode == 0, r.stderr
    with open(result) as f:
        race = json.load(f)
    assert race["caught"] == 1, race
    for attack in ("attach", "seize", "mem", "environ", "fd", "cwd", "vm_readv"):
        assert race[attack] not in (0, -1), (attack, race)
    assert not _cores_in(attacker)
    if mode == "cont":
        assert race["exited"] == 1 and race["status"] == 0
        hs.assert_joined(hs.read_report(report), world.host_ns, world.parent_token)
    else:
        assert race["signaled"] == 1
        assert race["signal"] == (signal.SIGKILL if mode == "kill" else signal.SIGABRT)
        hs.assert_not_run(report)
        assert race["core"] == (1 if dumped else 0), (race, dumped)
        for name, st in dumped.items():
            assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600, \
                (name, st.st_uid, oct(st.st_mode))
    if mode != "abort":
        assert not dumped


BLOCKER_C = r"""
/* A set-user-ID root program WITHOUT the helper's PR_SET_DUMPABLE that blocks
 * in write(2) on fd 2, as the helper does on a full stderr pipe. */
#include <string.h>
#include <unistd.h>
int main(void)
{
    static char msg[256];
    memset(msg, 'x', sizeof msg - 1);
    msg[sizeof msg - 1] = '\n';
    return write(2, msg, sizeof msg) < 0;
}
"""


@pytest.fixture(scope="module")
def setuid_blocker(henv):
    d = os.path.join(henv.tdir, "blocker-" + os.urandom(3).hex())
    os.mkdir(d, 0o755)
    try:
        src, exe = os.path.join(d, "blocker.c"), os.path.join(d, "blocker")
        with open(src, "w") as f:
            f.write(BLOCKER_C)
        hs.sh(["gcc", "-O1", "-Wall", "-Werror", "-o", exe, src])
        os.chown(exe, 0, 0)
        os.chmod(exe, 0o4755)
        yield exe
    finally:
        shutil.rmtree(d)


def _full_pipe():
    """A pipe whose buffer is full: a write to its write end blocks."""
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETFL, os.O_NONBLOCK)
    for size in (65536, 4096, 1):
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(w, b"f" * size)
    fcntl.fcntl(w, fcntl.F_SETFL, 0)
    return r, w


def _abort_while_blocked(henv, argv, exe, cwd, cgroup=None, netns=None):
    """Run argv as nobody (RLIMIT_CORE unlimited) with a full pipe as its
    stderr; once `exe` (the resolved binary) is blocked in write(2, ...),
    the attacker (nobody) sends it SIGABRT.  Returns (wait status, the
    effective uid it had while blocked)."""
    cmd = ["prlimit", "--core=unlimited", "--", "setpriv", "--reuid=65534", "--regid=65534",
           "--clear-groups", "--"] + list(argv)
    if netns:
        cmd = ["nsenter", "--net=" + netns, "--"] + cmd
    if cgroup:
        cmd = ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" || exit 99; exec "$@"', cgroup] + cmd
    r, w = _full_pipe()
    p = None
    try:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=w,
                             cwd=cwd, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        deadline = time.monotonic() + 30
        while True:
            assert p.poll() is None, "exited (%s) before blocking in write(2)" % p.returncode
            assert time.monotonic() < deadline, "never blocked in write(2)"
            with contextlib.suppress(OSError):
                if (os.path.realpath("/proc/%d/exe" % p.pid) == os.path.realpath(exe) and
                        open("/proc/%d/syscall" % p.pid).read().split()[:2] == ["1", "0x2"]):
                    break
            time.sleep(0.005)
        with open("/proc/%d/status" % p.pid) as f:
            euid = int([ln for ln in f if ln.startswith("Uid:")][0].split()[2])
        hs.sh(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
               "kill", "-ABRT", str(p.pid)])
        _, status = os.waitpid(p.pid, 0)
        p.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        return status, euid
    finally:
        if p is not None and p.returncode is None:
            p.kill()
            p.wait()
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("suid_dumpable", [1, 2])
@pytest.mark.parametrize("helper", ["installed", "musl", "glibc"])
def test_t12_no_core_dump_once_privileged(henv, world, builds, setuid_blocker, helper,
                                          suid_dumpable):
    """The helper's own PR_SET_DUMPABLE, alone.  With fs.suid_dumpable 1 or 2
    and an absolute core_pattern the kernel dumps set-user-ID processes: the
    control, a set-user-ID root program without the prctl, blocked as below,
    dumps a core.  The attacker makes the helper block while root, after it
    has read root's files: its stderr is a full pipe, so the refusal message
    cannot be written (an unlisted program: after the allow list; a
    namespace id that differs: after the tag, the cgroup and the pin).
    SIGABRT then: no core anywhere, nothing run."""
    exe, b = _build_for(henv, world, builds, helper, "core")
    binary = henv.helper if helper == "installed" else exe
    attacker = henv.attacker_dir()
    with core_dumps(henv, suid_dumpable) as cores:
        status, euid = _abort_while_blocked(henv, [setuid_blocker], setuid_blocker, attacker)
        assert euid == 0 and os.WIFSIGNALED(status) and os.WCOREDUMP(status), status
        assert len(_cores_in(cores)) == 1  # the control dumped
        for n in _cores_in(cores):
            os.unlink(os.path.join(cores, n))

        report = henv.out_path()
        status, euid = _abort_while_blocked(henv, [exe, henv.unlisted_probe, "report", report],
                                            binary, attacker, netns=world.private.path)
        assert euid == 0
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGABRT, status
        assert not os.WCOREDUMP(status) and _cores_in(cores) == []
        hs.assert_not_run(report)

        dev, ino, nsid = b.identity
        b.set_tag(hs.tag_value(b.id, dev, ino, nsid + 1))
        status, euid = _abort_while_blocked(henv, world.probe_argv(report, exe), binary, attacker,
                                            cgroup=b.cgroup_path, netns=world.private.path)
        assert euid == 0
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGABRT, status
        assert not os.WCOREDUMP(status) and _cores_in(cores) == []
        hs.assert_not_run(report)
    assert not _cores_in(attacker)


def test_t12_core_dump_control(henv):
    """Control for the test above: an ordinary process aborted the same way
    does dump core here, so the absence above means something."""
    with open("/proc/sys/kernel/core_pattern") as f:
        pattern = f.read().strip()
    attacker = henv.attacker_dir()
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
                        henv.probe, "launch", henv.out_path("launch"), "--core=unlimited", "--",
                        "/bin/sh", "-c", "kill -ABRT $$"], cwd=attacker,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == -signal.SIGABRT
    if not pattern.startswith("|"):
        assert [n for n in os.listdir(attacker) if n.startswith("core")], pattern


# ---------------------------------------------------------------------------
# 13. No privilege: no_new_privs, nosuid mount, ptraced exec, user namespace

def _nosuid_copy(henv):
    d = os.path.join(henv.tdir, "nosuid")
    if not os.path.ismount(d):
        os.makedirs(d, exist_ok=True)
        hs.sh(["mount", "-t", "tmpfs", "-o", "nosuid,mode=0755", "cgnetns-test", d])
    p = os.path.join(d, "cgnetns-exec")
    if not os.path.exists(p):
        shutil.copy(henv.variants["musl"], p)
        os.chmod(p, 0o4755)
    return p


def _not_setuid_copy(henv):
    d = os.path.join(henv.tdir, "v", "notsetuid")
    p = os.path.join(d, "cgnetns-exec")
    if not os.path.exists(p):
        os.makedirs(d, exist_ok=True)
        shutil.copy(henv.variants["musl"], p)
        os.chmod(p, 0o755)
    return p


NO_PRIVILEGE = ["no_new_privs", "nosuid-mount", "ptrace", "user-namespace", "not-setuid",
                "securebit-noroot"]


def _no_privilege_run(henv, world, build, helper, case, report):
    kw, pre = {}, []
    if case == "no_new_privs":
        kw["nnp"] = True
    elif case == "ptrace":
        pre = ["strace", "-f", "-qq", "-o", "/dev/null", "--"]
    elif case == "user-namespace":
        pre = ["unshare", "-Ur", "--"]
    argv = world.probe_argv(report, helper, "--try-root")
    if case == "securebit-noroot":
        return build.run(["setpriv", "--securebits=+noroot,+noroot_locked", "--reuid=65534",
                          "--regid=65534", "--clear-groups", "--"] + argv,
                         netns=world.private.path, user=None)
    return build.run(argv, netns=world.private.path, pre=pre, **kw)


@pytest.mark.parametrize("case", NO_PRIVILEGE)
def test_t13_no_privilege_no_join(henv, world, builds, case):
    """Private variant (its broker socket has no listener): no privilege is
    gained, nothing is joined, one line says why."""
    b = builds(name="np", pins=henv.private_pins)
    helper = henv.variants["musl"]
    if case == "nosuid-mount":
        helper = _nosuid_copy(henv)
    elif case == "not-setuid":
        helper = _not_setuid_copy(henv)
    report = henv.out_path()
    r = _no_privilege_run(henv, world, b, helper, case, report)
    assert r.returncode == 0, r.stderr
    assert NOTICE in hs.one_line(r.stderr)
    got = hs.read_report(report)
    hs.assert_not_joined(got, world.private, world.private_token,
                         unprivileged=case != "user-namespace")
    if case != "user-namespace":
        assert got["uids"] == [hs.NOBODY] * 3
        assert set(got["regain"].values()) == {1}


@pytest.mark.parametrize("case", ["no_new_privs", "ptrace", "securebit-noroot"])
def test_t13_installed_no_privilege_gains_nothing(henv, world, case):
    """The installed helper, whether or not a broker (cgnetnsd) runs here:
    either the broker path joined A's namespace for the caller, with the
    caller's ids and no capability, or nothing was joined and one line says
    so.  Never another namespace, never privilege."""
    report = henv.out_path()
    r = _no_privilege_run(henv, world, world.a, henv.installed, case, report)
    assert r.returncode == 0, r.stderr
    got = hs.read_report(report)
    assert got is not None
    assert got["uids"] == [hs.NOBODY] * 3 and got["gids"] == [hs.NOGROUP] * 3
    assert got["status"]["CapEff"] == got["status"]["CapPrm"] == "0000000000000000"
    assert set(got["regain"].values()) == {1}
    if got["connect"] == {"token": world.parent_token}:
        # through a broker: the program stays in its own namespace, its
        # socket was minted in the approved one
        hs.assert_minted(got, world.private, world.parent_token)
    else:
        assert NOTICE in hs.one_line(r.stderr)
        hs.assert_not_joined(got, world.private, world.private_token)


# ---------------------------------------------------------------------------
# 14. After the drop

def test_t14_after_the_drop(henv, world):
    """Regaining root fails, no capability is left, no fd of the helper leaks,
    the caller's environment (LD_PRELOAD included) and fds arrive."""
    launched, report = henv.out_path("launch"), henv.out_path()
    env = {"PATH": "/usr/bin:/bin", "LD_PRELOAD": henv.preload, "TMPDIR": "/x"}
    r = world.a.run([henv.probe, "launch", launched, "--"]
                    + world.probe_argv(report, None, "--try-root"),
                    netns=world.private.path, env=env, groups=[4242])
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    got, want = hs.read_report(report), hs.read_report(launched)
    hs.assert_joined(got, world.host_ns, world.parent_token)
    assert got["regain"] == {"setuid0": 1, "seteuid0": 1, "setresuid0": 1, "setgid0": 1,
                             "setgroups0": 1}
    for cap in ("CapEff", "CapPrm", "CapAmb", "CapInh"):
        assert got["status"][cap] == "0000000000000000", cap
    assert got["status"]["Uid"] == "65534 65534 65534 65534"
    assert got["status"]["Gid"] == "65534 65534 65534 65534"
    assert got["groups"] == [4242]
    assert got["fds"] == want["fds"]
    assert got["env_b"] == want["env_b"] and got["preloaded"] == 1


# The drop made to fail halfway.  Each check of drop.c is reached, and named
# exactly: through a state the kernel really produces where there is one
# (securebits, bounding set, as an ancestor of the caller can leave them),
# else through a root ptrace tracer that changes one system call's result in
# the helper (a kernel or LSM that lies, the only way to reach those
# checks).  The program's report is the marker: it must not exist.

TRACER_C = r"""
/* tracer OUT [--uid=U --gid=G [--group=G]...] [--bound-drop=CAP]...
 *            [--securebits=N] [--tracer-uid=U] [--fault=NR:K:skip|ret:RET]...
 *            -- PROG [ARG...]
 * Runs PROG as a traced child (PTRACE_TRACEME while root, so that a
 * set-user-ID exec keeps its effect: the kernel checks the tracer's
 * CAP_SYS_PTRACE), after dropping CAPs from the bounding set, setting the
 * securebits and the ids (in that order).  With --tracer-uid the tracer
 * itself first becomes that user (an unprivileged tracer).  Writes JSON to
 * OUT: /proc/PID/status fields at each exec event (PROG's image, then the
 * image PROG executes, where tracing ends) and at the entry of every execve
 * and execveat that PROG's image makes ("exec_calls": what it holds just
 * before exec).  A fault changes the K-th call of syscall NR in PROG's
 * image: "skip" does not run it and returns RET, "ret" runs it and returns
 * RET (RET as the kernel returns it: -errno for an error). */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAXF 8
static struct fault { long nr; int k, seen, applied, skip; long ret; } faults[MAXF];
static int nfaults;
static FILE *out;

static void snapshot(pid_t pid)
{
    static const char *keys[] = { "Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff",
                      "CapBnd", "CapAmb", "NoNewPrivs" };
    char p[64], line[4096];
    snprintf(p, sizeof p, "/proc/%d/status", (int)pid);
    FILE *f = fopen(p, "re");
    int first = 1;
    fputc('{', out);
    while (f && fgets(line, sizeof line, f)) {
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
            size_t k = strlen(keys[i]);
            if (strncmp(line, keys[i], k) || line[k] != ':')
                continue;
            char *v = line + k + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            v[strcspn(v, "\n")] = 0;
            for (char *c = v; *c; c++)
                if (*c == '\t')
                    *c = ' ';
            fprintf(out, "%s\"%s\": \"%s\"", first ? "" : ", ", keys[i], v);
            first = 0;
        }
    }
    if (f)
        fclose(f);
    fputc('}', out);
}

int main(int argc, char **argv)
{
    long uid = -1, gid = -1, tracer_uid = -1, securebits = -1;
    gid_t groups[64];
    int ngroups = 0, nbound = 0, bound[64], i;
    if (argc < 3) {
        fprintf(stderr, "usage: tracer OUT [options] -- PROG [ARG...]\n");
        return 2;
    }
    const char *outpath = argv[1];
    for (i = 2; i < argc && strcmp(argv[i], "--"); i++) {
        const char *a = argv[i];
        if (!strncmp(a, "--uid=", 6)) uid = atol(a + 6);
        else if (!strncmp(a, "--gid=", 6)) gid = atol(a + 6);
        else if (!strncmp(a, "--group=", 8) && ngroups < 64) groups[ngroups++] = (gid_t)atol(a + 8);
        else if (!strncmp(a, "--bound-drop=", 13) && nbound < 64) bound[nbound++] = atoi(a + 13);
        else if (!strncmp(a, "--securebits=", 13)) securebits = strtol(a + 13, NULL, 0);
        else if (!strncmp(a, "--tracer-uid=", 13)) tracer_uid = atol(a + 13);
        else if (!strncmp(a, "--fault=", 8) && nfaults < MAXF) {
            /* NR:K:skip|ret:RET: the K-th call of syscall NR in the first image */
            char act[8] = "";
            struct fault *f = &faults[nfaults++];
            if (sscanf(a + 8, "%ld:%d:%7[a-z]:%ld", &f->nr, &f->k, act, &f->ret) != 4)
                return 2;
            f->skip = !strcmp(act, "skip");
        } else {
            fprintf(stderr, "tracer: bad option %s\n", a);
            return 2;
        }
    }
    if (i + 1 >= argc)
        return 2;
    char **cmd = argv + i + 1;
    out = fopen(outpath, "we");
    if (!out)
        return 2;
    if (tracer_uid >= 0 && (setgroups(0, NULL) || setresgid(tracer_uid, tracer_uid, tracer_uid) ||
                setresuid(tracer_uid, tracer_uid, tracer_uid))) {
        perror("tracer: drop");
        return 2;
    }
    pid_t pid = fork();
    if (pid < 0)
        return 2;
    if (pid == 0) {
        if (ptrace(PTRACE_TRACEME, 0, 0, 0) < 0)
            _exit(120);
        raise(SIGSTOP);
        for (int b = 0; b < nbound; b++)
            if (prctl(PR_CAPBSET_DROP, bound[b], 0, 0, 0) < 0)
                _exit(121);
        if (securebits >= 0 && prctl(PR_SET_SECUREBITS, securebits, 0, 0, 0) < 0)
            _exit(122);
        if (gid >= 0 && (setgroups((size_t)ngroups, groups) || setresgid(gid, gid, gid)))
            _exit(123);
        if (uid >= 0 && setresuid(uid, uid, uid))
            _exit(124);
        execv(cmd[0], cmd);
        _exit(127);
    }
    fprintf(out, "{\"tracer_uid\": %d, \"execs\": [", (int)geteuid());
    int st, execs = 0, nexec_calls = 0, in_call = 0;
    long cur_nr = -1;
    struct fault *pending = NULL;
    if (waitpid(pid, &st, 0) != pid || !WIFSTOPPED(st))
        return 3;
    ptrace(PTRACE_SETOPTIONS, pid, 0,
           PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACEEXEC | PTRACE_O_EXITKILL);
    char calls[65536] = "";
    size_t clen = 0;
    int sig = 0;
    for (;;) {
        if (ptrace(PTRACE_SYSCALL, pid, 0, sig) < 0)
            break;
        sig = 0;
        if (waitpid(pid, &st, 0) != pid)
            break;
        if (WIFEXITED(st) || WIFSIGNALED(st))
            break;
        if (!WIFSTOPPED(st))
            continue;
        if (st >> 8 == (SIGTRAP | (PTRACE_EVENT_EXEC << 8))) {
            fprintf(out, "%s", execs ? ", " : "");
            snapshot(pid);
            execs++;
            if (execs == 2) {
                /* the program: let it run untraced */
                ptrace(PTRACE_DETACH, pid, 0, 0);
                while (waitpid(pid, &st, 0) == pid && !WIFEXITED(st) && !WIFSIGNALED(st))
                    ;
                break;
            }
            continue;
        }
        if (WSTOPSIG(st) == (SIGTRAP | 0x80)) {
            struct __ptrace_syscall_info info;
            if (ptrace(PTRACE_GET_SYSCALL_INFO, pid, sizeof info, &info) <= 0)
                return 4;
            if (info.op == PTRACE_SYSCALL_INFO_ENTRY) {
                cur_nr = (long)info.entry.nr;
                in_call = 1;
                if (execs >= 1 && (cur_nr == 59 || cur_nr == 322)) {
                    /* the image is about to exec: what it holds now */
                    FILE *keep = out;
                    char *buf = NULL;
                    size_t blen = 0;
                    out = open_memstream(&buf, &blen);
                    snapshot(pid);
                    fclose(out);
                    out = keep;
                    clen += (size_t)snprintf(calls + clen, sizeof calls - clen,
                        "%s{\"nr\": %ld, \"status\": %s}", nexec_calls++ ? ", " : "",
                        cur_nr, buf);
                    free(buf);
                }
                if (execs == 1) {
                    for (int f = 0; f < nfaults; f++) {
                        if (faults[f].nr != cur_nr || ++faults[f].seen != faults[f].k)
                            continue;
                        pending = &faults[f];
                        if (faults[f].skip) {
                            struct user_regs_struct r;
                            ptrace(PTRACE_GETREGS, pid, 0, &r);
                            r.orig_rax = (unsigned long long)-1;
                            ptrace(PTRACE_SETREGS, pid, 0, &r);
                        }
                    }
                }
            } else if (info.op == PTRACE_SYSCALL_INFO_EXIT && in_call) {
                in_call = 0;
                if (pending) {
                    struct user_regs_struct r;
                    ptrace(PTRACE_GETREGS, pid, 0, &r);
                    r.rax = (unsigned long long)pending->ret;
                    ptrace(PTRACE_SETREGS, pid, 0, &r);
                    pending->applied++;
                    pending = NULL;
                }
            }
            continue;
        }
        sig = WSTOPSIG(st) == SIGTRAP ? 0 : WSTOPSIG(st);
    }
    fprintf(out, "], \"exec_calls\": [%s], \"faults\": [", calls);
    for (int f = 0; f < nfaults; f++)
        fprintf(out, "%s{\"nr\": %ld, \"k\": %d, \"seen\": %d, \"applied\": %d}", f ? ", " : "",
            faults[f].nr, faults[f].k, faults[f].seen, faults[f].applied);
    fprintf(out, "], \"exited\": %d, \"status\": %d, \"signaled\": %d, \"signal\": %d}\n",
        WIFEXITED(st), WIFEXITED(st) ? WEXITSTATUS(st) : -1, WIFSIGNALED(st),
        WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    fclose(out);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
"""


@pytest.fixture(scope="module")
def tracer(henv):
    d = os.path.join(henv.tdir, "tracer-" + os.urandom(3).hex())
    os.mkdir(d, 0o755)
    try:
        src, exe = os.path.join(d, "tracer.c"), os.path.join(d, "tracer")
        with open(src, "w") as f:
            f.write(TRACER_C)
        hs.sh(["gcc", "-O1", "-Wall", "-Werror", "-o", exe, src])
        yield exe
    finally:
        shutil.rmtree(d)


SECBIT_NO_SETUID_FIXUP = 1 << 2
CAP_NUMBERS = {"setgid": 6, "setuid": 7, "sys_admin": 21}
# x86_64 system call numbers
SYS = {"getgroups": 115, "setgroups": 116, "setresuid": 117, "setresgid": 119, "setuid": 105,
       "setgid": 106, "capget": 125, "execve": 59, "execveat": 322}
ZERO_CAPS = "0000000000000000"


def _helper_and_build(henv, world, builds, helper, name):
    """(what the caller runs, the set-user-ID binary itself, a build approving
    the host namespace) for the installed helper or a private variant."""
    exe, b = _build_for(henv, world, builds, helper, name)
    return exe, (henv.helper if helper == "installed" else exe), b


def _traced(henv, build, world, tracer, binary, argv, opts=(), groups=(4242,)):
    """Run binary argv under the root tracer in build, in the private
    namespace, the traced child dropped to nobody; (result, trace)."""
    out = henv.out_path("trace")
    cmd = [tracer, out] + list(opts)
    if not any(o.startswith("--tracer-uid=") for o in opts):
        cmd += ["--uid=%d" % hs.NOBODY, "--gid=%d" % hs.NOGROUP]
        cmd += ["--group=%d" % g for g in groups]
    r = build.run(cmd + ["--", binary] + list(argv), netns=world.private.path, user=None)
    with open(out) as f:
        trace = json.load(f)
    return r, trace


def _setpriv_opts_for_tracer(setpriv_opts):
    """The tracer's options for the same securebits and bounding set."""
    opts = []
    for o in setpriv_opts:
        if o == "--securebits=+no_setuid_fixup":
            opts.append("--securebits=%d" % SECBIT_NO_SETUID_FIXUP)
        elif o.startswith("--bounding-set="):
            opts += ["--bound-drop=%d" % CAP_NUMBERS[c.lstrip("-")]
                     for c in o.split("=", 1)[1].split(",")]
        else:
            raise AssertionError(o)
    return opts


DROP_STATES = {
    # SECBIT_NO_SETUID_FIXUP: setresuid() keeps every capability, so
    # setuid(0) works again: the first check after the ids says so
    "no_setuid_fixup": (["--securebits=+no_setuid_fixup"], "root could be regained"),
    # the same without CAP_SETUID in the bounding set: setuid(0) fails, the
    # capabilities are still there
    "no_setuid_fixup-without-setuid": (
        ["--securebits=+no_setuid_fixup", "--bounding-set=-setuid"], "capabilities left"),
    "no_setuid_fixup-without-setuid-setgid": (
        ["--securebits=+no_setuid_fixup", "--bounding-set=-setuid,-setgid"],
        "capabilities left"),
    # without CAP_SYS_ADMIN: not privileged, but the set-user-ID exec is
    # given back through the same drop and the same checks
    "no_setuid_fixup-unprivileged": (
        ["--securebits=+no_setuid_fixup", "--bounding-set=-sys_admin"], "root could be regained"),
    "no_setuid_fixup-unprivileged-without-setuid": (
        ["--securebits=+no_setuid_fixup", "--bounding-set=-sys_admin,-setuid"],
        "capabilities left"),
}


@pytest.mark.parametrize("case", sorted(DROP_STATES))
@pytest.mark.parametrize("helper", ["installed", "musl", "glibc"])
def test_t14_drop_checks_refuse_what_the_kernel_leaves(henv, world, builds, tracer, helper, case):
    """Securebits and a bounding set that an ancestor of the caller left: the
    helper refuses with exactly the check that failed, the program does not
    run, and under the root tracer its image never even calls exec."""
    opts, reason = DROP_STATES[case]
    exe, binary, b = _helper_and_build(henv, world, builds, helper, "drop")
    want = "cgnetns-exec: privilege drop failed: " + reason
    report = henv.out_path()
    r = b.run(["setpriv"] + opts + ["--reuid=65534", "--regid=65534", "--clear-groups", "--"]
              + world.probe_argv(report, exe), netns=world.private.path, user=None)
    assert r.returncode == hs.EXIT_REFUSE, r.stderr
    assert hs.one_line(r.stderr) == want
    hs.assert_not_run(report)
    r, trace = _traced(henv, b, world, tracer, binary, world.probe_argv(report)[1:],
                       _setpriv_opts_for_tracer(opts))
    assert r.returncode == hs.EXIT_REFUSE, r.stderr
    assert hs.one_line(r.stderr) == want
    assert trace["exited"] == 1 and trace["status"] == hs.EXIT_REFUSE
    assert [e["Uid"] for e in trace["execs"]] == ["65534 0 0 0"]  # set-user-ID took effect
    assert trace["exec_calls"] == []
    hs.assert_not_run(report)


DROP_FAULTS = {
    # name: (syscall, K-th call in the helper, skip|ret, return value, message)
    "setgroups-einval": ("setgroups", 1, "skip", -22, "setgroups: Invalid argument"),
    "setresgid-eperm": ("setresgid", 1, "skip", -1, "setresgid: Operation not permitted"),
    "setresuid-eperm": ("setresuid", 1, "skip", -1, "setresuid: Operation not permitted"),
    "setresuid-does-nothing": ("setresuid", 1, "skip", 0,
                               "privilege drop failed: ids not the caller's"),
    "groups-differ": ("getgroups", 2, "ret", 2, "privilege drop failed: groups not the caller's"),
    "setuid0-succeeds": ("setuid", 1, "ret", 0, "privilege drop failed: root could be regained"),
    "seteuid0-succeeds": ("setresuid", 2, "ret", 0,
                          "privilege drop failed: root could be regained"),
    "setresuid000-succeeds": ("setresuid", 3, "ret", 0,
                              "privilege drop failed: root could be regained"),
    "capget-fails": ("capget", 2, "skip", -1, "capget: Operation not permitted"),
    "setgid0-succeeds": ("setgid", 1, "ret", 0,
                         "privilege drop failed: group root could be regained"),
    "setegid0-succeeds": ("setresgid", 2, "ret", 0,
                          "privilege drop failed: group root could be regained"),
}


@pytest.mark.parametrize("fault", sorted(DROP_FAULTS))
@pytest.mark.parametrize("helper", ["installed", "musl", "glibc"])
def test_t14_drop_checks_refuse_a_lying_kernel(henv, world, builds, tracer, helper, fault):
    """One system call of the drop or of its verification answers wrongly
    (the root tracer changes its result; the caller, nobody, has the
    supplementary group 4242): refused with exactly that check's message,
    nothing run, no exec called.  (The K-th call counts the helper's calls:
    seteuid() and setegid() are setresuid()/setresgid() underneath, capget()
    first served have_privilege().)"""
    name, k, how, ret, message = DROP_FAULTS[fault]
    exe, binary, b = _helper_and_build(henv, world, builds, helper, "fault")
    report = henv.out_path()
    r, trace = _traced(henv, b, world, tracer, binary, world.probe_argv(report)[1:],
                       ["--fault=%d:%d:%s:%d" % (SYS[name], k, how, ret)])
    assert r.returncode == hs.EXIT_REFUSE, r.stderr
    assert hs.one_line(r.stderr) == "cgnetns-exec: " + message
    assert trace["faults"] == [{"nr": SYS[name], "k": k, "seen": k, "applied": 1}], trace
    assert [e["Uid"] for e in trace["execs"]] == ["65534 0 0 0"]
    assert trace["exec_calls"] == []
    hs.assert_not_run(report)


def _assert_caller_without_privilege(status, groups=("4242",)):
    assert status["Uid"] == "65534 65534 65534 65534", status
    assert status["Gid"] == "65534 65534 65534 65534", status
    assert status["Groups"].split() == list(groups), status
    for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert status[cap] == ZERO_CAPS, (cap, status)


@pytest.mark.parametrize("helper", ["installed", "musl", "glibc"])
def test_t14_capabilities_just_before_the_exec(henv, world, builds, tracer, helper):
    """A root tracer (CAP_SYS_PTRACE: the set-user-ID exec keeps its effect,
    checked) stops the helper at the entry of its exec system call: it holds
    the caller's ids and groups and no capability at all, in the approved
    namespace; the program's image, just executed, the same."""
    exe, binary, b = _helper_and_build(henv, world, builds, helper, "caps")
    report = henv.out_path()
    r, trace = _traced(henv, b, world, tracer, binary, world.probe_argv(report, exe)[1:])
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    helper_image, program_image = trace["execs"]
    assert helper_image["Uid"] == "65534 0 0 0"
    assert helper_image["CapEff"] != ZERO_CAPS and helper_image["CapPrm"] != ZERO_CAPS
    assert [c["nr"] for c in trace["exec_calls"]] == [SYS["execveat"]]
    _assert_caller_without_privilege(trace["exec_calls"][0]["status"])
    _assert_caller_without_privilege(program_image)
    got = hs.read_report(report)
    hs.assert_joined(got, world.host_ns, world.parent_token)
    assert got["groups"] == [4242]


def test_t14_unprivileged_tracer_cancels_set_user_id(henv, world, builds, tracer):
    """Control for the tests above: traced by nobody (no CAP_SYS_PTRACE), the
    kernel does not give the set-user-ID effect; the helper (private variant:
    no broker answers) says so and runs the program unchanged."""
    b = builds(name="utr", pins=henv.private_pins)
    report = henv.out_path()
    r, trace = _traced(henv, b, world, tracer, henv.variants["musl"],
                       world.probe_argv(report)[1:], ["--tracer-uid=%d" % hs.NOBODY])
    assert r.returncode == 0, r.stderr
    assert NOTICE in hs.one_line(r.stderr)
    assert trace["tracer_uid"] == hs.NOBODY
    assert trace["execs"][0]["Uid"] == "65534 65534 65534 65534"
    assert trace["execs"][0]["CapEff"] == ZERO_CAPS
    hs.assert_not_joined(hs.read_report(report), world.private, world.private_token)


@pytest.mark.parametrize("bounding", ["-setuid", "-setgid", "-setuid,-setgid"])
@pytest.mark.parametrize("helper", ["installed", "musl", "glibc"])
def test_t14_drop_needs_neither_setuid_nor_setgid(henv, world, builds, tracer, helper, bounding):
    """Without CAP_SETUID and/or CAP_SETGID in the bounding set (root's
    container, say): the set-user-ID exec still gives root and CAP_SYS_ADMIN,
    and the drop still works, because its targets are the caller's own real
    ids (which need no capability), and a setgroups() refused with EPERM is
    checked by reading the groups back.  The program runs joined, as the
    caller, without capability, unable to regain root; the same just
    before its exec under the root tracer."""
    exe, binary, b = _helper_and_build(henv, world, builds, helper, "bnd")
    opts = ["--bounding-set=" + bounding]
    report = henv.out_path()
    r = b.run(["setpriv"] + opts + ["--reuid=65534", "--regid=65534", "--groups=4242", "--"]
              + world.probe_argv(report, exe, "--try-root"), netns=world.private.path, user=None)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    got = hs.read_report(report)
    hs.assert_joined(got, world.host_ns, world.parent_token)
    assert got["uids"] == [hs.NOBODY] * 3 and got["gids"] == [hs.NOGROUP] * 3
    assert got["groups"] == [4242]
    assert got["status"]["CapEff"] == got["status"]["CapPrm"] == ZERO_CAPS
    assert set(got["regain"].values()) == {1}
    os.unlink(report)
    r, trace = _traced(henv, b, world, tracer, binary, world.probe_argv(report)[1:],
                       _setpriv_opts_for_tracer(opts))
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert trace["execs"][0]["Uid"] == "65534 0 0 0"
    _assert_caller_without_privilege(trace["exec_calls"][0]["status"])
    hs.assert_joined(hs.read_report(report), world.host_ns, world.parent_token)


def test_t14_keep_caps_left_by_an_ancestor(henv, world, builds, tracer):
    """SECBIT_KEEP_CAPS (locked) set by a root ancestor before it became
    nobody: the exec clears it (setpriv refuses to set it for that reason),
    so the drop still clears every capability: none just before the exec."""
    b = builds(name="kc", pins=henv.private_pins)
    report = henv.out_path()
    keep_caps, keep_caps_locked = 1 << 4, 1 << 5
    r, trace = _traced(henv, b, world, tracer, henv.variants["musl"],
                       world.probe_argv(report)[1:],
                       ["--securebits=%d" % (keep_caps | keep_caps_locked)])
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert trace["execs"][0]["Uid"] == "65534 0 0 0"
    _assert_caller_without_privilege(trace["exec_calls"][0]["status"])
    _assert_caller_without_privilege(trace["execs"][1])
    hs.assert_joined(hs.read_report(report), world.host_ns, world.parent_token)
