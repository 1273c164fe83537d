"""cgnetns-gc on the real kernel (issue 6, THREATS.md 18): after cgnetns-run was
killed with SIGKILL at any point, gc leaves nothing behind; run during live
builds, it removes nothing of them.

The fault points are Build's (tests/fault_run.py POINT: after-record|after-cgroup|
after-pin|after-tag|teardown: the run SIGKILLs itself there); "mid-build" is a
kill -9 from outside while the command runs.
"""

import json
import os
import signal
import subprocess
import threading
import time

import psutil

from cgnetns import cgroups, namespaces, records, tags
from cgnetns.build import Build

from conftest import CGNETNS_RUN, PY, fault_run, host_state, repo_env, run


MINE = ("gc",)
LEAK_PREFIX = MINE  # conftest.clean_host checks only these



GC = [PY, "-m", "cgnetns.cli.gc"]
FAULT_POINTS = ["after-record", "after-cgroup", "after-pin", "after-tag", "teardown"]


def state_of(name, root=None):
    """Everything on the host that belongs to builds named NAME-<hex>."""
    root = root or cgroups.find_cgroup2()
    s = host_state(root)
    mine = {k: {x for x in v if os.path.basename(x).startswith(name + "-")} for k, v in s.items()}
    mine["tagged"] = set()
    for rel in mine["cgroups"]:
        path = os.path.join(root, cgroups.CGNETNS_SUBTREE, rel)
        if tags.read_raw_tag(path) is not None:
            mine["tagged"].add(rel)
    return mine


def gc(*args):
    r = run(GC + list(args), env=repo_env())
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def test_gc_after_each_fault_point_leaves_nothing(clean_host):
    expect = {
        # what each fault point leaves: record, cgroup, pin, tag
        "after-record": {"record"},
        "after-cgroup": {"record", "cgroup"},
        "after-pin": {"record", "cgroup", "pin"},
        "after-tag": {"record", "cgroup", "pin", "tag"},
        "teardown": {"record", "cgroup", "pin", "tag"},
    }
    for point in FAULT_POINTS:
        name = "gcf-" + point
        r = run(fault_run(point) + ["--name", name, "--", "true"], env=repo_env())
        assert r.returncode == -signal.SIGKILL, (point, r.stderr)
        left = state_of(name)
        ids = {p[:-5] for p in left["pins"] if p.endswith(".json")}
        assert len(ids) == 1, (point, left)
        build_id = ids.pop()
        got = {"record"}
        if left["cgroups"]:
            got.add("cgroup")
        if build_id in left["pins"]:
            got.add("pin")
            assert namespaces.pin_path(build_id) in left["mounts"]
        if left["tagged"]:
            got.add("tag")
        assert got == expect[point], (point, left)
        # --dry-run reports and changes nothing
        rc, out, err = gc("--dry-run")
        assert rc == 0, err
        assert "would remove record %s" % records.record_path(build_id) in out
        assert state_of(name) == left
        rc, out, err = gc()
        assert rc == 0 and err == "", err
        assert "removed record %s" % records.record_path(build_id) in out
        if "cgroup" in got:
            assert "removed cgroup /cgnetns/%s" % build_id in out
        if "pin" in got:
            assert "removed pin %s" % namespaces.pin_path(build_id) in out
        if "tag" in got:
            assert "removed tag of cgroup /cgnetns/%s" % build_id in out
        assert state_of(name) == {"cgroups": set(), "pins": set(), "mounts": set(),
                                  "tagged": set()}, point


