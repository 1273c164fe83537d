"""Real systemd (issue 5): Debian bookworm's systemd booted as PID 1 by
systemd-nspawn (cgroup2 only: SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1), with cgnetns
installed the way `make install` does it (tests/systemd_support.py).  Inside:

* the contrib units socket-activate cgnetnsd (a request starts the service);
* cgnetns-run finds a Delegate=yes unit, or obtains a Delegate=yes scope with
  systemd-run, and creates its build cgroup only inside it (the build's own
  0:: line, trusted.delegate on its parent); outside one it refuses;
* a build's probe (--unshare-net, as nobody) resolves to the approved namespace
  through the setuid helper and, under setpriv --no-new-privs, through the
  socket-activated broker.

Each test runs twice: systemd on cgroup2 only, and in systemd's hybrid layout
(cgroup2 at /sys/fs/cgroup/unified, as on this host).

The root is debootstrapped once and cached in /var/cache/cgnetns-test (about
a minute and a half the first time; a boot is about a second).  The tests skip
only when debootstrap cannot download from the Debian archive; everything else
that goes wrong is a failure.  Needs: debootstrap, systemd-container
(systemd-nspawn), util-linux (unshare, nsenter), make; the helper built in
helper/ (`make -C helper`).
"""

import os
import re
import shutil

import pytest

import systemd_support as sd



def test_tools_are_installed():
    """debootstrap and systemd-nspawn come from tools/ensure-deps test; missing
    ones are a failure, not a reason to skip the container tests."""
    assert shutil.which("debootstrap", path=sd.SYSTEM_PATH), "apt-get install debootstrap"
    assert shutil.which("systemd-nspawn", path=sd.SYSTEM_PATH), "apt-get install systemd-container"

NOBODY_UID = "65534"


@pytest.fixture(scope="module", params=["unified", "hybrid"])
def container(request):
    try:
        root = sd.debootstrap_root()
    except sd.ArchiveUnreachable as e:
        pytest.skip("the Debian archive cannot be reached, so no container root can be "
                    "built: %s" % e)
    c = sd.Container(root, unified=request.param == "unified")
    with c:
        yield c
    # close() raised if anything could not be removed; check the host anyway
    for path in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup"):
        assert not os.path.exists(os.path.join(path, "cgnetns-nspawn-" + c.tag))
    assert c.nspawn.poll() is not None
    assert not [d for d in os.listdir(sd.CACHE_DIR) if d.startswith("ct-%s-" % c.tag)]
    assert not sd._mounts_below(sd.CACHE_DIR)


def ok(r):
    assert r.returncode == 0, "exit %d\nstdout: %s\nstderr: %s" % (r.returncode, r.stdout, r.stderr)
    return r.stdout


def fields(line):
    return dict(kv.split("=", 1) for kv in line.split())


def test_systemd_is_pid1_on_cgroup2_only(container):
    assert ok(container.enter(["cat", "/proc/1/comm"])).strip() == "systemd"
    assert container.state in ("running", "degraded")
    fstype = ok(container.enter(["stat", "-f", "-c", "%T", "/sys/fs/cgroup"])).strip()
    assert fstype == ("cgroup2fs" if container.unified else "tmpfs")
    assert ok(container.enter(["stat", "-f", "-c", "%T", container.cg2])).strip() == "cgroup2fs"
    # tmpfiles.d from contrib made /run/cgnetns at boot
    assert ok(container.enter(["stat", "-c", "%a %U", "/run/cgnetns", "/run/cgnetns/pins"])) \
        .split("\n")[:2] == ["755 root", "700 root"]


def test_contrib_units_socket_activate_cgnetnsd(container):
    c = container
    c.enter(["systemctl", "stop", "cgnetnsd.service", "cgnetnsd.socket"])
    ok(c.enter(["systemctl", "start", "cgnetnsd.socket"]))
    assert c.enter(["systemctl", "is-active", "cgnetnsd.service"]).stdout.strip() == "inactive"
    assert ok(c.enter(["stat", "-c", "%a %F", "/run/cgnetns/cgnetnsd.sock"])).strip() == \
        "666 socket"
    # A request: the helper without privilege (no_new_privs), outside any build.
    out = ok(c.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                    "--no-new-privs", "cgnetns-exec", "probe"]))
    f = fields(out)
    assert f["uid"] == NOBODY_UID and f["nnp"] == "1", out
    assert c.enter(["systemctl", "is-active", "cgnetnsd.service"]).stdout.strip() == "active"
    journal = ok(c.enter(["journalctl", "-b", "-u", "cgnetnsd.service", "-o", "cat",
                          "--no-pager"]))
    assert re.search(r"program=\S*probe: pass", journal), journal


def build_report(c):
    """A shell script run as the build (root): its cgroup, its parent, their xattrs."""
    return ("cg=$(sed -n 's/^0:://p' /proc/self/cgroup); parent=${cg%/*}; "
            "echo cgroup=$cg; echo parent=$parent; "
            "echo parent_delegate=$(getfattr --only-values -n trusted.delegate CG2$parent); "
            "echo own_delegate=$(getfattr --only-values -n trusted.delegate CG2$cg); "
            "echo tag=$(getfattr --only-values -n trusted.cgnetns CG2$cg)").replace("CG2", c.cg2)


def report(out):
    return dict(l.split("=", 1) for l in out.splitlines() if "=" in l)


