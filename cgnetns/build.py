"""A build: one tagged cgroup that approves one pinned network namespace.

Owns the life cycle that ``cgnetns-run`` and in-process users (Portage) need:
create the record, the cgroup, the pin and the tag (in that order, so a run
killed at any point leaves a locked-then-orphaned record that ``cgnetns-gc``
follows), spawn children into the cgroup (optionally in a new network
namespace with ``lo`` up, as Portage's network-sandbox does), and tear it all
down in reverse order.  ``Build.adopt`` tags a cgroup another tool created
(Portage's ``emerge-<pid>``) without taking ownership of the cgroup itself.

Everything here needs root; the constructor does no work, ``create()`` does.
"""

import errno
import os
import pwd
import re
import subprocess

from . import cgroups, namespaces, records, tags
from . import egress as _egress
from .errors import CgnetnsError

_NAME_RE = re.compile(r"[^A-Za-z0-9_-]+")

# Addresses Portage's network-sandbox gives lo (portage.process._configure_loopback_interface):
# besides 127.0.0.1 and ::1, a global address of each family, so that glibc's
# getaddrinfo(AI_ADDRCONFIG) still returns results for loopback-only names.
SANDBOX_LO_ADDRS = (("10.0.0.1", 8), ("fd::1", 8))


def make_id(name):
    base = _NAME_RE.sub("", name or "")[:32] or "build"
    if not base[0].isalnum():
        base = "b" + base
    return "%s-%s" % (base, os.urandom(8).hex())


def require_root():
    if os.geteuid() != 0:
        raise CgnetnsError("must run as root (effective uid is %d)" % os.geteuid(),
                           "run it as root, e.g. with sudo")


def resolve_user(user):
    """(uid, gid, groups) for a user name or numeric uid."""
    try:
        pw = pwd.getpwnam(user) if not str(user).isdigit() else pwd.getpwuid(int(user))
    except KeyError:
        raise CgnetnsError("unknown user %r" % (user,), "name an existing user, e.g. --user nobody",
                           status=2) from None
    groups = os.getgrouplist(pw.pw_name, pw.pw_gid)
    return pw.pw_uid, pw.pw_gid, groups


