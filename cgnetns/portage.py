"""Portage's FEATURES=cgnetns: one cgnetns build per emerge (or ebuild) process.

``contrib/portage/patches/`` adds FEATURES=cgnetns to Portage; the patch
imports this module lazily and calls :func:`start` once, with the emerge's
settings, before the first phase, and ``close()`` on the handle when emerge
ends (success, failure, Ctrl-C, SIGTERM: the patch calls it from emerge's
``finally`` and ebuild(1)'s signal path; it is also registered with atexit).
What :func:`start` does, as root:

1. makes sure a broker answers (``cgnetns.broker_start``), before anything
   else: under Gentoo's sandbox (no_new_privs, the default) distcc reaches
   the network only through it, and distcc's default fallback would
   otherwise compile locally without a word;
2. creates a build that approves the network namespace emerge runs in and
   makes emerge itself a member (``Build.enter``), so that every phase, the
   depend phase included, and everything they start, is in the build; on a
   systemd host outside a delegated cgroup it first moves emerge into a new
   ``Delegate=yes`` scope (:func:`move_to_delegated_scope`), as cgnetns-run
   does for itself;
3. refuses, with a message that says so, when the broker runs in another
   mount namespace and cannot see the build's pin
   (``broker_start.check_broker_sees``);
4. points Portage at the build: ``PORTAGE_CGROUP_ROOT=<build>/portage``
   (FEATURES=cgroup's ``emerge-<pid>/<cpv>``, and the depend phase's
   ``<cpv>`` leaves, go inside the build, on the unified and the hybrid
   layout alike: Portage's cgroup2 mount point is set to cgnetns's) and
   ``PORTAGE_CGNETNS_MASQ=<cgnetns masquerade directory>`` (with
   FEATURES=distcc the patched doebuild puts it first in PATH instead of
   distcc's own masquerade, and starts no SOCKS relay), in the settings it
   is given, in Portage's defaults, and in the environment (for configs
   made later);
5. on ``close()``: takes emerge back out of the build, then removes the
   build, killing whatever is left in it.  An emerge killed with SIGKILL
   leaves a record nobody holds (Build.enter: the processes Portage forks
   without exec drop their copy): ``cgnetns-gc`` removes the rest.

Any failure (not root, no cgroup2, a refusal, ...) is one warning on stderr
and ``None``: emerge then works as it does without FEATURES=cgnetns.
"""

import atexit
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time

from . import broker_start, cgroups, paths
from .build import Build
from .errors import CgnetnsError, PlacementError

# What the patched Portage reads (lib/portage/package/ebuild/doebuild.py).
CGROUP_ROOT_VAR = "PORTAGE_CGROUP_ROOT"
MASQ_VAR = "PORTAGE_CGNETNS_MASQ"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SYSTEMD_PRIVATE_BUS = "unix:path=/run/systemd/private"


def warn(text):
    """One line on stderr, in Portage's style."""
    sys.stderr.write("!!! FEATURES=cgnetns: %s\n" % text)
    sys.stderr.flush()


def move_to_delegated_scope(name="cgnetns", timeout=5.0, proc="/proc"):
    """Move the calling process into a new transient systemd scope with
    Delegate=yes, where it may create cgroups (systemd-run --scope does this
    for the process it then executes; cgnetns-run re-executes itself that way,
    emerge cannot).  Uses busctl, on the system bus or, without one, on
    systemd's private socket (root).  Returns the scope's cgroup path
    (relative to the cgroup2 root); raises PlacementError."""
    busctl = shutil.which("busctl", path=SYSTEM_PATH)
    hint = "run it inside a delegated scope: systemd-run --scope -p Delegate=yes -- ..."
    if busctl is None:
        raise PlacementError("systemd manages cgroups here and busctl is missing", hint)
    pid = os.getpid()
    unit = "cgnetns-%s-%d-%s.scope" % (re.sub(r"[^A-Za-z0-9_-]+", "", name)[:32] or "build",
                                       pid, secrets.token_hex(4))
    call = ["call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager", "StartTransientUnit", "ssa(sv)a(sa(sv))",
            unit, "fail", "4", "PIDs", "au", "1", str(pid), "Delegate", "b", "true",
            "CollectMode", "s", "inactive-or-failed",
            "Description", "s", "cgnetns: %s (pid %d) and its build" % (name, pid), "0"]
    errors = []
    for bus in ([], ["--address=" + SYSTEMD_PRIVATE_BUS]):
        r = subprocess.run([busctl, *bus, *call], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=timeout * 2,
                           env={"PATH": SYSTEM_PATH, "LANG": "C"})
        if r.returncode == 0:
            break
        errors.append((r.stderr or r.stdout).strip().splitlines()[-1:] or ["exit %d" % r.returncode])
    else:
        raise PlacementError("systemd did not start a delegated scope for process %d (%s)"
                             % (pid, "; ".join(e[0] for e in errors)), hint)
    deadline = time.monotonic() + timeout
    while True:
        own = cgroups.cgroup_of("self", proc)
        if own.endswith("/" + unit):
            return own
        if time.monotonic() > deadline:
            raise PlacementError("process %d is not in %s after %g s" % (pid, unit, timeout),
                                 hint)
        time.sleep(0.01)


