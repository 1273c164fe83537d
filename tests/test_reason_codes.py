"""Every reason code cgnetns-show can give, proved against the helper.

For each code in cgnetns/resolve.py and cgnetns/cli/show.py there is a
differential scenario: a live probe process is put in the situation (a
build from cgnetns.build.Build changed by hand, or mounts in the probe's
private mount namespace), ``cgnetns-show --json PID`` explains it, then the
probe execs the installed front ``cgnetns-exec`` on an allow-listed program,
and the helper's outcome must be the one announced: a join ran the program in
the approved namespace (set-user-ID path) or minted its socket there (broker
path), a pass-through ran it unchanged, a refusal ran nothing, exited 125 and
said in one line what tests/test_show.py's HELPER_SAYS has for that code.

Every code has a scenario on the set-user-ID path; the codes where the broker
path differs (its own allow list and view, the cgroup namespace rule,
pass-through against join) have one on the broker path too, against a broker
of the test's own in a private mount namespace (test_show.system_broker: its
socket is on a private tmpfs, so another cgnetnsd on the host's socket does
not matter).  test_every_code_has_a_differential_scenario fails when a code
is added to the source without a scenario here.

The two "unknown" codes are about cgnetns-show's own reach (it may not read
what decides), not about the process: there the helper is compared with
what cgnetns-show says as root on the same process, and the limited view is
checked against root's for everything it does show.

Scenarios marked xfail(strict) are known disagreements between the C and the
Python rule outside the files this suite may change; each says where.
"""

import collections
import os
import re
import secrets
import subprocess

import pytest

import test_show as ts
from cgnetns import namespaces, paths, resolve, tags
from cgnetns.build import Build

from conftest import PY, REPO

LEAK_PREFIX = ("show-rc",)
server = ts.server  # the fixture: a TCP server in the approved namespace

SUID, BROKER = "set-user-id", "broker"

# Where the broker path differs from the set-user-ID path for a code: the
# broker's helper reads the allow list, the pins and cgroup2 in the broker's
# mount namespace, refuses a peer in another cgroup namespace at once, and a
# join gives minted sockets instead of the namespace.  These codes need a
# scenario on both paths.
BROKER_DIFFERS = {"no-build", "already-in-approved-netns", "approved-netns-differs",
                  "cgroupns", "allow-list-unsafe", "allow-list-missing"}

Scenario = collections.namedtuple("Scenario", "code path name fn xfail")
SCENARIOS = {}   # reason code -> [Scenario]


def scenario(code, path, name, xfail=None):
    def deco(fn):
        SCENARIOS.setdefault(code, []).append(Scenario(code, path, name, fn, xfail))
        return fn
    return deco


# -- the codes in the source ---------------------------------------------------

SOURCES = [os.path.join(REPO, "cgnetns", "resolve.py"),
           os.path.join(REPO, "cgnetns", "cli", "show.py")]
CODE = r"([a-z][a-z0-9]*(?:-[a-z0-9]+)*)"
# REASONS = {"code": ("verdict", "category"), ...}
DECLARED_RE = re.compile(r'^\s*"%s":\s*\("(join|pass-through|refuse|unknown)",' % CODE, re.M)
# _Verdict("code", ...), ex.decide("code", ...), bad("state", "code", ...),
# reason_code="code" / "reason_code": "code"
USED_RES = [re.compile(r'\b(?:_Verdict|decide)\(\s*"%s"' % CODE),
            re.compile(r'\bbad\(\s*"[a-z-]+",\s*"%s"' % CODE),
            re.compile(r'reason_code"?\s*[:=]\s*"%s"' % CODE)]


def codes_in_source():
    """{code: verdict} declared, and the set of codes used, in SOURCES."""
    declared, used = {}, set()
    for path in SOURCES:
        with open(path) as f:
            text = f.read()
        declared.update(DECLARED_RE.findall(text))
        for r in USED_RES:
            used.update(r.findall(text))
    return declared, used


