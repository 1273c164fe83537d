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
directory), so that nothing shared is made unsafe even for a moment.
"""

import contextlib
import os
import shutil
import signal
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

def test_t03_user_xattr_on_own_cgroup_is_not_a_tag(henv, world):
    """nobody owns a delegated cgroup and writes A's exact tag there as
    user.cgnetns (trusted.cgnetns is refused to it): not a tag, no join."""
    d = henv.untagged_cgroup(owner=hs.NOBODY)
    report = henv.out_path()
    script = ('setfattr -n trusted.cgnetns -v "$1" "$2" 2>/dev/null && echo TRUSTED-SET; '
              'setfattr -n user.cgnetns -v "$1" "$2" || exit 98; shift 2; exec "$@"')
    r = henv.run(["/bin/sh", "-c", script, "sh", world.a.tag(), d, henv.installed, henv.probe_name,
                  "report", report, "--connect=%d" % world.port],
                 cgroup=d, netns=world.private.path)
    assert r.returncode == 0, r.stderr
    assert b"TRUSTED-SET" not in r.stdout
    assert os.getxattr(d, "user.cgnetns").decode() == world.a.tag()  # it was really there
    hs.assert_not_joined(hs.read_report(report), world.private, world.private_token)


def test_t03_tag_on_cgroup_not_owned_by_root(henv, world, builds):
    """A trusted tag (root's mistake) on a cgroup that nobody owns: refuse,
    also from a child cgroup the owner made and moved itself into."""
    d = world.a.child("delegated", owner=hs.NOBODY)
    world.a.set_tag(world.a.tag(), path=d)
    report = henv.out_path()
    r = henv.run(world.probe_argv(report), cgroup=d, netns=world.private.path)
    assert r.returncode == hs.EXIT_REFUSE
    assert "not owned by root" in hs.one_line(r.stderr)
    hs.assert_not_run(report)
    # the owner makes a child and moves itself there: the walk finds the tag
    script = 'mkdir "$0/x" && echo $$ > "$0/x/cgroup.procs" && exec "$@"'
    r = henv.run(["/bin/sh", "-c", script, d] + world.probe_argv(report), cgroup=d,
                 netns=world.private.path)
    assert r.returncode == hs.EXIT_REFUSE
    assert "not owned by root" in hs.one_line(r.stderr)
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


def test_t07_namespace_id_differs(henv, world):
    """Same st_dev/st_ino, another kernel namespace id: what inode reuse looks
    like.  Refused."""
    dev, ino, nsid = world.a.identity
    world.a.set_tag(hs.tag_value(world.a.id, dev, ino, nsid + 1))
    report = henv.out_path()
    r = world.a.run(world.probe_argv(report), netns=world.private.path)
    assert r.returncode == hs.EXIT_REFUSE
    assert "namespace id differs" in hs.one_line(r.stderr)
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
    link = os.path.join(attacker, "probe")
    os.symlink(henv.unlisted_probe, link)
    evil = fake_program(attacker, "evil", os.path.join(attacker, "evil-ran"))
    masq_evil = os.path.join(attacker, "unlisted-name")
    os.symlink(henv.installed, masq_evil)
    dotdot = os.path.join(henv.bin, "..", "unlisted", "probe")
    listed_link = os.path.join(henv.bin, "probe-link")
    with contextlib.suppress(FileExistsError):
        os.symlink(henv.probe, listed_link)
    return {
        "absolute": [henv.installed, henv.unlisted_probe],
        "bare-name-via-PATH": [henv.installed, "evil"],
        "dotdot": [henv.installed, dotdot],
        "relative": [henv.installed, "bin/probe"],
        "dot-relative": [henv.installed, "./probe"],
        "attacker-symlink": [henv.installed, link],
        "attacker-program": [henv.installed, evil],
        "double-slash": [henv.installed, henv.bin + "//probe"],
        "masquerade-unlisted-name": [masq_evil],
        "python": [henv.installed, "python3"],
    }


@pytest.mark.parametrize("case", ["absolute", "bare-name-via-PATH", "dotdot", "relative",
                                  "dot-relative", "attacker-symlink", "attacker-program",
                                  "double-slash", "masquerade-unlisted-name", "python"])
def test_t09_not_allow_listed(henv, world, case):
    attacker = henv.attacker_dir()
    argv = _not_listed_cases(henv, attacker)[case]
    report = henv.out_path()
    env = {"PATH": attacker + ":" + henv.unlisted + ":/usr/bin:/bin"}
    r = world.a.run(argv + ["report", report, "--connect=%d" % world.port],
                    netns=world.private.path, env=env, cwd=henv.tdir if "relative" in case
                    else (henv.bin if case == "dot-relative" else None))
    assert r.returncode == hs.EXIT_NOT_USABLE, (r.returncode, r.stderr)
    hs.one_line(r.stderr)
    hs.assert_not_run(report)
    hs.assert_not_run(os.path.join(attacker, "evil-ran"))


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

@pytest.mark.parametrize("mode", ["cont", "kill", "abort"])
def test_t12_attacks_during_privileged_window(henv, world, mode):
    """The attacker stops the helper while its effective uid is 0 (checked in
    /proc/PID/status), then tries ptrace attach/seize, /proc/PID/mem,
    environ, fd, cwd and process_vm_readv: all refused.  Then it lets it go
    on (it joins A, correctly), kills it (nothing runs) or sends SIGABRT
    (no core dump, although RLIMIT_CORE is unlimited and the cwd writable)."""
    attacker = henv.attacker_dir()
    result, report = henv.out_path("race"), henv.out_path()
    r = world.a.run([henv.probe, "launch", henv.out_path("launch"), "--core=unlimited", "--",
                     henv.probe, "race", result, mode, "--"] + world.probe_argv(report),
                    netns=world.private.path, cwd=attacker, timeout=120)
    assert r.returncode == 0, r.stderr
    import json
    with open(result) as f:
        race = json.load(f)
    assert race["caught"] == 1, race
    for attack in ("attach", "seize", "mem", "environ", "fd", "cwd", "vm_readv"):
        assert race[attack] not in (0, -1), (attack, race)
    if mode == "cont":
        assert race["exited"] == 1 and race["status"] == 0
        hs.assert_joined(hs.read_report(report), world.host_ns, world.parent_token)
    else:
        assert race["signaled"] == 1
        assert race["signal"] == (signal.SIGKILL if mode == "kill" else signal.SIGABRT)
        assert race["core"] == 0
        assert not [n for n in os.listdir(attacker) if n.startswith("core")]
        hs.assert_not_run(report)


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


def test_t14_capabilities_surviving_the_drop_refuse(henv, world):
    """SECBIT_NO_SETUID_FIXUP (set by a privileged ancestor) would keep
    capabilities across setresuid(): the helper notices and refuses."""
    report = henv.out_path()
    r = world.a.run(["setpriv", "--securebits=+no_setuid_fixup", "--reuid=65534",
                     "--regid=65534", "--clear-groups", "--"] + world.probe_argv(report),
                    netns=world.private.path, user=None)
    assert r.returncode == hs.EXIT_REFUSE, r.stderr
    assert "privilege drop failed" in hs.one_line(r.stderr)
    hs.assert_not_run(report)