def assert_build_in_delegated(rep, unit_suffix):
    parent = rep["parent"]
    assert parent.startswith("/system.slice/") and parent.endswith(unit_suffix), rep
    assert rep["cgroup"].startswith(parent + "/") and rep["cgroup"].count("/") == 3, rep
    assert rep["parent_delegate"] == "1", rep
    assert rep["own_delegate"] == "1", rep
    assert rep["tag"].startswith("v1 pin="), rep


def no_fallback_subtree(c):
    """The non-systemd place (<root>/cgnetns) is never used under systemd."""
    assert c.enter(["test", "-e", c.cg2 + "/cgnetns"]).returncode != 0


def test_cgnetns_run_obtains_a_delegate_scope(container):
    """From a plain service (not delegated) cgnetns-run re-executes itself in
    systemd-run --scope -p Delegate=yes and creates the build cgroup in it."""
    c = container
    assert "trusted.delegate=" not in c.run(
        ["sh", "-c", "getfattr -n trusted.delegate " + c.cg2
         + "$(sed -n 's/^0:://p' /proc/self/cgroup) 2>&1"]).stdout
    rep = report(ok(c.run(["cgnetns-run", "--no-broker", "--", "sh", "-c", build_report(c)])))
    assert_build_in_delegated(rep, ".scope")
    no_fallback_subtree(c)
    # the build cgroup and the scope are gone afterwards
    assert c.enter(["test", "-e", c.cg2 + rep["cgroup"]]).returncode != 0


def test_cgnetns_run_finds_a_delegated_service(container):
    c = container
    rep = report(ok(c.run(["cgnetns-run", "--no-broker", "--", "sh", "-c", build_report(c)],
                          props=["Delegate=yes"])))
    assert_build_in_delegated(rep, ".service")
    no_fallback_subtree(c)


def test_cgnetns_run_refuses_outside_a_delegated_cgroup(container):
    """No systemd-run way out (the re-exec mark set): refusal, nothing made."""
    c = container
    r = c.enter(["systemd-run", "--wait", "--pipe", "--collect", "--quiet",
                 "-E", "CGNETNS_RUN_IN_SCOPE=1", "--", "cgnetns-run", "--no-broker", "--",
                 "touch", "/run/cgnetns-test-ran"])
    assert r.returncode == 125, (r.stdout, r.stderr)
    assert "Delegate=yes" in r.stderr, r.stderr
    assert c.enter(["test", "-e", "/run/cgnetns-test-ran"]).returncode != 0
    no_fallback_subtree(c)


def test_build_probe_resolves_through_helper_and_broker(container):
    """--unshare-net, as nobody: the probe reaches the approved namespace (the
    one cgnetns-run ran in) through the setuid helper (it runs there), and
    under no_new_privs through the socket-activated cgnetnsd (it stays in the
    build's namespace; its socket, made by the broker's supervisor, reaches a
    server in the approved one)."""
    import json
    import helper_support as hs
    c = container
    ok(c.enter(["systemctl", "start", "cgnetnsd.socket"]))
    approved = ok(c.run(["readlink", "/proc/self/ns/net"])).strip()
    token = "APPROVED-" + os.urandom(4).hex()
    server = hs.TokenServer(token, "/proc/%d/ns/net" % c.leader)
    try:
        out = ok(c.run(["cgnetns-run", "--unshare-net", "--user", "nobody", "--no-broker",
                        "--", "sh", "-c",
                        "echo own=$(readlink /proc/self/ns/net) cg=$(sed -n 's/^0:://p' "
                        "/proc/self/cgroup) links=$(ip -o link | cut -d: -f2 | tr -d ' ' | "
                        "paste -sd,); "
                        "cgnetns-exec probe; "
                        "setpriv --no-new-privs cgnetns-exec probe; "
                        "setpriv --no-new-privs cgnetns-exec netprobe report - "
                        "--connect=%d" % server.port]))
    finally:
        server.close()
    lines = out.strip().splitlines()
    assert len(lines) == 4, out
    build, via_helper, via_broker = (fields(l) for l in lines[:3])
    minted = json.loads(lines[3])
    assert build["own"] != approved and build["links"] == "lo", build
    assert re.fullmatch(r"/system\.slice/run-[^/]+\.scope/[^/]+", build["cg"]), build
    assert via_helper == {"netns": approved, "uid": NOBODY_UID, "nnp": "0",
                          "cgroup": build["cg"]}, out
    # a "#!" script through the broker: its own namespace, no socket minted
    assert via_broker == {"netns": build["own"], "uid": NOBODY_UID, "nnp": "1",
                          "cgroup": build["cg"]}, out
    assert minted["connect"] == "token:" + token, minted
    assert minted["uid"] == int(NOBODY_UID)
    assert "0::" + build["cg"] in minted["cgroup"]
    assert c.enter(["systemctl", "is-active", "cgnetnsd.service"]).stdout.strip() == "active"
    # journald takes the line in its own time: poll
    import time
    deadline = time.monotonic() + 10
    while True:
        journal = ok(c.enter(["journalctl", "-b", "-u", "cgnetnsd.service", "-o", "cat",
                              "--no-pager"]))
        if re.search(r"program=\S*netprobe: join", journal) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert re.search(r"program=\S*netprobe: join", journal), journal
