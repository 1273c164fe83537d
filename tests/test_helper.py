"""cgnetns-exec: what it must do (join, pass through, exit statuses, masquerade).

The attacks of THREATS.md 1-14 are in test_helper_threats.py; the ASan+UBSan
build and the parsers in test_helper_sanitized.py.
"""

import os
import stat
import subprocess

import pytest

try:
    from . import helper_support as hs
except ImportError:
    import helper_support as hs

henv, builds, netns, servers, world = hs.henv, hs.builds, hs.netns, hs.servers, hs.world


def caller_env(henv, **extra):
    """An environment with what libc strips from set-id programs, odd bytes,
    and a library that ld.so would refuse to preload into a set-id program."""
    env = {
        b"PATH": b"/usr/sbin:/usr/bin:/sbin:/bin",
        b"LD_PRELOAD": henv.preload.encode(),
        b"LD_LIBRARY_PATH": b"/nonexistent/lib",
        b"TMPDIR": b"/var/tmp/portage-tmp",
        b"GLIBC_TUNABLES": b"glibc.malloc.check=3:glibc.malloc.tcache_count=0",
        b"MALLOC_CHECK_": b"3",
        b"GCONV_PATH": b"/nonexistent/gconv",
        b"LANG": b"de_DE.UTF-8",
        b"IFS": b" /",
        b"ODD": b"\x01\xff\xfe tab\tnewline\nend",
        b"EMPTY": b"",
    }
    env.update(extra)
    return env


def launch_argv(henv, launch_out, helper_argv, *opts):
    return [henv.probe, "launch", launch_out] + list(opts) + ["--"] + helper_argv


def assert_same_process_state(got, want):
    """The program got exactly what the caller gave the helper."""
    assert got["argv_b"] == want["argv_b"]
    assert got["env_b"] == want["env_b"]
    assert got["uids"] == want["uids"] and got["gids"] == want["gids"]
    assert got["groups"] == want["groups"]
    assert got["fds"] == want["fds"], "fds differ: %r != %r" % (got["fds"], want["fds"])
    assert got["rlimits"] == want["rlimits"]
    for key in ("SigBlk", "SigIgn", "NoNewPrivs", "Seccomp", "CapInh", "CapBnd", "CapAmb"):
        assert got["status"][key] == want["status"][key], key
    assert got["umask"] == want["umask"]
    assert got["cwd"] == want["cwd"]
    assert got["cgroup"] == want["cgroup"]


def test_installed_helper_is_static_setuid_root_and_the_front_is_neither(henv):
    """The helper is static and set-user-ID root; the front that builds call
    is dynamic and not set-user-ID, so that Gentoo's sandbox (which ptraces
    static and set-user-ID programs and strips their preload) neither traces
    it nor what it runs."""
    st = os.stat(henv.helper)
    assert st.st_uid == 0 and st.st_gid == 0
    assert stat.S_IMODE(st.st_mode) == 0o4755
    assert hs.is_static_elf(henv.helper), "the helper must not use a dynamic loader"
    st = os.stat(henv.installed)
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o755
    assert not hs.is_static_elf(henv.installed), "the front must be dynamic"


@pytest.mark.parametrize("variant", ["installed", "glibc"])
def test_joins_parent_namespace_with_callers_state(henv, world, builds, variant):
    """From a tagged build, in its own network namespace, as nobody with
    groups: the probe runs in the approved (parent) namespace and reaches the
    server that listens only there, with the caller's uid, gid, groups, fds,
    environment (LD_PRELOAD included), rlimits, signal state, umask and cwd;
    the helper prints nothing, although LD_PRELOAD names a library ld.so would
    refuse to preload into a set-id program.  "glibc" is the glibc-static
    variant, which must restore what glibc strips before main()."""
    if variant == "installed":
        helper, build = henv.installed, world.a
    else:
        helper = henv.variants["glibc"]
        build = builds(name="g", pins=henv.private_pins)
    launched, report = henv.out_path("launch"), henv.out_path("probe")
    r_fd, w_fd = os.pipe()
    f_fd = os.open(henv.probe, os.O_RDONLY)
    try:
        r = build.run(
            launch_argv(henv, launched,
                        world.probe_argv(report, helper, "--try-root", "arg with space", "", "\x01"),
                        "--umask=027", "--ignore=10", "--block=12", "--nofile=777",
                        "--add-env=NOEQUALS", "--add-env=ODD=duplicate"),
            netns=world.private.path, groups=[100, 4242], env=caller_env(henv),
            pass_fds=(r_fd, f_fd))
    finally:
        for fd in (r_fd, w_fd, f_fd):
            os.close(fd)
    assert r.returncode == 0, r.stderr
    assert r.stderr == b""
    got, want = hs.read_report(report), hs.read_report(launched)
    hs.assert_joined(got, world.host_ns, world.parent_token)
    assert_same_process_state(got, want)
    assert got["uids"] == [hs.NOBODY] * 3 and got["gids"] == [hs.NOGROUP] * 3
    assert got["groups"] == [100, 4242]
    assert got["status"]["CapEff"] == got["status"]["CapPrm"] == "0000000000000000"
    assert got["status"]["CapAmb"] == "0000000000000000"
    assert set(got["regain"].values()) == {1}, got["regain"]  # all EPERM
    assert got["preloaded"] == 1
    assert b"NOEQUALS" in got["env_b"] and b"LD_PRELOAD=" + henv.preload.encode() in got["env_b"]
    assert str(r_fd) in got["fds"] and got["fds"][str(f_fd)]["target"] == henv.probe
    assert got["cgroup"] == "/cgnetns/" + build.id
    assert int(got["status"]["SigIgn"], 16) & (1 << 9)  # SIGUSR1 (10), as the launcher set
    assert got["umask"] == 0o27
    assert got["dumpable"] == 1