def _set(settings, key, value):
    """settings[KEY] = VALUE in a Portage config, kept across its reset()."""
    locked = getattr(settings, "locked", False)
    settings.unlock()
    try:
        settings[key] = value
        settings.backup_changes(key)
    finally:
        if locked:
            settings.lock()


class PortageBuild:
    """The build of one emerge process; see the module docstring.

    Attributes: ``build`` (a :class:`cgnetns.build.Build`, None once
    closed), ``cgroup_root`` (what PORTAGE_CGROUP_ROOT is set to),
    ``masq_dir`` (cgnetns's compiler masquerade, or None when it is not
    installed).
    """

    def __init__(self, settings=(), name="emerge"):
        self.build = None
        self.cgroup_root = None
        self.masq_dir = None
        self._pid = os.getpid()
        self._saved_env = {}
        self._saved_portage = None
        if os.geteuid() != 0:
            raise CgnetnsError("%s runs as uid %d, not as root" % (name, os.geteuid()))
        broker = broker_start.broker_pid()  # one connection when a broker answers
        if broker is None:
            try:  # before joining the build: see broker_start.ensure_broker
                broker_start.ensure_broker("cgnetns (%s)" % name)
            except OSError as e:  # the build still works on the set-user-ID path
                warn("could not start cgnetnsd: %s" % e)
            broker = broker_start.broker_pid()
        try:
            self.build = Build.enter(name)
        except PlacementError:
            if not cgroups.systemd_manages_cgroups():
                raise
            move_to_delegated_scope(name)
            self.build = Build.enter(name)
        try:
            if broker is not None:
                broker_start.check_broker_sees(self.build, broker)
            self._point_portage_at_build(settings)
        except BaseException:
            self.close()
            raise
        atexit.register(self.close)

    def _point_portage_at_build(self, settings):
        self.cgroup_root = os.path.join(self.build.cgroup_path, "portage")
        values = {CGROUP_ROOT_VAR: self.cgroup_root}
        if os.path.isdir(paths.MASQ_DIR) and os.access(paths.FRONT, os.X_OK):
            self.masq_dir = values[MASQ_VAR] = paths.MASQ_DIR
        for key, value in values.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value
            for s in settings:
                _set(s, key, value)
        try:
            import portage.util.cgroup as portage_cgroup
        except ImportError:
            return
        # Configs without PORTAGE_CGROUP_ROOT (those made before this call,
        # e.g. the depend phase's) use the default; FEATURES=cgroup looks for
        # cgroup2 only at /sys/fs/cgroup, and the hybrid layout has it below.
        self._saved_portage = (portage_cgroup, portage_cgroup.DEFAULT_CGROUP_ROOT,
                               portage_cgroup._CGROUPFS)
        portage_cgroup.DEFAULT_CGROUP_ROOT = self.cgroup_root
        portage_cgroup._CGROUPFS = self.build.cgroup_root

    def close(self):
        """Take the caller out of the build and remove it; safe to call twice;
        nothing happens in a process forked from the caller."""
        if os.getpid() != self._pid:
            return
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env = {}
        if self._saved_portage is not None:
            module, module.DEFAULT_CGROUP_ROOT, module._CGROUPFS = self._saved_portage
            self._saved_portage = None
        build, self.build = self.build, None
        if build is not None:
            try:
                build.close()
            except CgnetnsError as e:
                warn(e.line())

    def __repr__(self):
        return "<PortageBuild %r>" % (self.build,)


def start(settings=None, name=None):
    """FEATURES=cgnetns for the calling emerge: a :class:`PortageBuild`, or None
    after one warning (then emerge works as without FEATURES=cgnetns).

    SETTINGS: a Portage config (or a list of them) to point at the build."""
    if settings is None:
        settings = []
    elif not isinstance(settings, (list, tuple)):
        settings = [settings]
    name = name or os.path.basename(sys.argv[0] or "") or "portage"
    try:
        return PortageBuild(settings, name)
    except CgnetnsError as e:
        warn("%s; running without cgnetns" % e.line())
    except Exception as e:  # never take emerge down with us
        warn("%s: %s; running without cgnetns" % (type(e).__name__, e))
    return None