@pytest.mark.unit
def test_every_code_has_a_differential_scenario():
    declared, used = codes_in_source()
    assert len(declared) >= 20, declared
    assert used <= set(declared), "codes used but not declared in REASONS: %s" % (
        used - set(declared))
    assert declared == {c: v for c, (v, _) in resolve.REASONS.items()}
    missing = []
    for code in declared:
        live = {s.path for s in SCENARIOS.get(code, []) if s.xfail is None}
        if SUID not in live:
            missing.append("%s on the set-user-ID path" % code)
        if code in BROKER_DIFFERS and BROKER not in live:
            missing.append("%s on the broker path" % code)
    assert not missing, "no differential scenario for: " + ", ".join(missing)
    assert set(SCENARIOS) <= set(declared), set(SCENARIOS) - set(declared)


@pytest.mark.unit
def test_man_page_lists_every_code():
    with open(os.path.join(REPO, "doc", "man", "cgnetns-show.8.rst")) as f:
        text = f.read()
    documented = dict(re.findall(r"^``%s`` \((join|pass-through|refuse|unknown)\)$" % CODE,
                                 text, re.M))
    assert documented == {c: v for c, (v, _) in resolve.REASONS.items()}


# -- running a scenario ----------------------------------------------------------

class Ctx:
    def __init__(self, port, token, cg2root, world=None):
        self.port, self.token, self.cg2root, self.world = port, token, cg2root, world


def ns_sh(pid, script, check=True):
    """SCRIPT as root in the mount namespace of process PID."""
    return subprocess.run(["nsenter", "-t", str(pid), "-m", "--", "sh", "-c", script],
                          check=check, capture_output=True, timeout=30)


def probe_and_compare(ctx, build, code, *, path=SUID, after_ready=None, cleanup=None,
                      says=None, show_kw=None, **probe_kw):
    """Start a probe, run AFTER_READY(probe), show it, let it exec the front,
    compare (test_show.check_outcome), and check the code and the path."""
    if path == BROKER:
        probe_kw.setdefault("mount_ns", ctx.world.broker)
        probe_kw.setdefault("wrap", "--no-new-privs")
        show_kw = dict(show_kw or {}, mount_ns_of=ctx.world.broker)
    p = ts.Probe(build, port=ctx.port, **probe_kw)
    try:
        if after_ready is not None:
            after_ready(p)
        d, rc, out, err = ts.compare(p, ctx.token, says=says, **(show_kw or {}))
    finally:
        p.close()
        if cleanup is not None:
            cleanup(p)
    assert d["reason_code"] == code, (d["reason_code"], d["reason"])
    assert d["verdict"] == resolve.REASONS[code][0]
    assert d["exec_path"] == path, d["exec_path_reason"]
    return d, err


# -- pass-through and join ------------------------------------------------------

@scenario("no-build", SUID, "outside-any-build")
def _no_build(ctx):
    probe_and_compare(ctx, None, "no-build")


@scenario("no-build", BROKER, "outside-any-build")
def _no_build_broker(ctx):
    probe_and_compare(ctx, None, "no-build", path=BROKER)


@scenario("already-in-approved-netns", SUID, "in-the-approved-netns")
def _already(ctx):
    with Build(name="show-rc-already") as b:
        d, _ = probe_and_compare(ctx, b, "already-in-approved-netns", unshare_net=False)
    assert d["in_approved_netns"] is True


@scenario("already-in-approved-netns", BROKER, "in-the-approved-netns")
def _already_broker(ctx):
    probe_and_compare(ctx, ctx.world.build, "already-in-approved-netns", path=BROKER,
                      unshare_net=False)


@scenario("approved-netns-differs", SUID, "build-with-own-netns")
def _join(ctx):
    with Build(name="show-rc-join") as b:
        probe_and_compare(ctx, b, "approved-netns-differs")


@scenario("approved-netns-differs", BROKER, "build-with-own-netns")
def _join_broker(ctx):
    probe_and_compare(ctx, ctx.world.build, "approved-netns-differs", path=BROKER)


@scenario("approved-netns-differs", SUID, "cgroup-name-not-utf8")
def _join_not_utf8(ctx):
    """A cgroup below the build whose name is not UTF-8: the helper opens the
    bytes of the 0:: line; cgnetns-show must name the same directory (it
    once decoded the line with errors="replace" and refused)."""
    with Build(name="show-rc-utf8") as b:
        child = os.path.join(os.fsencode(b.cgroup_path), b"x\xff")
        os.mkdir(child)

        def move(p):
            with open(os.path.join(child, b"cgroup.procs"), "w") as f:
                f.write(str(p.pid))
        try:
            d, _ = probe_and_compare(ctx, b, "approved-netns-differs", after_ready=move)
        finally:
            os.rmdir(child)
    assert os.fsencode(d["cgroup"]) == os.fsencode(b.cgroup) + b"/x\xff"


