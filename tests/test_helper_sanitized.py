"""cgnetns-exec built with ASan+UBSan (clang), and its parsers.

The sanitized build cannot be set-user-ID (the sanitizer runtimes need the
dynamic loader); it runs here as real root, which takes the same privileged
path (resolve, verify, setns, drop to the real ids, exec) without the
set-id transition.  Any sanitizer report makes the exit status 86/87 and
fails the test.  The parsers are checked one by one through a small driver
built the same way, and each libFuzzer harness runs briefly over its seeds
(longer runs: make -C helper check-fuzz / fuzz).
"""

import os
import re
import subprocess

import pytest

from parser_cases import ALLOW_CASES, CGROUP_CASES, TAG_CASES  # shared with test_parsers.py

try:
    from . import helper_support as hs
except ImportError:
    import helper_support as hs

henv, builds, netns, servers, world = hs.henv, hs.builds, hs.netns, hs.servers, hs.world

SAN_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "ASAN_OPTIONS": "exitcode=86:abort_on_error=0:detect_leaks=0",
    "UBSAN_OPTIONS": "halt_on_error=1:exitcode=87:print_stacktrace=1",
}


def run_asan(henv, build, argv, **kw):
    kw.setdefault("env", dict(SAN_ENV))
    r = (build.run if build else henv.run)(argv, user=None, **kw)
    assert r.returncode not in (86, 87), r.stderr.decode(errors="replace")
    assert b"Sanitizer" not in r.stderr and b"runtime error" not in r.stderr, r.stderr
    return r


@pytest.fixture
def asan_build(henv, builds):
    return builds(name="asan", pins=henv.private_pins)


def test_asan_join_as_root(henv, world, asan_build):
    report = henv.out_path()
    r = run_asan(henv, asan_build, world.probe_argv(report, henv.variants["asan"]),
                 netns=world.private.path)
    assert r.returncode == 0, r.stderr
    got = hs.read_report(report)
    hs.assert_joined(got, world.host_ns, world.parent_token)
    assert got["uids"] == [0, 0, 0]


def test_asan_pass_through_untagged_and_already_there(henv, world, asan_build):
    report = henv.out_path()
    r = run_asan(henv, None, world.probe_argv(report, henv.variants["asan"]),
                 cgroup=henv.untagged_cgroup(), netns=world.private.path)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    hs.assert_not_joined(hs.read_report(report), world.private, world.private_token,
                         unprivileged=False)
    report = henv.out_path()
    r = run_asan(henv, asan_build, world.probe_argv(report, henv.variants["asan"]))
    assert r.returncode == 0 and r.stderr == b""
    hs.assert_joined(hs.read_report(report), world.host_ns, world.parent_token)


@pytest.mark.parametrize("case", ["unlisted", "relative", "unsafe-allow", "missing",
                                  "bad-tag", "v2-tag", "pin-gone", "nsid", "empty-argv0",
                                  "cgroup-namespace"])
def test_asan_refusals(henv, world, asan_build, case):
    """Each refusal with its status and exactly its message; nothing ran."""
    helper = henv.variants["asan"]
    report = henv.out_path()
    argv = world.probe_argv(report, helper)
    kw = {"netns": world.private.path}
    status = hs.EXIT_REFUSE
    b = asan_build
    dev, ino, nsid = b.identity
    cg = "/cgnetns/" + b.id
    want = {
        "unlisted": "%s: not in the allow list; root may add its canonical path to %s"
                    % (henv.unlisted_probe, henv.private_allow),
        "relative": "bin/probe: name a program by absolute path or bare name",
        "unsafe-allow": "unsafe allow list %s: %s is writable by group or others"
                        % (henv.private_allow, henv.private_allow),
        "missing": "%s: not found" % os.path.join(henv.bin, "missing"),
        "bad-tag": "malformed tag on cgroup %s" % cg,
        "v2-tag": "tag of cgroup %s has an unsupported format version (this helper reads v1)"
                  % cg,
        "pin-gone": "pin %s is gone (its build has ended?)" % b.id,
        "nsid": "pin %s: namespace id differs from its tag (namespace replaced)" % b.id,
        "empty-argv0": "refusing to run with an empty argv[0]",
        # a cgroup namespace rooted at the build: its path reads "/"
        "cgroup-namespace": re.compile(r"process \d+ is not in cgroup / of the cgroup2 mount "
                                       r"\(cgroup namespace or mount mismatch\)"),
    }[case]
    try:
        if case == "unlisted":
            argv = [helper, henv.unlisted_probe, "report", report]
            status = hs.EXIT_NOT_USABLE
        elif case == "relative":
            argv = [helper, "bin/probe", "report", report]
            status = hs.EXIT_NOT_USABLE
        elif case == "missing":
            argv = [helper, "missing", "report", report]
            status = hs.EXIT_NOT_FOUND
        elif case == "unsafe-allow":
            os.chmod(henv.private_allow, 0o666)
        elif case == "bad-tag":
            b.set_tag("v1 pin=%s dev=%d ino=%d nsid=%d " % (b.id, dev, ino, nsid))
        elif case == "v2-tag":
            b.set_tag("v2 whatever")
        elif case == "pin-gone":
            b.unpin()
        elif case == "nsid":
            b.set_tag(hs.tag_value(b.id, dev, ino, nsid + 7))
        elif case == "empty-argv0":
            argv = [henv.probe, "launch", henv.out_path("l"), "--argv0=", "--"] + argv
        elif case == "cgroup-namespace":
            kw["unshare"] = ["-C"]
        r = run_asan(henv, b, argv, **kw)
    finally:
        os.chmod(henv.private_allow, 0o644)
    assert r.returncode == status, (r.returncode, r.stderr)
    line = hs.one_line(r.stderr)[len("cgnetns-exec: "):]
    if isinstance(want, str):
        assert line == want
    else:
        assert want.fullmatch(line), line
    hs.assert_not_run(report)


