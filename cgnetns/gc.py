"""What cgnetns state exists on the host, and removing what dead runs left.

Owns :func:`inventory` (every build, live or dead: its record, cgroup, tag,
pin and, on request, its member processes — what ``cgnetns-show --all``
lists) and :func:`collect` (``cgnetns-gc``: find the debris of dead runs and
remove it, or only report it).

How a live run is told from a dead one: the process that owns a build holds an
exclusive flock(2) on its record ``/run/cgnetns/pins/<ID>.json`` for the
build's whole life (cgnetns/records.py); the kernel drops it however the owner
dies, so a record that can be locked belongs to a run that is gone — there is
no PID-reuse window.  gc holds the global lock ``pins/.lock`` exclusively
while it looks and removes; a build holds it shared while it sets up and tears
down, so gc never sees a half-made or half-removed build.  The listing (show)
takes no lock at all: it reads the lock table (``/proc/locks``).

What gc removes (and nothing else):

* for each dead record: the tag of its cgroup, the cgroup itself when the run
  created it (``owns_cgroup``, and its name is the build ID: processes still in
  it are killed first), the pin, then the record — in that order, so a gc that
  is itself killed leaves a record the next one follows;
* below ``<cgroup2 root>/cgnetns``: cgroups named like a build ID that belong
  to no live record (processes in them are killed);
* in the pins directory: pins (and pin mounts) of IDs with no live record.

Tagged cgroups elsewhere that no record names are reported, never touched: a
record is the only proof that cgnetns made them.
"""

import errno
import fcntl
import os
import time

from . import cgroups, namespaces, records, resolve, tags
from . import egress as _egress
from .errors import CgnetnsError, NoCgroup2Error

EXIT_PARTIAL = 1  # gc: something could not be removed


class Found:
    """One build as found on the host (live or dead).  See :meth:`to_dict`."""

    def __init__(self, build_id):
        self.id = build_id
        self.record_path = None
        self.record = None           # dict, {} when unreadable, None when absent
        self.live = False
        self.owner_pid = None        # from the record
        self.lock_pid = None         # from the lock table
        self.cgroup = None           # relative to the cgroup2 root
        self.cgroup_path = None
        self.owns_cgroup = None
        self.tagged = []             # [(rel, raw bytes, Tag or None, error or None)]
        self.pin_file = False
        self.pin_mounted = False
        self.pin = None              # dict from resolve.inspect_pin
        self.members = None          # list of dicts when asked for

    @property
    def name(self):
        if self.record and isinstance(self.record.get("name"), str):
            return self.record["name"]
        return self.id.rsplit("-", 1)[0] if "-" in self.id else self.id

    @property
    def created(self):
        c = (self.record or {}).get("created")
        return c if isinstance(c, (int, float)) else None

    def tag_of_own_cgroup(self):
        for rel, raw, tag, err in self.tagged:
            if rel == self.cgroup:
                return rel, raw, tag, err
        return self.tagged[0] if self.tagged else None

    def approved(self):
        t = self.tag_of_own_cgroup()
        if t is None or t[2] is None:
            return None
        return namespaces.NsIdentity(t[2].dev, t[2].ino, t[2].nsid)

    def to_dict(self, now=None):
        now = time.time() if now is None else now
        t = self.tag_of_own_cgroup()
        return {
            "id": self.id,
            "name": self.name,
            "state": "live" if self.live else "dead" if self.record_path else "no-record",
            "owner_pid": self.owner_pid,
            "created": self.created,
            "age": round(now - self.created, 3) if self.created is not None else None,
            "record": self.record_path,
            "cgroup": self.cgroup,
            "cgroup_path": self.cgroup_path,
            "cgroup_exists": bool(self.cgroup_path and os.path.isdir(self.cgroup_path)),
            "owns_cgroup": self.owns_cgroup,
            "tagged_cgroup": t[0] if t else None,
            "tag": t[1].decode("ascii", "backslashreplace") if t else None,
            "tag_error": t[3] if t else None,
            "approved_netns": resolve.ns_dict(self.approved()),
            "pin": self.pin,
            "members": self.members,
        }