@scenario("approved-netns-differs", SUID, "own-cgroupns-own-cgroup2-view")
def _join_own_cgroupns(ctx):
    """Root made the probe a cgroup namespace of its own (rooted at the build
    cgroup) and gave it a cgroup2 mount rooted there, as a container has: the
    set-user-ID helper judges by the process's own view (path "/", listed,
    the tag on the build cgroup) and joins.  cgnetns-show in that view
    (nsenter -C) says the same.  From the initial cgroup namespace it says
    refuse (cgroupns): the broker's rule, which the set-user-ID path does not
    follow for a subject that root placed in a cgroup namespace
    (cgnetns-show(8), reason cgroupns)."""
    with Build(name="show-rc-cgnsjoin") as b:
        outside = {}

        def look_from_outside(p):
            outside.update(p.show())
        probe_and_compare(ctx, b, "approved-netns-differs", pre="unshare -C",
                          setup="mount --bind %s %s" % (b.cgroup_path, ctx.cg2root),
                          after_ready=look_from_outside, show_kw={"cgroupns": True})
    assert outside["reason_code"] == "cgroupns" and outside["same_cgroupns"] is False
    assert outside["exec_path"] == SUID
    assert any("nsenter -t %d -m -C" % outside["pid"] in n for n in outside["notes"]), \
        outside["notes"]


# -- refusals: the cgroup ---------------------------------------------------------

@scenario("no-cgroup2", SUID, "cgroup2-unmounted")
def _no_cgroup2(ctx):
    with Build(name="show-rc-nocg2") as b:
        d, _ = probe_and_compare(ctx, b, "no-cgroup2", setup="umount -l %s" % ctx.cg2root)
    assert d["cgroup_root"] is None


# A live process has a 0:: line wherever cgroup2 was ever mounted (the kernel
# shows the default hierarchy then), so on this host the file the resolver
# reads is replaced: another procfs file, without a 0:: line, is mounted over
# /proc/PID/cgroup in the resolver's mount namespace.  Both read procfs there.
NO_0_LINE = "mount --bind /proc/version /proc/%s/cgroup"


@scenario("no-cgroup2-membership", SUID, "procfs-file-without-0-line")
def _no_membership(ctx):
    with Build(name="show-rc-no0") as b:
        probe_and_compare(ctx, b, "no-cgroup2-membership", setup=NO_0_LINE % "$$")


@scenario("no-cgroup2-membership", BROKER, "procfs-file-without-0-line")
def _no_membership_broker(ctx):
    broker = ctx.world.broker
    probe_and_compare(
        ctx, ctx.world.build, "no-cgroup2-membership", path=BROKER,
        after_ready=lambda p: ns_sh(broker, NO_0_LINE % p.pid),
        cleanup=lambda p: ns_sh(broker, "umount /proc/%d/cgroup" % p.pid, check=False))


@scenario("cgroup-unreachable", SUID, "path-not-beneath-the-mount")
def _unreachable(ctx):
    """cgroup2 mounted (bound) at the build cgroup: the process's path
    /cgnetns/ID does not exist beneath that root."""
    with Build(name="show-rc-unreach") as b:
        probe_and_compare(ctx, b, "cgroup-unreachable",
                          setup="mount --bind %s %s" % (b.cgroup_path, ctx.cg2root))


@scenario("cgroup-unreachable", BROKER, "path-not-beneath-the-mount")
def _unreachable_broker(ctx):
    broker, b = ctx.world.broker, ctx.world.build
    probe_and_compare(
        ctx, b, "cgroup-unreachable", path=BROKER,
        after_ready=lambda p: ns_sh(broker, "mount --bind %s %s" % (b.cgroup_path, ctx.cg2root)),
        cleanup=lambda p: ns_sh(broker, "umount %s" % ctx.cg2root))