def test_outside_a_build_runs_unchanged(henv, world):
    """In no tagged cgroup: the probe runs unchanged, unprivileged, in its own
    namespace, silently."""
    cg = henv.untagged_cgroup()
    report = henv.out_path()
    r = henv.run(world.probe_argv(report, None, "--try-root"), cgroup=cg,
                 netns=world.private.path)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    got = hs.read_report(report)
    hs.assert_not_joined(got, world.private, world.private_token)
    assert got["uids"] == [hs.NOBODY] * 3
    assert set(got["regain"].values()) == {1}


def test_already_in_approved_namespace_runs_unchanged(henv, world):
    report = henv.out_path()
    r = world.a.run(world.probe_argv(report))  # no private namespace
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    got = hs.read_report(report)
    hs.assert_joined(got, world.host_ns, world.parent_token)
    assert got["uids"] == [hs.NOBODY] * 3
    assert got["status"]["CapEff"] == "0000000000000000"


def test_root_caller_joins_and_stays_root(henv, world):
    """Portage without userpriv builds as root: the helper joins for it too."""
    report = henv.out_path()
    r = world.a.run(world.probe_argv(report), netns=world.private.path, user=None)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    got = hs.read_report(report)
    hs.assert_joined(got, world.host_ns, world.parent_token)
    assert got["uids"] == [0, 0, 0]


def test_script_program_joins(henv, world):
    """A "#!" script cannot be run through its O_CLOEXEC fd: it runs by its
    checked path, in the approved namespace, as the caller."""
    out = henv.out_path("script")
    r = world.a.run([henv.installed, henv.probe_sh, out, "a", "b c"], netns=world.private.path)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    with open(out) as f:
        text = f.read()
    assert "netns=net:[%d]" % world.host_ns[1] in text
    assert "uid=65534 gid=65534" in text and "args=a b c" in text


def test_masquerade_symlink_runs_program_with_argv_unchanged(henv, world):
    d = os.path.join(henv.tdir, "masq-" + os.urandom(3).hex())
    os.mkdir(d)
    link = os.path.join(d, henv.probe_name)
    os.symlink(henv.installed, link)
    report = henv.out_path()
    r = world.a.run([link, "report", report, "--connect=%d" % world.port],
                    netns=world.private.path)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    got = hs.read_report(report)
    hs.assert_joined(got, world.host_ns, world.parent_token)
    assert got["argv_b"][0] == link.encode()  # argv passed unchanged
    assert got["exe"] == henv.probe


def test_double_dash_and_exit_status(henv, world):
    report = henv.out_path()
    r = world.a.run([henv.installed, "--", henv.probe_name, "report", report, "--exit=42"],
                    netns=world.private.path)
    assert r.returncode == 42 and r.stderr == b""
    assert hs.read_report(report)["argv_b"][0] == henv.probe_name.encode()  # as given


def test_not_found_is_127(henv, world):
    r = world.a.run([henv.installed, os.path.join(henv.bin, "missing")], netns=world.private.path)
    assert r.returncode == hs.EXIT_NOT_FOUND
    assert "not found" in hs.one_line(r.stderr)
    r = world.a.run([henv.installed, "missing"], netns=world.private.path)
    assert r.returncode == hs.EXIT_NOT_FOUND


@pytest.mark.parametrize("argv,status", [
    ([], hs.EXIT_REFUSE),
    (["--"], hs.EXIT_REFUSE),
    (["-x", "probe"], hs.EXIT_REFUSE),
    ([""], hs.EXIT_NOT_USABLE),
])
def test_usage_errors(henv, world, argv, status):
    r = world.a.run([henv.installed] + argv, netns=world.private.path)
    assert r.returncode == status
    hs.one_line(r.stderr)


def test_refusal_is_one_prefixed_line(henv, world):
    world.a.set_tag("v1 garbage")
    report = henv.out_path()
    r = world.a.run(world.probe_argv(report), netns=world.private.path)
    assert r.returncode == hs.EXIT_REFUSE
    assert "malformed tag" in hs.one_line(r.stderr)
    hs.assert_not_run(report)