# -- cgnetns-show --check: make.conf settings that defeat cgnetns ---------------------------

MAKE_CONF = "etc/portage/make.conf"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def make_conf_path(environ=None):
    """Portage's make.conf: below PORTAGE_CONFIGROOT, else the EPREFIX
    (PORTAGE_OVERRIDE_EPREFIX), else /."""
    environ = os.environ if environ is None else environ
    root = environ.get("PORTAGE_CONFIGROOT") or environ.get("PORTAGE_OVERRIDE_EPREFIX") or "/"
    return os.path.join(root, MAKE_CONF)


def read_make_conf(path):
    """{NAME: value} of make.conf (a file, or a directory of files read in
    order, as Portage does), or None when there is none.  Assignments only,
    as shell words (quotes, comments, values over several lines), with
    ${NAME} and $NAME expanded from what came before; no sourcing."""
    if os.path.isdir(path):
        files = [os.path.join(path, n) for n in sorted(os.listdir(path))
                 if not n.startswith(".") and not n.endswith("~")]
    elif os.path.exists(path):
        files = [path]
    else:
        return None
    values = {}
    for name in files:
        with open(name, errors="replace") as f:
            words = shlex.split(f.read(), comments=True)
        for word in words:
            key, eq, value = word.partition("=")
            if eq and _NAME.match(key):
                values[key] = _REF.sub(lambda m: values.get(m.group(1) or m.group(2), ""),
                                       value)
    return values


def incremental(text):
    """The set an incremental variable (FEATURES) ends up with."""
    out = set()
    for word in text.split():
        if word == "-*":
            out.clear()
        elif word.startswith("-"):
            out.discard(word[1:])
        else:
            out.add(word)
    return out


def check(sys_cgroup=cgroups.SYS_CGROUP, environ=None):
    """(name, status, message, fix) for cgnetns-show --check: FEATURES=cgroup
    where Portage's cgroups would leave the build, and DISTCC_FALLBACK other
    than 0.  Nothing on a host without make.conf."""
    path = make_conf_path(environ)
    try:
        conf = read_make_conf(path)
    except (OSError, ValueError) as e:
        return [("portage", "warn", "cannot read %s: %s" % (path, e),
                 "run cgnetns-show --check as root")]
    if conf is None:
        return []
    out = []
    features = incremental(conf.get("FEATURES", ""))
    if "cgroup" in features:
        try:
            unified = os.path.samefile(cgroups.find_cgroup2(sys_cgroup), sys_cgroup)
        except (CgnetnsError, OSError):
            unified = False
        if "cgnetns" in features:
            out.append(("portage-cgroup", "ok", "%s: FEATURES=cgroup with FEATURES=cgnetns: "
                        "Portage's emerge-<pid>/<cpv> cgroups go inside emerge's build"
                        % path, None))
        elif unified:
            out.append(("portage-cgroup", "warn", "%s enables FEATURES=cgroup: Portage puts "
                        "each build in %s/portage/emerge-<pid>/<cpv>, outside the build "
                        "cgnetns-run makes, where distcc gets no network" % (path, sys_cgroup),
                        "add cgnetns to FEATURES, with Portage patched (contrib/portage/"
                        "README.rst); or run emerge with PORTAGE_CGROUP_ROOT=<build "
                        "cgroup>/portage; or take cgroup out of FEATURES"))
        else:
            out.append(("portage-cgroup", "ok", "%s: FEATURES=cgroup does nothing on this "
                        "layout (Portage looks for cgroup2 at %s only): builds stay in "
                        "cgnetns's cgroup" % (path, sys_cgroup), None))
    if "distcc" in features or conf.get("DISTCC_HOSTS"):
        fallback = conf.get("DISTCC_FALLBACK")
        if fallback == "0":
            out.append(("distcc-fallback", "ok", "%s: DISTCC_FALLBACK=0: a compile "
                        "that cannot reach its servers fails and says why" % path, None))
        else:
            out.append(("distcc-fallback", "warn", "%s: DISTCC_FALLBACK is %s: a "
                        "build that lost its network compiles locally without a word"
                        % (path, "not set (distcc's default is 1)" if fallback is None
                           else "%r" % fallback),
                        'set DISTCC_FALLBACK="0" in make.conf'))
    return out