@scenario("cgroup-unreachable", SUID, "own-cgroupns-moved-out")
def _unreachable_moved_out(ctx):
    """Root made the probe a cgroup namespace rooted at the build cgroup and
    moved it to a sibling afterwards: its own view of its cgroup is
    /../SIBLING, which the helper refuses to use; cgnetns-show in that view
    says so."""
    with Build(name="show-rc-movedout") as b:
        sibling = b.cgroup_path + "-sib"
        os.mkdir(sibling)

        def move(p):
            with open(os.path.join(sibling, "cgroup.procs"), "w") as f:
                f.write(str(p.pid))
        try:
            probe_and_compare(ctx, b, "cgroup-unreachable", pre="unshare -C", after_ready=move,
                              show_kw={"cgroupns": True})
        finally:
            os.rmdir(sibling)


# A regular file naming the root cgroup, mounted over /proc/PID/cgroup: the
# helper reads the file only from procfs and refuses; cgnetns-show once
# followed it and said pass-through (no tag at the root).
FAKE_CGROUP_FILE = ("mount -t tmpfs -o size=4k fake {etc} && printf '0::/\\n' > {etc}/cg && "
                    "mount --bind {etc}/cg /proc/$$/cgroup && umount {etc}"
                    .format(etc=os.path.dirname(paths.ALLOW_PATH)))


@scenario("cgroup-unreachable", SUID, "cgroup-file-not-on-procfs")
def _unreachable_not_procfs(ctx):
    with Build(name="show-rc-notproc") as b:
        probe_and_compare(ctx, b, "cgroup-unreachable", setup=FAKE_CGROUP_FILE)


def _decoy(ctx, build):
    """<cgroup2>/show-rc-decoy-X/cgnetns/ID, tagged as BUILD is: mounted as
    the cgroup2 root, the process's path names it, and it is not there."""
    decoy = os.path.join(ctx.cg2root, "show-rc-decoy-" + secrets.token_hex(4))
    leaf = os.path.join(decoy, "cgnetns", build.id)
    os.makedirs(leaf)
    ts._set_tag(leaf, os.getxattr(build.cgroup_path, "trusted.cgnetns").decode())
    return decoy, leaf


def _remove_decoy(decoy, leaf):
    os.rmdir(leaf)
    os.rmdir(os.path.dirname(leaf))
    os.rmdir(decoy)


@scenario("not-in-cgroup", SUID, "path-names-a-tagged-decoy")
def _not_in_cgroup(ctx):
    with Build(name="show-rc-decoy") as b:
        decoy, leaf = _decoy(ctx, b)
        try:
            d, _ = probe_and_compare(ctx, b, "not-in-cgroup",
                                     setup="mount --bind %s %s" % (decoy, ctx.cg2root))
        finally:
            _remove_decoy(decoy, leaf)
    assert d["in_cgroup_procs"] is False and d["tagged_cgroup"] == b.cgroup


@scenario("not-in-cgroup", BROKER, "path-names-a-tagged-decoy")
def _not_in_cgroup_broker(ctx):
    broker, b = ctx.world.broker, ctx.world.build
    decoy, leaf = _decoy(ctx, b)
    try:
        probe_and_compare(
            ctx, b, "not-in-cgroup", path=BROKER,
            after_ready=lambda p: ns_sh(broker, "mount --bind %s %s" % (decoy, ctx.cg2root)),
            cleanup=lambda p: ns_sh(broker, "umount %s" % ctx.cg2root))
    finally:
        _remove_decoy(decoy, leaf)


@scenario("not-in-cgroup", SUID, "own-cgroupns-untagged-root")
def _not_in_cgroup_own_ns(ctx):
    """Root made the probe a cgroup namespace rooted at the build cgroup; its
    mount shows the whole hierarchy, so its own path "/" names the root
    cgroup, untagged, where it is not listed.  The helper, outside the
    initial cgroup namespace, checks membership at once and refuses;
    cgnetns-show in that view must too (it once said pass-through, no-build,
    because it checked membership only once a tag was found)."""
    with Build(name="show-rc-cgnsroot") as b:
        d, _ = probe_and_compare(ctx, b, "not-in-cgroup", pre="unshare -C",
                                 show_kw={"cgroupns": True})
    assert d["cgroup"] == "/" and d["same_cgroupns"] is True