def test_gc_after_kill_9_mid_build_kills_the_leftovers(clean_host):
    p = subprocess.Popen(CGNETNS_RUN + ["--unshare-net", "--user", "nobody", "--name", "gck9",
                                        "--", "sh", "-c", "sleep 300 & echo ready; wait"],
                         env=repo_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    left = state_of("gck9")
    (cg,) = left["cgroups"]
    path = os.path.join(cgroups.find_cgroup2(), cgroups.CGNETNS_SUBTREE, cg)
    members = cgroups.procs(path)
    assert len(members) == 2  # sh and sleep
    p.kill()
    assert p.wait(10) == -signal.SIGKILL
    p.stdout.close()
    p.stderr.close()
    assert cgroups.procs(path) == members  # the build outlived its run
    rc, out, err = gc("--json")
    assert rc == 0, err
    doc = json.loads(out)
    kinds = [a["action"] for a in doc["actions"] if a["id"] == cg]
    assert kinds == ["remove-tag", "kill", "remove-cgroup", "remove-pin", "remove-record"]
    kill = [a for a in doc["actions"] if a["action"] == "kill" and a["id"] == cg][0]
    assert sorted(kill["pids"]) == sorted(members) and all(a["done"] for a in doc["actions"])
    assert doc["dry_run"] is False and doc["failed"] == 0
    for pid in members:
        try:
            assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            pass
    assert state_of("gck9") == {"cgroups": set(), "pins": set(), "mounts": set(), "tagged": set()}


def _snapshot(builds):
    out = {}
    for b in builds:
        out[b.id] = (os.path.isdir(b.cgroup_path), tags.read_raw_tag(b.cgroup_path)
                     if os.path.isdir(b.cgroup_path) else None,
                     os.path.exists(b.pin_path), namespaces.is_mounted(b.pin_path),
                     os.path.exists(records.record_path(b.id)), sorted(cgroups.procs(b.cgroup_path)))
    return out


def test_gc_during_live_builds_removes_nothing(clean_host):
    runs = []
    with Build(name="gclive-a") as a, Build(name="gclive-pinless") as nopin, \
            Build(name="gclive-retagged") as retag:
        # live builds changed by hand are still live: gc must not touch them
        subprocess.run(["umount", nopin.pin_path], check=True)
        os.unlink(nopin.pin_path)
        subprocess.run(["setfattr", "-n", tags.TAG_XATTR, "-v", "v2 whatever", retag.cgroup_path],
                       check=True)
        sleeper = a.spawn(["sleep", "300"], user="nobody", unshare_net=True)
        nested = os.path.join(a.cgroup_path, "emerge-1")
        os.mkdir(nested)
        try:
            for i in range(3):
                p = subprocess.Popen(CGNETNS_RUN + ["--unshare-net", "--name", "gclive%d" % i, "--",
                                                    "sh", "-c", "echo ready; sleep 300"],
                                     env=repo_env(), stdout=subprocess.PIPE)
                runs.append(p)
            for p in runs:
                assert p.stdout.readline() == b"ready\n"
            mine = set()
            for i in range(3):
                mine |= {x for x in state_of("gclive%d" % i)["cgroups"]}
            assert len(mine) == 3
            before = _snapshot([a, nopin, retag])
            before_runs = {n: state_of("gclive%d" % n) for n in range(3)}
            rc, out, err = gc("--json")
            assert rc == 0, err
            doc = json.loads(out)
            touched = {x["id"] for x in doc["actions"]}
            ours = mine | {a.id, nopin.id, retag.id}
            assert not touched & ours, doc["actions"]
            assert ours <= set(doc["live"])
            assert _snapshot([a, nopin, retag]) == before
            assert {n: state_of("gclive%d" % n) for n in range(3)} == before_runs
            assert os.path.isdir(nested) and sleeper.poll() is None
            rc, out, err = gc("--dry-run")
            assert rc == 0 and not any(i in out for i in ours), out
        finally:
            for p in runs:
                p.send_signal(signal.SIGTERM)
            rcs = [p.wait(30) for p in runs]
            sleeper.kill()
            sleeper.wait()
        assert rcs == [128 + signal.SIGTERM] * 3


def test_gc_while_builds_come_and_go(clean_host):
    """gc in a loop while builds start and end: no build fails, gc removes nothing of theirs."""
    stop = threading.Event()
    results = []

    def builds():
        while not stop.is_set():
            procs = [subprocess.Popen(CGNETNS_RUN + ["--name", "gcrace", "--", "true"],
                                      env=repo_env(), stderr=subprocess.PIPE) for _ in range(4)]
            for p in procs:
                _, err = p.communicate(timeout=60)
                results.append((p.returncode, err))
    t = threading.Thread(target=builds)
    t.start()
    gcs = []
    try:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            gcs.append(gc("--json"))
    finally:
        stop.set()
        t.join(120)
    assert len(results) >= 4 and all(rc == 0 for rc, _ in results), results
    for rc, out, err in gcs:
        assert rc == 0, err
        assert not [x for x in json.loads(out)["actions"] if x["id"].startswith("gcrace-")]
    assert state_of("gcrace") == {"cgroups": set(), "pins": set(), "mounts": set(),
                                  "tagged": set()}


def test_gc_untags_but_keeps_an_adopted_cgroup(clean_host, cg2root):
    path = os.path.join(cg2root, "gc-adopt-test-%d" % os.getpid())
    os.mkdir(path)
    try:
        code = ("from cgnetns.build import Build; import sys; "
                "Build.adopt(sys.argv[1], name='gcadopt', fault='after-tag')")
        r = run([PY, "-c", code, path], env=repo_env())
        assert r.returncode == -signal.SIGKILL, r.stderr
        assert tags.read_raw_tag(path) is not None
        rc, out, err = gc()
        assert rc == 0, err
        assert "removed tag of cgroup /%s" % os.path.basename(path) in out
        assert "removed cgroup" not in out
        assert os.path.isdir(path) and tags.read_raw_tag(path) is None
        assert not state_of("gcadopt")["pins"]
    finally:
        os.rmdir(path)


def test_gc_leaves_a_populated_cgroup_without_record_alone(clean_host, cg2root):
    """Nothing proves cgnetns made it: its processes are not killed."""
    base = os.path.join(cg2root, cgroups.CGNETNS_SUBTREE)
    cgroups.ensure_dir(base)
    stray = os.path.join(base, "gcstray-%d" % os.getpid())
    empty = os.path.join(base, "gcempty-%d" % os.getpid())
    os.mkdir(stray)
    os.mkdir(empty)
    tags.write_tag(empty, "gcempty-%d" % os.getpid(), namespaces.current_identity())
    p = subprocess.Popen(["sleep", "300"])
    try:
        cgroups.attach(stray, p.pid)
        rc, out, err = gc()
        assert rc == 0, err
        assert "left alone /cgnetns/%s" % os.path.basename(stray) in out
        assert p.poll() is None and os.path.isdir(stray)
        assert "removed tag of cgroup /cgnetns/%s" % os.path.basename(empty) in out
        assert "removed cgroup /cgnetns/%s" % os.path.basename(empty) in out
        assert not os.path.exists(empty)
    finally:
        p.kill()
        p.wait()
        cgroups.remove(stray)
        cgroups.remove(empty)
        cgroups.remove_if_empty(base)


def test_gc_bad_input_and_no_root():
    rc, out, err = gc("--bogus")
    assert rc == 2 and err.count("\n") == 1 and "unrecognized" in err
    code = ("import os, sys; from cgnetns.cli import gc; import cgnetns.gc, json;"
            "os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534);"
            "sys.exit(gc.main([]))")
    r = run([PY, "-c", code], env=repo_env())
    assert r.returncode == 4 and r.stderr.count(b"\n") == 1 and b"must run as root" in r.stderr
    rc, out, err = gc("--dry-run")
    assert rc == 0, err
    # Other suites' builds may come and go meanwhile: every line is a report.
    for line in out.splitlines():
        assert line.startswith(("nothing to remove", "would", "left alone")), line