def _walk_cgroups(root):
    """Every cgroup directory from ROOT down (relative paths), never following
    symlinks or leaving the mount."""
    root_dev = os.stat(root).st_dev
    stack = ["/"]
    while stack:
        rel = stack.pop()
        yield rel
        path = cgroups.to_abs(root, rel)
        try:
            with os.scandir(path) as it:
                for e in it:
                    try:
                        if e.is_dir(follow_symlinks=False) and e.stat(follow_symlinks=False).st_dev == root_dev:
                            stack.append(rel.rstrip("/") + "/" + e.name)
                    except OSError:
                        continue
        except OSError:
            continue


def inventory(*, sys_cgroup=cgroups.SYS_CGROUP, run_dir=namespaces.RUN_DIR, proc="/proc",
              liveness="locks", members=False, cgroup_root=None):
    """Every build on the host, live or dead, as a list of :class:`Found`.

    LIVENESS: ``locks`` reads /proc/locks (takes no lock: for show);
    ``flock`` tries each record's lock (only while holding the global lock
    exclusively: for gc).  Needs root: the pins directory is root-only and
    tags are ``trusted.*``.
    """
    if not resolve.can_read_trusted_xattrs(proc):
        raise resolve.NoPermission("listing builds needs root (tags are trusted.* attributes, "
                                   "the pins directory is root-only)",
                                   "run it as root, e.g. with sudo")
    found = {}

    def get(build_id):
        if build_id not in found:
            found[build_id] = Found(build_id)
        return found[build_id]

    if cgroup_root is None:
        try:
            cgroup_root = cgroups.find_cgroup2(sys_cgroup)
        except NoCgroup2Error:
            cgroup_root = None
    pdir = namespaces.pins_dir(run_dir)
    holders = resolve.lock_holders(proc) if liveness == "locks" else None
    # Records and pins.
    try:
        names = sorted(os.listdir(pdir))
    except FileNotFoundError:
        names = []
    for n in names:
        path = os.path.join(pdir, n)
        if n.endswith(records.RECORD_SUFFIX) and tags.valid_id(n[:-len(records.RECORD_SUFFIX)]):
            f = get(n[:-len(records.RECORD_SUFFIX)])
            f.record_path = path
            f.record = records.read_record(path) or {}
            if liveness == "locks":
                f.live, f.lock_pid = resolve.record_owner(path, holders)
            else:
                f.live = records.record_is_live(path)
            f.owner_pid = f.record.get("pid") if isinstance(f.record.get("pid"), int) else None
            cg = f.record.get("cgroup")
            if isinstance(cg, str) and cg.startswith("/"):
                f.cgroup = cg
            if isinstance(f.record.get("owns_cgroup"), bool):
                f.owns_cgroup = f.record["owns_cgroup"]
        elif tags.valid_id(n):
            get(n).pin_file = True
    for mp in namespaces.pin_mounts(run_dir, proc):
        base = os.path.basename(mp)
        if os.path.dirname(mp) == pdir and tags.valid_id(base):
            get(base).pin_mounted = True
    orphans = []
    if cgroup_root is not None:
        subtree = "/" + cgroups.CGNETNS_SUBTREE
        for rel in _walk_cgroups(cgroup_root):
            path = cgroups.to_abs(cgroup_root, rel)
            parent, base = os.path.split(rel)
            try:
                raw = tags.read_raw_tag(path)
            except OSError:
                raw = None
            if raw is None:
                if parent == subtree and tags.valid_id(base):
                    f = get(base)
                    if f.cgroup is None:
                        f.cgroup = rel
                continue
            try:
                tag, err = tags.parse_tag(raw), None
            except CgnetnsError as e:
                tag, err = None, e.message
            if tag is not None:
                owner = tag.pin
            elif parent == subtree and tags.valid_id(base):
                owner = base
            else:
                orphans.append((rel, raw, err))
                continue
            f = get(owner)
            f.tagged.append((rel, raw, tag, err))
            if f.cgroup is None:
                f.cgroup = rel
    for f in found.values():
        if f.cgroup is not None and cgroup_root is not None:
            try:
                f.cgroup_path = cgroups.to_abs(cgroup_root, f.cgroup)
            except CgnetnsError:
                f.cgroup_path = None
        t = f.tag_of_own_cgroup()
        if f.pin_file or f.pin_mounted or (t and t[2]):
            f.pin = resolve.inspect_pin(f.id, t[2] if t else None, run_dir)
        if members and f.cgroup_path:
            f.members = list_members(f.cgroup_path, f.approved(), cgroup_root, proc)
    out = sorted(found.values(), key=lambda f: (f.created or 0, f.id))
    for rel, raw, err in orphans:
        f = Found(None)
        f.cgroup = rel
        f.cgroup_path = cgroups.to_abs(cgroup_root, rel)
        f.tagged.append((rel, raw, None, err))
        out.append(f)
    return out