@scenario("cgroupns", BROKER, "user-and-cgroup-namespace")
def _cgroupns_broker(ctx):
    d, err = probe_and_compare(ctx, ctx.world.build, "cgroupns", path=BROKER,
                               wrap="unshare -U -C --map-root-user")
    assert int(re.search(ts.HELPER_SAYS["cgroupns"], err).group(1)) == d["tgid"]
    assert any("would be join" in n for n in d["notes"]), d["notes"]


@scenario("cgroupns", SUID, "root-made-cgroupns")
def _cgroupns_suid(ctx):
    """A cgroup namespace root made for the probe (no user namespace: the
    set-user-ID path).  cgnetns-show, from its own cgroup namespace, refuses
    as the broker would; the helper judges by the process's own view, where
    the path "/" names the root cgroup it is not in, and refuses too (with
    not-in-cgroup's words, which cgnetns-show gives in that view)."""
    with Build(name="show-rc-cgns") as b:
        inside = {}

        def look_from_inside(p):
            inside.update(p.show(cgroupns=True))
        probe_and_compare(ctx, b, "cgroupns", pre="unshare -C", after_ready=look_from_inside,
                          says=ts.HELPER_SAYS["not-in-cgroup"])
    assert inside["reason_code"] == "not-in-cgroup", inside["reason"]


# -- refusals: the tag ---------------------------------------------------------

@scenario("tag-owner", SUID, "cgroup-chowned")
def _tag_owner(ctx):
    with Build(name="show-rc-owner") as b:
        ts._chown_cgroup(b)
        try:
            probe_and_compare(ctx, b, "tag-owner")
        finally:
            os.chown(b.cgroup_path, 0, 0)


@scenario("tag-format", SUID, "garbage")
def _tag_format(ctx):
    with Build(name="show-rc-garbage") as b:
        ts._garbage(b)
        probe_and_compare(ctx, b, "tag-format")


@scenario("tag-format", SUID, "too-long-on-a-chowned-cgroup")
def _tag_too_long(ctx):
    """The helper reads at most 255 bytes and refuses a longer tag before it
    looks at the owner; cgnetns-show once said tag-owner."""
    with Build(name="show-rc-long") as b:
        ts._set_tag(b.cgroup_path, tags.format_tag(b.id, b.identity).decode()
                    + " " + "x" * 255)
        ts._chown_cgroup(b)
        try:
            probe_and_compare(ctx, b, "tag-format")
        finally:
            os.chown(b.cgroup_path, 0, 0)


@scenario("tag-version", SUID, "v2")
def _tag_version(ctx):
    with Build(name="show-rc-v2") as b:
        ts._version_2(b)
        probe_and_compare(ctx, b, "tag-version")


# The tag parser's classes, live: helper/parse.c parse_tag against
def _raw_tag_scenario(value, code):
    def fn(ctx):
        with Build(name="show-rc-rawtag") as b:
            os.setxattr(b.cgroup_path, "trusted.cgnetns", value)
            probe_and_compare(ctx, b, code)
    return fn


for _value, _code, _name in ((b"v1", "tag-version", "v1-alone"),
                             (b"v2 pin=\xff", "tag-version", "v2-not-ascii"),
                             (b"v2 pin=a\x00", "tag-format", "v2-with-nul")):
    scenario(_code, SUID, _name)(_raw_tag_scenario(_value, _code))


# -- refusals: the pin ---------------------------------------------------------

@scenario("pins-dir-unsafe", SUID, "group-writable")
def _pins_dir_unsafe(ctx):
    with Build(name="show-rc-pinsdir") as b:
        probe_and_compare(ctx, b, "pins-dir-unsafe", setup="mount -t tmpfs -o mode=0770 x %s"
                          % namespaces.pins_dir())


@scenario("pins-dir-unsafe", BROKER, "group-writable")
def _pins_dir_unsafe_broker(ctx):
    broker, pins = ctx.world.broker, namespaces.pins_dir()
    probe_and_compare(
        ctx, ctx.world.build, "pins-dir-unsafe", path=BROKER,
        after_ready=lambda p: ns_sh(broker, "mount -t tmpfs -o mode=0770 x %s" % pins),
        cleanup=lambda p: ns_sh(broker, "umount %s" % pins))