def test_asan_huge_environment_and_closed_fds(henv, world, asan_build):
    """Real root is not in secure mode: fds 0-2 stay closed (the program sees
    them closed too), the helper's own fds land there and are all closed by
    O_CLOEXEC before the program runs; huge argv and environment pass."""
    launched, report = henv.out_path("launch"), henv.out_path()
    env = dict(SAN_ENV)
    env.update({"BIG%d" % i: "z" * 3000 for i in range(100)})
    args = ["q%d" % i for i in range(5000)]
    r = run_asan(henv, asan_build,
                 [henv.probe, "launch", launched, "--close=0", "--close=1", "--close=2", "--"]
                 + world.probe_argv(report, henv.variants["asan"]) + args,
                 netns=world.private.path, env=env)
    assert r.returncode == 0
    got, want = hs.read_report(report), hs.read_report(launched)
    hs.assert_joined(got, world.host_ns, world.parent_token)
    assert got["fds"] == {} and want["fds"] == {}
    assert got["env_b"] == want["env_b"] and got["argv_b"] == want["argv_b"]
    # a refusal with fds 0-2 closed: exit status right, nothing run
    r = run_asan(henv, asan_build,
                 [henv.probe, "launch", launched, "--close=0", "--close=1", "--close=2", "--",
                  henv.variants["asan"], henv.unlisted_probe, "report", report + "2"],
                 netns=world.private.path)
    assert r.returncode == hs.EXIT_NOT_USABLE
    hs.assert_not_run(report + "2")


def test_asan_masquerade(henv, world, asan_build):
    d = os.path.join(henv.tdir, "amasq-" + os.urandom(3).hex())
    os.mkdir(d)
    os.symlink(henv.variants["asan"], os.path.join(d, henv.probe_name))
    report = henv.out_path()
    r = run_asan(henv, asan_build, [os.path.join(d, henv.probe_name), "report", report,
                                    "--connect=%d" % world.port], netns=world.private.path)
    assert r.returncode == 0, r.stderr
    hs.assert_joined(hs.read_report(report), world.host_ns, world.parent_token)


# ---------------------------------------------------------------------------
# the parsers

@pytest.fixture(scope="module")
def parsecheck(henv):
    exe = os.path.join(henv.tdir, "parsecheck")
    hs.sh(["clang", "-std=gnu11", "-g", "-O1", "-fsanitize=address,undefined",
           "-fno-sanitize-recover=all", "-Wall", "-Wextra", "-Werror",
           "-I", hs.HELPER_SRC, "-o", exe,
           os.path.join(hs.HELPER_SRC, "testsupport", "parsecheck.c"),
           os.path.join(hs.HELPER_SRC, "parse.c")])

    def check(*args, data):
        path = os.path.join(henv.out, "parse-input-" + os.urandom(4).hex())
        with open(path, "wb") as f:
            f.write(data)
        try:
            r = subprocess.run([exe] + list(args) + [path],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=SAN_ENV, timeout=30)
        finally:
            os.unlink(path)
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        return r.stdout.decode(errors="replace").rstrip("\n")

    return check


@pytest.mark.parametrize("data,want", CGROUP_CASES)
def test_parse_cgroup_file(parsecheck, data, want):
    assert parsecheck("cgroup", data=data) == want


@pytest.mark.parametrize("data,want", TAG_CASES)
def test_parse_tag(parsecheck, data, want):
    assert parsecheck("tag", data=data) == want


@pytest.mark.parametrize("program,data,want", ALLOW_CASES)
def test_parse_allow(parsecheck, program, data, want):
    assert parsecheck("allow", program, data=data) == want


def test_libfuzzer_harnesses_run(henv):
    """Each harness builds and runs over its seeds and briefly beyond."""
    bdir = os.path.join(henv.tdir, "fuzzbuild")
    hs.sh(["make", "-s", "-C", hs.HELPER_SRC, "B=" + bdir, "fuzzers"], timeout=300)
    for name in ("cgroup", "tag", "allow"):
        corpus = os.path.join(bdir, "corpus-" + name)
        os.makedirs(corpus, exist_ok=True)
        r = subprocess.run([os.path.join(bdir, "fuzz", "fuzz-" + name), "-max_total_time=3",
                            "-dict=" + os.path.join(hs.HELPER_SRC, "fuzz", name + ".dict"),
                            corpus, os.path.join(hs.HELPER_SRC, "fuzz", "seeds", name)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120,
                           cwd=bdir)
        assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