def list_members(cgroup_path, approved, cgroup_root, proc="/proc"):
    """The processes in CGROUP_PATH and below: pid, user, command, cgroup,
    own netns and whether it is the approved one right now."""
    import psutil
    out = []
    for d in sorted(cgroups.subtree(cgroup_path)):
        for pid in cgroups.procs(d):
            m = {"pid": pid, "uid": None, "user": None, "command": None,
                 "cgroup": cgroups.to_rel(cgroup_root, d), "netns": None,
                 "in_approved_netns": None}
            try:
                p = psutil.Process(pid)
                with p.oneshot():
                    m["uid"] = p.uids().real
                    try:
                        m["user"] = p.username()
                    except (KeyError, psutil.Error):
                        m["user"] = str(m["uid"])
                    cmd = p.cmdline()
                    m["command"] = " ".join(cmd) if cmd else "[%s]" % p.name()
            except psutil.NoSuchProcess:
                continue
            except psutil.Error:
                pass
            try:
                fd = os.open(os.path.join(proc, str(pid), "ns", "net"), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    ident = namespaces.identity_of_fd(fd)
                finally:
                    os.close(fd)
                m["netns"] = resolve.ns_dict(ident)
                if approved is not None:
                    m["in_approved_netns"] = resolve.same_netns(ident, approved)
            except (FileNotFoundError, ProcessLookupError):
                continue  # exited meanwhile
            except OSError:
                pass
            out.append(m)
    return out


# ----------------------------------------------------------------------- gc

class Action:
    """One thing gc removes (or would remove).  See :meth:`to_dict`."""

    def __init__(self, kind, path, build_id=None, why=None, pids=None):
        self.kind = kind          # remove-tag, kill, remove-cgroup, remove-pin, remove-record
        self.path = path
        self.id = build_id
        self.why = why
        self.pids = pids
        self.done = False
        self.error = None

    def describe(self, dry_run):
        verb = {"remove-tag": ("removed tag of cgroup", "would remove tag of cgroup"),
                "kill": ("killed", "would kill"),
                "remove-cgroup": ("removed cgroup", "would remove cgroup"),
                "remove-pin": ("removed pin", "would remove pin"),
                "remove-record": ("removed record", "would remove record"),
                "remove-filter": ("removed egress filter", "would remove egress filter"),
                }[self.kind]
        text = verb[1 if dry_run else 0]
        if self.kind == "kill":
            n = len(self.pids or [])
            text += " %d process%s in cgroup %s (%s)" % (
                n, "" if n == 1 else "es", self.path, " ".join(map(str, self.pids or [])))
        else:
            text += " " + self.path
        if self.why:
            text += ": " + self.why
        return text

    def to_dict(self):
        return {"action": self.kind, "path": self.path, "id": self.id, "why": self.why,
                "pids": self.pids, "done": self.done, "error": self.error}


class Result:
    def __init__(self, dry_run):
        self.dry_run = dry_run
        self.actions = []
        self.live = []       # ids of live builds (untouched)
        self.skipped = []    # [{"path", "why"}]: debris-looking things gc leaves alone

    @property
    def failed(self):
        return [a for a in self.actions if a.error]

    def to_dict(self):
        return {"version": 1, "dry_run": self.dry_run,
                "actions": [a.to_dict() for a in self.actions],
                "live": self.live, "skipped": self.skipped,
                "failed": len(self.failed)}


def _lock_exclusive(run_dir, timeout):
    """The global lock, exclusively; returns the fd that holds it."""
    path = os.path.join(namespaces.ensure_run_dirs(run_dir), records.GLOBAL_LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise CgnetnsError("the global lock %s stayed busy for %g s" % (path, timeout),
                                   "a build is stuck setting up or tearing down; "
                                   "try again later") from None
            time.sleep(0.01)


def collect(*, dry_run=False, sys_cgroup=cgroups.SYS_CGROUP, run_dir=namespaces.RUN_DIR,
            proc="/proc", lock_timeout=30.0, on_action=None):
    """Find the debris of dead runs and remove it (or, with DRY_RUN, only find it).

    Returns a :class:`Result`.  ON_ACTION(action) is called after each action
    (done or failed) so that a command can report as it goes.  Raises
    NoPermission when not root, CgnetnsError when the global lock stays busy.
    """
    if not resolve.can_read_trusted_xattrs(proc) or os.geteuid() != 0:
        raise resolve.NoPermission("cgnetns-gc must run as root", "run it as root, e.g. with sudo")
    try:
        cgroup_root = cgroups.find_cgroup2(sys_cgroup)
    except NoCgroup2Error:
        cgroup_root = None
    result = Result(dry_run)
    if dry_run and not os.path.isdir(namespaces.pins_dir(run_dir)):
        lock_fd = None  # no build can exist without it; --dry-run creates nothing
    else:
        lock_fd = _lock_exclusive(run_dir, lock_timeout)
    try:
        found = inventory(sys_cgroup=sys_cgroup, run_dir=run_dir, proc=proc, liveness="flock",
                          cgroup_root=cgroup_root)
        live_ids = {f.id for f in found if f.live}
        live_cgroups = {f.cgroup for f in found if f.live and f.cgroup}
        result.live = sorted(live_ids)
        for f in found:
            if f.live:
                continue
            for a in _with_filter(_plan(f, cgroup_root, live_cgroups, run_dir, result), f,
                                  run_dir):
                result.actions.append(a)
                if not dry_run:
                    _do(a, cgroup_root, run_dir)
                if on_action is not None:
                    on_action(a)
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
    return result


def _below(rel, others):
    return any(rel == o or rel.startswith(o.rstrip("/") + "/") for o in others)


def _plan(f, cgroup_root, live_cgroups, run_dir, result):
    """The actions that remove dead build F, in order."""
    acts = []
    subtree = "/" + cgroups.CGNETNS_SUBTREE
    why = ("its run (pid %s) is gone" % f.owner_pid if f.record_path and f.owner_pid
           else "its run is gone" if f.record_path else "no run record")
    if f.id is None:
        for rel, raw, tag, err in f.tagged:
            result.skipped.append({"path": rel, "why": "tagged (%s) but no record names it and "
                                   "it is outside %s: remove the tag by hand if it is debris"
                                   % (err or "unknown pin", subtree)})
        return acts
    if cgroup_root is None and (f.cgroup or f.tagged):
        result.skipped.append({"path": f.record_path or namespaces.pin_path(f.id, run_dir),
                               "why": "no cgroup2 mounted here: its cgroup %s cannot be removed"
                               % f.cgroup})
        return acts
    # Which cgroups of this build may gc touch?
    own = f.cgroup
    has_record = f.record_path is not None
    candidates = []
    for rel, raw, tag, err in f.tagged:
        if rel not in candidates:
            candidates.append(rel)
    if own and own not in candidates and f.cgroup_path and os.path.isdir(f.cgroup_path):
        candidates.insert(0, own)
    for rel in candidates:
        if _below(rel, live_cgroups):
            result.skipped.append({"path": rel, "why": "inside a live build"})
            continue
        if cgroup_root is None:
            continue
        parent, base = os.path.split(rel)
        in_subtree = parent == subtree
        path = cgroups.to_abs(cgroup_root, rel)
        if has_record:
            if rel != own and not in_subtree:
                result.skipped.append({"path": rel, "why": "tagged for %s, but the record names "
                                       "another cgroup: remove the tag by hand if it is debris"
                                       % f.id})
                continue
            owned = rel == own and base == f.id and f.owns_cgroup is not False
        else:
            if not in_subtree:
                result.skipped.append({"path": rel, "why": "tagged for %s, which has no record, "
                                       "outside %s: remove the tag by hand if it is debris"
                                       % (f.id, subtree)})
                continue
            owned = tags.valid_id(base)
        pids = []
        if owned:
            for d in cgroups.subtree(path):
                pids += cgroups.procs(d)
            if pids and not has_record:
                result.skipped.append({"path": rel, "why": "processes %s are in it and no run "
                                       "record says cgnetns made it: kill them by hand (echo 1 > "
                                       "%s/cgroup.kill) if it is debris"
                                       % (" ".join(map(str, sorted(pids))), path)})
                continue
        if any(t[0] == rel for t in f.tagged):
            acts.append(Action("remove-tag", rel, f.id, why))
        if owned:
            if pids:
                acts.append(Action("kill", rel, f.id, "left in a dead build", sorted(pids)))
            acts.append(Action("remove-cgroup", rel, f.id, why))
    if f.pin_file or f.pin_mounted:
        acts.append(Action("remove-pin", namespaces.pin_path(f.id, run_dir), f.id, why))
    if f.record_path:
        acts.append(Action("remove-record", f.record_path, f.id,
                           "run of pid %s is gone" % f.owner_pid if f.owner_pid else None))
    return acts


def _with_filter(acts, f, run_dir):
    """ACTS with the removal of F's egress filter (cgnetns/egress.py) put
    after its processes are killed and before its cgroup and pin go (the
    filter is found through the pin and keyed by the cgroup)."""
    a = _egress.gc_action(f, run_dir, Action)
    if a is None:
        return acts
    at = next((i for i, x in enumerate(acts)
               if x.kind in ("remove-cgroup", "remove-pin", "remove-record")), len(acts))
    return acts[:at] + [a] + acts[at:]


def _do(a, cgroup_root, run_dir):
    try:
        if a.kind == "remove-filter":
            _egress.gc_remove(a, run_dir)
        elif a.kind == "remove-tag":
            tags.remove_tag(cgroups.to_abs(cgroup_root, a.path))
        elif a.kind == "kill":
            cgroups.kill(cgroups.to_abs(cgroup_root, a.path))
        elif a.kind == "remove-cgroup":
            cgroups.remove(cgroups.to_abs(cgroup_root, a.path))
        elif a.kind == "remove-pin":
            namespaces.unpin(a.id, run_dir)
        elif a.kind == "remove-record":
            try:
                os.unlink(a.path)
            except FileNotFoundError:
                pass
        a.done = True
    except (OSError, CgnetnsError) as e:
        a.error = e.line() if isinstance(e, CgnetnsError) else (
            "%s" % (e.strerror or e) if e.errno != errno.EBUSY
            else "busy (%s)" % e.strerror)