@scenario("pin-missing", SUID, "removed")
def _pin_missing(ctx):
    with Build(name="show-rc-pingone") as b:
        ts._remove_pin_by_hand(b)
        probe_and_compare(ctx, b, "pin-missing")


@scenario("pin-not-nsfs", SUID, "unmounted")
def _pin_not_nsfs(ctx):
    with Build(name="show-rc-pinunm") as b:
        ts._unmount_pin_by_hand(b)
        probe_and_compare(ctx, b, "pin-not-nsfs")


@scenario("pin-not-nsfs", SUID, "fifo")
def _pin_fifo(ctx):
    """A FIFO where the pin should be (a private pins directory): the helper
    opens it with O_NONBLOCK and refuses; cgnetns-show once blocked in
    open() until its caller gave up."""
    with Build(name="show-rc-pinfifo") as b:
        probe_and_compare(ctx, b, "pin-not-nsfs",
                          setup="mount -t tmpfs -o mode=0700 x {d} && mkfifo {d}/{id}"
                          .format(d=namespaces.pins_dir(), id=b.id))


@scenario("pin-not-net", SUID, "uts-namespace")
def _pin_not_net(ctx):
    with Build(name="show-rc-pinuts") as b:
        probe_and_compare(ctx, b, "pin-not-net", setup="umount {p} && mount --bind "
                          "/proc/self/ns/uts {p}".format(p=b.pin_path))


@scenario("pin-mismatch", SUID, "other-inode")
def _pin_mismatch(ctx):
    with Build(name="show-rc-ino") as b:
        ts._other_inode(b)
        probe_and_compare(ctx, b, "pin-mismatch")


@scenario("pin-mismatch", SUID, "other-nsid")
def _pin_mismatch_nsid(ctx):
    with Build(name="show-rc-nsid") as b:
        ts._other_nsid(b)
        probe_and_compare(ctx, b, "pin-mismatch")


# -- refusals: the allow list ---------------------------------------------------

ALLOW = paths.ALLOW_PATH


@scenario("allow-list-unsafe", SUID, "group-writable")
def _allow_unsafe(ctx):
    with Build(name="show-rc-allow") as b:
        d, _ = probe_and_compare(ctx, b, "allow-list-unsafe", allow_mode="664")
    assert any("would be join" in n for n in d["notes"]), d["notes"]


@scenario("allow-list-unsafe", SUID, "bad-line")
def _allow_bad_line(ctx):
    with Build(name="show-rc-allowline") as b:
        probe_and_compare(ctx, b, "allow-list-unsafe", after_ready=lambda p: ns_sh(
            p.pid, "printf '/usr/../x\\n' >> %s" % ALLOW))


@scenario("allow-list-unsafe", SUID, "missing-below-a-group-writable-dir")
def _allow_missing_below_unsafe_dir(ctx):
    """The helper walks from "/" and stops at the first unsafe directory, so
    a missing list below one is unsafe; cgnetns-show once said missing."""
    with Build(name="show-rc-allowdir") as b:
        d, _ = probe_and_compare(ctx, b, "allow-list-unsafe", after_ready=lambda p: ns_sh(
            p.pid, "rm {a} && chmod 775 {d}".format(a=ALLOW, d=os.path.dirname(ALLOW))))
    assert d["allow_list"]["state"] == "unsafe"


@scenario("allow-list-unsafe", BROKER, "group-writable")
def _allow_unsafe_broker(ctx):
    broker = ctx.world.broker
    probe_and_compare(ctx, ctx.world.build, "allow-list-unsafe", path=BROKER,
                      after_ready=lambda p: ns_sh(broker, "chmod 664 %s" % ALLOW),
                      cleanup=lambda p: ns_sh(broker, "chmod 644 %s" % ALLOW))


@scenario("allow-list-missing", SUID, "removed")
def _allow_missing(ctx):
    with Build(name="show-rc-noallow") as b:
        probe_and_compare(ctx, b, "allow-list-missing",
                          after_ready=lambda p: ns_sh(p.pid, "rm %s" % ALLOW))