def test_masquerade_compiler_scripts(henv, world, builds):
    """The compiler masquerade directory: `gcc ARGS` runs `distcc gcc ARGS`
    through the helper, with the directory out of PATH (under any spelling)
    so that distcc finds the real compiler: no recursion."""
    d = os.path.join(henv.tdir, "masqc-" + os.urandom(3).hex())
    os.mkdir(d)
    masq = os.path.join(d, "masq")
    bindir = os.path.join(d, "bin")
    os.mkdir(masq)
    os.mkdir(bindir)
    # a cgnetns-exec whose allow list has /usr/bin/distcc: the private variant
    os.symlink(henv.variants["musl"], os.path.join(bindir, "cgnetns-exec"))
    bdir = os.path.join(d, "build")
    hs.sh(["make", "-s", "-C", hs.HELPER_SRC, "B=" + bdir, "MASQDIR=" + masq,
           "BINDIR=" + bindir, bdir + "/masq/gcc", bdir + "/masq/cc"])
    for n in ("gcc", "cc"):
        os.rename(os.path.join(bdir, "masq", n), os.path.join(masq, n))
        os.chmod(os.path.join(masq, n), 0o755)
    spellings = [masq, masq + "/", os.path.join(d, ".", "masq"), "/usr/bin", "/bin"]
    env = {"PATH": ":".join(spellings), "DISTCC_DIR": henv.out, "DISTCC_HOSTS": "localhost",
           "HOME": henv.out}
    build = builds(name="m", pins=henv.private_pins)
    r = build.run(["gcc", "--version"], netns=world.private.path, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    assert b"gcc" in r.stdout.splitlines()[0]
    # what distcc was given: `distcc gcc ARGS`, and a PATH without the masq dir
    fake = os.path.join(d, "fake")
    os.mkdir(fake)
    with open(os.path.join(fake, "cgnetns-exec"), "w") as f:
        f.write('#!/bin/sh\nprintf "%s\\n" "$PATH" "$@" > "$RECORD"\n')
    os.chmod(os.path.join(fake, "cgnetns-exec"), 0o755)
    hs.sh(["make", "-s", "-C", hs.HELPER_SRC, "B=" + bdir, "MASQDIR=" + masq,
           "BINDIR=" + fake, "-B", bdir + "/masq/cc"])
    rec = henv.out_path("masq")
    r = subprocess.run(["/bin/sh", os.path.join(bdir, "masq", "cc"), "-c", "x y.c"],
                       env={"PATH": ":".join(spellings), "RECORD": rec}, timeout=30)
    assert r.returncode == 0
    with open(rec) as f:
        lines = f.read().splitlines()
    assert lines == ["/usr/bin:/bin", "distcc", "cc", "-c", "x y.c"]


def test_tag_without_namespace_id_joins(henv, world):
    """nsid=0 (a kernel without NS_GET_ID): st_dev/st_ino alone decide."""
    dev, ino, _ = world.a.identity
    world.a.set_tag(hs.tag_value(world.a.id, dev, ino, 0))
    report = henv.out_path()
    r = world.a.run(world.probe_argv(report), netns=world.private.path)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    hs.assert_joined(hs.read_report(report), world.host_ns, world.parent_token)


SYS_OPENAT2 = 437


def test_without_openat2(henv, world):
    """Where openat2() fails with ENOSYS (old kernel, container seccomp
    profile), the per-component openat() walk gives the same answers: the
    join works, a cgroup namespace is still refused."""
    launch = [henv.probe, "launch", henv.out_path("launch"),
              "--seccomp-enosys=%d" % SYS_OPENAT2, "--become=%d" % hs.NOBODY, "--"]
    report = henv.out_path()
    r = world.a.run(launch + world.probe_argv(report), netns=world.private.path, user=None)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    got = hs.read_report(report)
    hs.assert_joined(got, world.host_ns, world.parent_token)
    assert got["status"]["Seccomp"] == "2" and got["uids"] == [hs.NOBODY] * 3
    report = henv.out_path()
    r = world.a.run(launch + world.probe_argv(report), netns=world.private.path, user=None,
                    unshare=["-C"])
    assert r.returncode == hs.EXIT_REFUSE
    assert "is not in cgroup" in hs.one_line(r.stderr)
    hs.assert_not_run(report)


@pytest.mark.parametrize("owner", [None, hs.NOBODY])
def test_nested_cgroup_below_the_build_joins(henv, world, owner):
    """Portage's FEATURES=cgroup nests emerge-<pid>/<cpv> below the build
    cgroup (also delegated to the build user): the walk finds the build's tag."""
    inner = world.a.child("emerge-1", owner=owner)
    inner2 = os.path.join(inner, "cat-pkg-1")
    os.mkdir(inner2)
    world.a.extra_cgroups.append(inner2)
    report = henv.out_path()
    r = henv.run(world.probe_argv(report), cgroup=inner2, netns=world.private.path)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    got = hs.read_report(report)
    hs.assert_joined(got, world.host_ns, world.parent_token)
    assert got["cgroup"] == "/cgnetns/%s/emerge-1/cat-pkg-1" % world.a.id