def setup_loopback():
    """Bring lo up in the current (new) network namespace, as Portage does."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=idx, state="up")
        for addr, plen in SANDBOX_LO_ADDRS:
            try:
                ipr.addr("add", index=idx, address=addr, prefixlen=plen)
            except Exception:
                # IPv6 may be disabled (ipv6.disable=1); 127.0.0.1 is still there.
                if ":" not in addr:
                    raise


class ChildSetup:
    """The steps a spawned child runs between fork and exec, as root.

    Order matters: join the cgroup first (the child can then never run outside
    it), unshare the network while still root, then drop to the user.  Any
    failure ends the child with status 125 and one line on stderr: a build
    never runs without its sandbox (Portage, by contrast, only warns).
    """

    def __init__(self, cgroup_path, unshare_net=False, ids=None, extra=None):
        self.cgroup_path = cgroup_path
        self.unshare_net = unshare_net
        self.ids = ids
        self.extra = extra

    def __call__(self):
        step = "joining the build cgroup"
        try:
            cgroups.attach(self.cgroup_path, 0)
            if self.unshare_net:
                step = "unsharing the network namespace"
                from . import _sys
                _sys.unshare(_sys.CLONE_NEWNET)
                step = "bringing up lo"
                setup_loopback()
            if self.ids is not None:
                step = "dropping privileges"
                uid, gid, groups = self.ids
                os.setgroups(groups)
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
            if self.extra is not None:
                step = "running the caller's pre-exec step"
                self.extra()
        except BaseException as e:
            try:
                os.write(2, ("cgnetns: %s failed: %s\n" % (step, e)).encode())
            finally:
                os._exit(125)


class Build:
    """One build cgroup approving one network namespace.

    ``with Build(name="x") as b: b.spawn([...]).wait()`` creates everything on
    entry and removes it on exit.  Attributes after ``create()``: ``id``,
    ``cgroup_path`` (absolute), ``cgroup`` (relative to the cgroup2 root),
    ``cgroup_root``, ``pin_path``, ``identity`` (the approved namespace).
    """

    def __init__(self, name="build", *, sys_cgroup=cgroups.SYS_CGROUP,
                 run_dir=namespaces.RUN_DIR, proc="/proc",
                 systemd_rundir=cgroups.SYSTEMD_RUNDIR,
                 netns_source="/proc/thread-self/ns/net", parent=None,
                 fault=None, egress=None):
        self.name = name
        self.sys_cgroup = sys_cgroup
        self.run_dir = run_dir
        self.proc = proc
        self.systemd_rundir = systemd_rundir
        self.netns_source = netns_source
        self.parent = parent
        self.owns_cgroup = True
        self.id = None
        self.cgroup_root = None
        self.cgroup_path = None
        self.cgroup = None
        self.pin_path = None
        self.identity = None
        self._record_fd = None
        self._in_subtree = False
        self._made = []
        self._fault = fault
        # The egress policy (cgnetns/egress.py): None reads the system's file;
        # a Policy, or the path of a policy file, replaces it for this build.
        self.egress = egress
        self.egress_plan = None

    # -- fault points for crash-recovery tests (tests/fault_run.py passes
    #    fault=NAME): the process SIGKILLs itself at that point.  The library
    #    reads no environment for it.
    def _fault_point(self, name):
        if self._fault == name:
            os.kill(os.getpid(), 9)

    def create(self):
        require_root()
        self.cgroup_root = cgroups.find_cgroup2(self.sys_cgroup)
        if self.parent is None:
            parent = cgroups.choose_parent(self.cgroup_root, proc=self.proc,
                                           systemd_rundir=self.systemd_rundir)
        else:
            parent = self.parent
        self.id = make_id(self.name)
        self.cgroup_path = os.path.join(parent, self.id)
        self.cgroup = cgroups.to_rel(self.cgroup_root, self.cgroup_path)
        self.egress_plan = _egress.prepare(self)  # a bad policy refuses before anything is made
        self._setup(make_cgroup=True, parent=parent)
        return self

    @classmethod
    def adopt(cls, cgroup_path, name=None, **kw):
        """Tag an existing cgroup (made by another tool) to approve our namespace.

        Teardown untags and unpins it but leaves the cgroup to its owner.
        """
        b = cls(name or os.path.basename(cgroup_path.rstrip("/")), **kw)
        require_root()
        b.cgroup_root = cgroups.find_cgroup2(b.sys_cgroup)
        b.cgroup_path = os.path.abspath(cgroup_path)
        b.cgroup = cgroups.to_rel(b.cgroup_root, b.cgroup_path)
        if not b.cgroup_path.startswith(b.cgroup_root.rstrip("/") + "/"):
            raise CgnetnsError("%s is not below the cgroup2 mount %s" % (cgroup_path, b.cgroup_root))
        b.owns_cgroup = False
        b.id = make_id(b.name)
        b.egress_plan = _egress.prepare(b)
        b._setup(make_cgroup=False, parent=None)
        return b

    # (pid, cgroup path) of the process that enter() made a member: close()
    # takes it back out first, and does nothing in a process forked from it.
    _member = None

    @classmethod
    def enter(cls, name="build", **kw):
        """Create a build and make the calling process a member of it.

        Everything the caller starts from then on is in the build (Portage:
        every phase, FEATURES=cgroup's cgroups below it).  ``close()`` first
        moves the caller back to the cgroup it came from, since tearing the
        build down kills every process in it; in a process forked from the
        caller (which inherits this object) ``close()`` does nothing.
        """
        b = cls(name, **kw)
        b.create()
        try:
            home = cgroups.to_abs(b.cgroup_root, cgroups.cgroup_of("self", b.proc))
            b._member = (os.getpid(), home)
            os.register_at_fork(after_in_child=b._drop_record_in_child)
            b.attach(0)
        except BaseException:
            b.close()
            raise
        return b

    def _drop_record_in_child(self):
        """In a process forked from the member (Portage forks and waits without
        exec, e.g. around a pid-sandbox), close the record: the run lives as
        long as the member does, not as long as a forked copy of it (the lock
        stays with the member, whose descriptor still holds it)."""
        if self._member is not None and self._record_fd is not None \
                and os.getpid() != self._member[0]:
            fd, self._record_fd = self._record_fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    def _leave(self):
        """Move the member back home (else to the cgroup2 root) before teardown."""
        pid, home = self._member
        for dest in (home, self.cgroup_root):
            try:
                cgroups.attach(dest, 0)
                self._member = None
                return
            except OSError as e:
                error = e
        raise CgnetnsError("cannot take process %d out of build %s: %s" % (pid, self.id, error),
                           "run cgnetns-gc once it has exited")

    def _setup(self, make_cgroup, parent):
        namespaces.ensure_run_dirs(self.run_dir)
        try:
            with records.global_lock(self.run_dir):
                self._record_fd = records.create_record(self.id, {
                    "name": self.name, "cgroup_root": self.cgroup_root, "cgroup": self.cgroup,
                    "owns_cgroup": self.owns_cgroup,
                    "egress": _egress.record(self.egress_plan)}, self.run_dir)
                self._made.append("record")
                self._fault_point("after-record")
                if make_cgroup:
                    # The <root>/cgnetns subtree exists only while builds do:
                    # made here when missing, removed by the last teardown.
                    self._in_subtree = parent == os.path.join(self.cgroup_root,
                                                              cgroups.CGNETNS_SUBTREE)
                    cgroups.create(self.cgroup_path, make_parent=self._in_subtree)
                    self._made.append("cgroup")
                elif tags.read_raw_tag(self.cgroup_path) is not None:
                    raise CgnetnsError("cgroup %s is tagged already" % self.cgroup_path,
                                       "untag it or run cgnetns-gc")
                self._fault_point("after-cgroup")
                self.pin_path, self.identity = namespaces.pin(self.id, self.netns_source,
                                                              self.run_dir)
                self._made.append("pin")
                self._fault_point("after-pin")
                try:
                    tags.write_tag(self.cgroup_path, self.id, self.identity)
                    self._made.append("tag")
                    tags.mark_delegated(self.cgroup_path)
                except OSError as e:
                    if e.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
                        raise CgnetnsError(
                            "the cgroup2 filesystem does not support trusted.* xattrs",
                            "use a kernel with cgroupfs xattr support (Linux 3.x or newer, "
                            "CONFIG_CGROUPS with kernfs xattrs)") from None
                    raise
                self._fault_point("after-tag")
                if self.egress_plan is not None:
                    # before anything runs in the build; no filter, no build
                    _egress.install(self, self.egress_plan)
                    self._made.append("egress")
        except BaseException:
            self.close()
            raise

    def attach(self, pid=0):
        cgroups.attach(self.cgroup_path, pid)

    def spawn(self, argv, user=None, unshare_net=False, pre_exec=None, **popen_kw):
        """Start ARGV in the build cgroup; return the subprocess.Popen.

        ``user`` drops to that user after joining the cgroup and unsharing;
        ``unshare_net`` gives the child a new network namespace with lo up.
        Exec failures raise as subprocess.Popen does (FileNotFoundError,
        PermissionError); setup failures end the child with status 125.
        """
        ids = resolve_user(user) if user is not None else None
        setup = ChildSetup(self.cgroup_path, unshare_net, ids, pre_exec)
        if unshare_net:
            import pyroute2  # noqa: F401 -- import before fork, not in the child
        return subprocess.Popen(argv, preexec_fn=setup, **popen_kw)

    def kill(self):
        if self.owns_cgroup and self.cgroup_path:
            cgroups.kill(self.cgroup_path)

    def close(self):
        """Tear down what this build made, in reverse order; safe to call twice."""
        if self._member is not None:
            if os.getpid() != self._member[0]:
                return  # forked from the member (enter): the build is its parent's
            self._leave()
        if not self._made:
            return
        errors = []
        with records.global_lock(self.run_dir):
            self._fault_point("teardown")
            if "cgroup" in self._made:
                try:
                    cgroups.kill(self.cgroup_path)  # nothing of the build outlives it
                except Exception as e:
                    errors.append("kill: %s" % e)
            for what in reversed(list(self._made)):
                try:
                    if what == "egress":
                        _egress.uninstall(self, self.egress_plan)
                    elif what == "tag":
                        tags.remove_tag(self.cgroup_path)
                    elif what == "pin":
                        namespaces.unpin(self.id, self.run_dir)
                    elif what == "cgroup":
                        cgroups.remove(self.cgroup_path)
                        if self._in_subtree:
                            cgroups.remove_if_empty(os.path.dirname(self.cgroup_path))
                    elif what == "record":
                        records.remove_record(self.id, self._record_fd, self.run_dir)
                        self._record_fd = None
                    self._made.remove(what)
                except Exception as e:  # keep going: leave as little as possible
                    errors.append("%s: %s" % (what, e))
        if errors:
            raise CgnetnsError("teardown left state behind (%s)" % "; ".join(errors),
                               "run cgnetns-gc")

    def __enter__(self):
        if self.id is None:
            self.create()
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return "<Build %s cgroup=%s>" % (self.id, self.cgroup)