@scenario("allow-list-missing", BROKER, "removed")
def _allow_missing_broker(ctx):
    broker = ctx.world.broker
    probe_and_compare(ctx, ctx.world.build, "allow-list-missing", path=BROKER,
                      after_ready=lambda p: ns_sh(broker, "mv {a} {a}.away".format(a=ALLOW)),
                      cleanup=lambda p: ns_sh(broker, "mv {a}.away {a}".format(a=ALLOW)))


# -- unknown: cgnetns-show's own reach --------------------------------------------

# cgnetns-show as nobody, importing first (the interpreter is under /root, 0700).
AS_NOBODY = [PY, "-c", "import os, sys; from cgnetns.cli import show; import cgnetns.gc, "
             "cgnetns.records; os.setgroups([]); os.setresgid(65534, 65534, 65534); "
             "os.setresuid(65534, 65534, 65534); sys.exit(show.main(sys.argv[1:]))"]
# cgnetns-show as root without CAP_SYS_PTRACE: it reads trusted.* attributes,
# but not the namespaces of another user's process.
NO_PTRACE = ["setpriv", "--bounding-set=-sys_ptrace", "--"] + ts.SHOW


def limited_and_root_view(ctx, code, command):
    """Show a joining probe with COMMAND (a view that cannot decide), and as
    root; the helper must do what root's view says, and the limited view
    must agree with root's on what it shows."""
    with Build(name="show-rc-unknown") as b:
        p = ts.Probe(b, port=ctx.port)
        try:
            limited = p.show(command=command)
            ref = p.show()
            rc, out, err = p.exec_helper()
        finally:
            p.close()
    ts.check_outcome(ref, rc, out, err, ctx.token)
    assert ref["reason_code"] == "approved-netns-differs", ref["reason"]
    assert limited["reason_code"] == code, (limited["reason_code"], limited["reason"])
    assert limited["verdict"] == "unknown" and limited["category"] == "privilege"
    assert limited["fix"] and "root" in limited["fix"]
    for key in ("pid", "tgid", "uid", "cgroup", "cgroup_root", "in_cgroup_procs", "allow_list"):
        assert limited[key] == ref[key], key
    return limited, ref


@scenario("tags-unreadable", SUID, "show-as-nobody")
def _tags_unreadable(ctx):
    limited, ref = limited_and_root_view(ctx, "tags-unreadable", AS_NOBODY)
    assert limited["privileged"] is False and limited["tagged_cgroup"] is None
    assert limited["netns"] == ref["netns"]
    walked = [(a["cgroup"], a["owner_uid"]) for a in limited["ancestors"]]
    assert walked[:len(ref["ancestors"])] == [(a["cgroup"], a["owner_uid"])
                                              for a in ref["ancestors"]]
    assert walked[-1][0] == "/"


@scenario("netns-unreadable", SUID, "show-without-cap-sys-ptrace")
def _netns_unreadable(ctx):
    limited, ref = limited_and_root_view(ctx, "netns-unreadable", NO_PTRACE)
    assert limited["privileged"] is True and limited["netns"] is None
    assert "ns/net" in limited["netns_error"]
    for key in ("tagged_cgroup", "tag", "approved_netns", "pin"):
        assert limited[key] == ref[key], key


# -- the tests -------------------------------------------------------------------

def _params(path):
    out = []
    for code in sorted(SCENARIOS):
        for s in SCENARIOS[code]:
            if s.path == path:
                marks = [pytest.mark.xfail(reason=s.xfail, strict=True)] if s.xfail else []
                out.append(pytest.param(s, id="%s:%s" % (s.code, s.name), marks=marks))
    return out


World = collections.namedtuple("World", "build broker")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One build and one broker for every broker-path scenario: the build is
    made first, so the broker's private mount namespace has its pin."""
    ts.require_helper()
    with Build(name="show-rc-world") as b, \
            ts.system_broker(tmp_path_factory.mktemp("broker")) as broker:
        yield World(b, broker)


@pytest.mark.parametrize("sc", _params(SUID))
def test_set_user_id_path(sc, clean_host, server, cg2root):
    ts.require_helper()
    sc.fn(Ctx(server[0], server[1], cg2root))


@pytest.mark.parametrize("sc", _params(BROKER))
def test_broker_path(sc, world, clean_host, server, cg2root):
    sc.fn(Ctx(server[0], server[1], cg2root, world))
