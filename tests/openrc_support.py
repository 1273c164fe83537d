"""Real OpenRC in a container, for tests/test_openrc.py (issue 17).

* ``debootstrap_root()``: Debian bookworm's sysvinit-core and OpenRC 0.45.2
  with python3 and cgnetns's dependencies, built once and cached in
  /var/cache/cgnetns-test/<key>/root (key: suite, variant, both package
  lists), exactly as tests/systemd_support.py caches its root.  Two stages:
  debootstrap cannot install openrc itself (it resolves sysvinit-core's
  "sysv-rc | file-rc | openrc" to sysv-rc, which conflicts with openrc, and
  --exclude does not change that), so ``apt-get install openrc`` runs in the
  new root afterwards and replaces sysv-rc, as on a Debian host.
  ``sd.ArchiveUnreachable`` when either stage cannot download.
* ``Container``: a systemd_support.Container (overlay on the cached root,
  cgnetns installed with the project's own install route, cgroups of its
  own, teardown) booted the OpenRC way: systemd-nspawn runs sysvinit's
  /sbin/init as PID 1 (inittab: ``openrc sysinit``, then ``openrc default``),
  and OpenRC mounts the cgroups itself, in the ``rc_cgroup_mode`` of
  /etc/rc.conf, as on a host.  For that the container is told it is not a
  container (``rc_sys=""``: OpenRC skips its ``cgroups`` service under
  systemd-nspawn), and nspawn's own cgroup mounts (read-only, legacy layout
  for a container without systemd) are unmounted before init starts:
  PID 1 is ``/bin/sh -c 'umount -R /sys/fs/cgroup && exec setpriv
  --inh-caps=-all /sbin/init'``: nspawn also gives its payload an
  inheritable capability set equal to its bounding set, which a host's init
  does not have and every process of the container would inherit (with it
  the supervisor's own check refuses every join of a non-root caller:
  "privilege drop failed: capabilities left in the supervisor"; see
  test_openrc.py, test_inheritable_capabilities_refuse_joins).
  A cgroup namespace (nspawn makes one) cannot create a new v1 hierarchy
  (EPERM), so for the hybrid layout OpenRC's ``name=openrc`` hierarchy is
  mounted first in the private mount namespace nspawn starts from, and
  nspawn starts in a cgroup of its own there too; ``close()`` mounts it
  again to remove that cgroup, and the hierarchy goes with its last cgroup
  and mount.  v1 controllers the host has not mounted (net_cls, net_prio,
  perf_event; hugetlb is on cgroup2 here) cannot be mounted by OpenRC
  inside for the same reason; nothing here uses them.  /etc/rc.conf also
  names Debian's mountall.sh "localmount" (rc_mountall_sh_provide), the
  service Gentoo's OpenRC has and contrib/openrc/cgnetnsd needs.

Commands run inside with ``enter()`` (nsenter into every namespace) or
``run()``, which first moves the command into the container's cgroups the
way a login shell sits in them (the roots of the v1 hierarchies and a
cgroup2 "session" cgroup), so that /proc/self/cgroup reads as it would on
the host.  ``reboot()`` is a poweroff (``telinit 0``: OpenRC stops every
service) and a new boot of the same overlay with fresh cgroups.

Measured here: the cold root 43-88 s (debootstrap) + 3-9 s (apt-get install
openrc), 241 MB; a boot 1.1-1.8 s; a poweroff (telinit 0) 1.5-2.4 s.

debootstrap_root() follows systemd_support.debootstrap_root (lock, mark,
debris removal), which builds in one stage only; Container overrides its
boot, stop and teardown and reuses the rest.
"""

import fcntl
import os
import subprocess
import tempfile
import time

import systemd_support as sd

SUITE = sd.SUITE
VARIANT = sd.VARIANT
MIRROR = sd.MIRROR
CACHE_DIR = sd.CACHE_DIR
SYSTEM_PATH = sd.SYSTEM_PATH
# Stage 1 (debootstrap): sysvinit as PID 1; python3 and cgnetns's
# dependencies from Debian; attr (getfattr), iproute2, procps (kill, ps);
# util-linux (setpriv, findmnt) and mawk are in minbase.
INCLUDE = ("sysvinit-core", "python3", "attr", "python3-pyroute2", "python3-psutil",
           "iproute2", "procps")
# Stage 2 (apt-get install in the root): OpenRC, replacing sysv-rc.
STAGE2 = ("openrc",)
DONE_MARK = sd.DONE_MARK

BOOT_MARK = "/run/cgnetns-test-booted"
SESSION = "cgnetns-test-session"        # the cgroup2 cgroup run() puts commands in
OPENRC_HIERARCHY = "name=openrc"

# A program that connects twice, with a pause between that the test ends:
# one socket before `rc-service cgnetnsd restart`, one after it, both from
# the same process (so both are minted by the same supervisor).
INFLIGHT = "/usr/local/libexec/cgnetns-test/inflight"
INFLIGHT_C = r"""
/* inflight PORT: connect to 127.0.0.1:PORT and print the line the server
 * sends as "first=token:LINE" (or first=socket:ERRNO / first=connect:ERRNO),
 * then wait for a line on stdin ("go"), then connect again and print
 * "second=...".  Exit 0 when both connects got a line, 1 otherwise, 2 when
 * stdin ended without "go". */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int probe(const char *label, int port)
{
	char out[300];
	int ok = 0;
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0) {
		snprintf(out, sizeof out, "%s=socket:%d\n", label, errno);
	} else {
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((unsigned short)port) };
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		struct timeval tv = { 5, 0 };
		setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
		if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
			snprintf(out, sizeof out, "%s=connect:%d\n", label, errno);
		} else {
			char line[200];
			ssize_t n = recv(s, line, sizeof line - 1, 0);
			line[n < 0 ? 0 : n] = '\0';
			line[strcspn(line, "\n")] = '\0';
			snprintf(out, sizeof out, "%s=token:%s\n", label, line);
			ok = n > 0;
		}
		close(s);
	}
	/* one write per line: the test reads them as they come */
	if (write(1, out, strlen(out)) < 0)
		return 0;
	return ok;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: inflight PORT\n");
		return 2;
	}
	int port = atoi(argv[1]);
	int ok = probe("first", port);
	char go[16];
	size_t got = 0;
	while (got < sizeof go - 1) {
		ssize_t n = read(0, go + got, 1);
		if (n <= 0)
			return 2;
		if (go[got] == '\n')
			break;
		got++;
	}
	ok &= probe("second", port);
	return ok ? 0 : 1;
}
"""


def cache_key():
    text = "%s %s %s + %s" % (SUITE, VARIANT, ",".join(sorted(INCLUDE)), ",".join(sorted(STAGE2)))
    return "%s-%s-openrc-%s" % (SUITE, VARIANT, sd.hashlib.sha256(text.encode()).hexdigest()[:12])


def _download_failed(out):
    return bool(sd._DOWNLOAD_FAILURES.search(out)) or not sd._archive_reachable()


def debootstrap_root(log=None):
    """Path of the cached OpenRC root, building it first when there is none.

    The same scheme as systemd_support.debootstrap_root (one builder at a
    time under a lock, a completion mark, debris of a dead build removed),
    with the second stage before the mark."""
    base = os.path.join(CACHE_DIR, cache_key())
    root = os.path.join(base, "root")
    if os.path.exists(os.path.join(base, DONE_MARK)):
        return root
    os.makedirs(base, mode=0o755, exist_ok=True)
    with open(os.path.join(base, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(base, DONE_MARK)):
            return root
        for name in os.listdir(base):
            if name == "root" or name.startswith("building-"):
                sd._remove_tree(os.path.join(base, name))
        tmp = tempfile.mkdtemp(prefix="building-", dir=base)
        env = dict(os.environ, PATH=SYSTEM_PATH, LANG="C.UTF-8")
        argv = ["debootstrap", "--variant=" + VARIANT, "--include=" + ",".join(INCLUDE),
                SUITE, tmp, MIRROR]
        t0 = time.monotonic()
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=env)
        if r.returncode != 0:
            out = r.stdout
            debootlog = os.path.join(tmp, "debootstrap", "debootstrap.log")
            if os.path.exists(debootlog):
                with open(debootlog, errors="replace") as f:
                    out += f.read()
            sd._remove_tree(tmp)
            if _download_failed(out):
                raise sd.ArchiveUnreachable("debootstrap could not download from %s: %s"
                                            % (MIRROR, out.strip().splitlines()[-1:]))
            raise sd.ContainerError("debootstrap failed (%d):\n%s" % (r.returncode, out[-4000:]))
        t1 = time.monotonic()
        # apt-get in the new root, with the lists debootstrap left (its
        # sources.list names MIRROR); no daemon is started (policy-rc.d).
        policy = os.path.join(tmp, "usr/sbin/policy-rc.d")
        with open(policy, "w") as f:
            f.write("#!/bin/sh\nexit 101\n")
        os.chmod(policy, 0o755)
        r = subprocess.run(["chroot", tmp, "apt-get", "install", "-y", "-q",
                            "--no-install-recommends"] + list(STAGE2),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=dict(env, DEBIAN_FRONTEND="noninteractive"))
        os.unlink(policy)
        if r.returncode != 0:
            sd._remove_tree(tmp)
            if _download_failed(r.stdout):
                raise sd.ArchiveUnreachable("apt-get install %s could not download from %s: %s"
                                            % (" ".join(STAGE2), MIRROR,
                                               r.stdout.strip().splitlines()[-1:]))
            raise sd.ContainerError("apt-get install %s failed (%d):\n%s"
                                    % (" ".join(STAGE2), r.returncode, r.stdout[-4000:]))
        subprocess.run(["chroot", tmp, "apt-get", "clean"], env=env, capture_output=True)
        if not os.path.exists(os.path.join(tmp, "sbin/openrc-run")):
            sd._remove_tree(tmp)
            raise sd.ContainerError("no /sbin/openrc-run after apt-get install openrc")
        os.rename(tmp, root)
        with open(os.path.join(base, DONE_MARK), "w") as f:
            f.write("%s in %.0f s; apt-get install %s in %.0f s\n"
                    % (" ".join(argv[:-2]), t1 - t0, " ".join(STAGE2), time.monotonic() - t1))
        if log:
            log("built %s in %.0f s" % (root, time.monotonic() - t0))
    return root


class Container(sd.Container):
    """sysvinit + OpenRC booted by systemd-nspawn on an overlay of the cached
    root, cgnetns installed, ``rc_cgroup_mode`` hybrid or unified.
    ``rc_conf``: lines added to /etc/rc.conf."""

    def __init__(self, root, unified=False, rc_conf=(), boot_timeout=60, log=print):
        super().__init__(root, unified=unified, boot_timeout=boot_timeout, log=log)
        self.name = "cgnetns-o-" + self.tag
        self.mode = "unified" if unified else "hybrid"
        self.rc_conf = list(rc_conf)
        self.openrc_cg = None      # our cgroup in the name=openrc hierarchy (hybrid)
        self.boots = 0

    # -- set-up ------------------------------------------------------------------
    def install(self, dest):
        """The project's install route (systemd_support), then what makes the
        root boot OpenRC here and the test program."""
        super().install(dest)
        script = os.path.join(dest, "etc/init.d/cgnetnsd")
        if not os.path.exists(script):
            raise sd.ContainerError("make install-contrib did not install %s" % script)
        # the in-flight program, allow-listed like the probes
        src = os.path.join(self.dir, "inflight.c")
        with open(src, "w") as f:
            f.write(INFLIGHT_C)
        r = subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-o", dest + INFLIGHT, src],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise sd.ContainerError("gcc inflight.c:\n" + r.stdout)
        with open(os.path.join(dest, "etc/cgnetns/allow"), "a") as f:
            f.write(INFLIGHT + "\n")
        # inittab: OpenRC's runlevels without gettys (no ttys here), and a
        # mark once runlevel 2 is done ("wait" entries run to their end
        # before the entries after them start)
        with open(os.path.join(self.lower, "etc/inittab")) as f:
            lower_inittab = f.read()
        if "/etc/init.d/rc 2" not in lower_inittab:
            raise sd.ContainerError("unexpected /etc/inittab in the root:\n" + lower_inittab)
        with open(os.path.join(dest, "etc/inittab"), "w") as f:
            f.write("# cgnetns OpenRC test: runlevels only\nid:2:initdefault:\n"
                    "si::sysinit:/etc/init.d/rcS\n"
                    + "".join("l%d:%d:wait:/etc/init.d/rc %d\n" % (i, i, i) for i in range(7))
                    + "bt:2:once:/bin/sh -c 'echo $$ > %s'\n" % BOOT_MARK)
        with open(os.path.join(self.lower, "etc/rc.conf")) as f:
            conf = f.read()
        with open(os.path.join(dest, "etc/rc.conf"), "w") as f:
            f.write(conf + "\n# cgnetns OpenRC test (tests/openrc_support.py)\n"
                    "# not a container to OpenRC: its cgroups service mounts the layout\n"
                    'rc_sys=""\nrc_cgroup_mode="%s"\n' % self.mode
                    + "# Debian's mountall.sh is what OpenRC elsewhere calls localmount\n"
                    + 'rc_mountall_sh_provide="localmount"\n'
                    + "".join(line + "\n" for line in self.rc_conf))

    def _make_cgroups(self):
        if openrc_hierarchy_exists():
            sweep_stale_openrc(self.log)
        super()._make_cgroups()
        if not self.unified:
            self.openrc_cg = "cgnetns-nspawn-" + self.tag

    def _boot(self):
        opts = "lowerdir=%s,upperdir=%s,workdir=%s" % (self.lower, self.upper, self.ovl_work)
        nspawn = ["systemd-nspawn", "-q", "-D", self.merged, "-M", self.name,
                  "--register=no", "--keep-unit", "--console=read-only",
                  # its own network namespace, as in systemd_support: nspawn
                  # keeps CAP_NET_ADMIN (cgnetns-run --unshare-net needs it)
                  "--private-network",
                  "--", "/bin/sh", "-c",
                  "umount -R /sys/fs/cgroup && exec setpriv --inh-caps=-all /sbin/init"]
        # The overlay, and for the hybrid layout the name=openrc hierarchy
        # with nspawn in a cgroup of its own there, in a private mount
        # namespace that ends with nspawn.
        script = 'mount -t overlay cgnetns-test -o "$1" "$2" && shift 2 && '
        args = [opts, self.merged]
        if self.openrc_cg:
            hier = os.path.join(self.dir, "openrc-hierarchy")
            os.makedirs(hier, exist_ok=True)
            script += ('mount -t cgroup -o none,%s cgnetns-test "$1" && mkdir -p "$1/$2" && '
                       'echo $$ > "$1/$2/cgroup.procs" && shift 2 && ' % OPENRC_HIERARCHY)
            args += [hier, self.openrc_cg]
        script += 'exec "$@"'
        argv = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                script, "sh"] + args + nspawn
        env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}
        self.console_path = os.path.join(self.dir, "console.log")
        if self.console is None:
            self.console = open(self.console_path, "ab")
        self.leader = None
        self.nspawn = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                       stdout=self.console, stderr=subprocess.STDOUT,
                                       preexec_fn=self._enter_cgroups, start_new_session=True)
        deadline = time.monotonic() + self.boot_timeout
        while True:
            self._check_alive()
            if self.leader is None:
                self.leader = self._find_leader()
            if self.leader is not None and self._booted():
                break
            if time.monotonic() > deadline:
                raise sd.ContainerError("OpenRC did not finish runlevel 2 within %ds\n%s"
                                        % (self.boot_timeout, self.console_text()))
            time.sleep(0.05)
        self.boots += 1
        self.state = "booted"
        comm = self.enter(["cat", "/proc/1/comm"], check=True).stdout.strip()
        if comm != "init":
            raise sd.ContainerError("PID 1 is %r, not sysvinit's init" % comm)

    def _booted(self):
        try:
            with open("/proc/%d/root%s" % (self.leader, BOOT_MARK)) as f:
                return f.read().strip() != ""
        except (FileNotFoundError, ProcessLookupError):
            return False

    def _find_leader(self):
        """nspawn's child whose NSpid ends in 1 (nspawn runs the payload below
        an intermediate child when it is not -b; search its descendants)."""
        todo = [self.nspawn.pid]
        seen = set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            try:
                with open("/proc/%d/status" % pid) as f:
                    for line in f:
                        if line.startswith("NSpid:"):
                            ns = line.split()[1:]
                            if len(ns) > 1 and ns[-1] == "1":
                                return pid
                for task in os.listdir("/proc/%d/task" % pid):
                    with open("/proc/%d/task/%s/children" % (pid, task)) as f:
                        todo += [int(p) for p in f.read().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
        return None

    # -- commands inside ---------------------------------------------------------
    def shell_prefix(self):
        """sh code that moves this shell into the container's cgroups as a
        login shell sits in them: the root of every v1 hierarchy OpenRC
        mounted, and the cgroup2 session cgroup."""
        return ('for t in /sys/fs/cgroup/*/tasks; do [ -w "$t" ] && echo $$ > "$t"; done; '
                'mkdir -p %(cg)s/%(s)s && echo $$ > %(cg)s/%(s)s/cgroup.procs || exit 99; '
                % {"cg": self.cg2, "s": SESSION})

    def run(self, argv, timeout=90, check=False, input=None):
        """ARGV inside, in the container's cgroups (shell_prefix)."""
        script = self.shell_prefix() + 'exec "$@"'
        return self.enter(["/bin/sh", "-c", script, "sh"] + list(argv), timeout=timeout,
                          check=check, input=input)

    def popen(self, argv, **kw):
        """ARGV inside as run() does, not waited for: a subprocess.Popen."""
        script = self.shell_prefix() + 'exec "$@"'
        return subprocess.Popen(
            ["nsenter", "-t", str(self.leader), "-a", "--", "/bin/sh", "-c", script, "sh"]
            + list(argv), env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "TERM": "dumb"}, **kw)

    def sh(self, code, **kw):
        return self.run(["/bin/sh", "-c", code], **kw)

    # -- tear-down ---------------------------------------------------------------
    def stop(self, timeout=30):
        """telinit 0: OpenRC's shutdown (every service stopped), then init
        powers the container off; SIGKILL to nspawn by PID if it does not."""
        if self.nspawn is None or self.nspawn.poll() is not None:
            return
        t0 = time.monotonic()
        if self.leader is not None:
            try:
                self.enter(["telinit", "0"], timeout=10)
            except subprocess.TimeoutExpired:
                pass
        else:
            self.nspawn.terminate()
            timeout = 5
        try:
            self.nspawn.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.log("systemd-nspawn did not end after telinit 0: SIGKILL to pid %d"
                     % self.nspawn.pid)
            os.kill(self.nspawn.pid, 9)
            self.nspawn.wait(timeout=10)
        self.timings["poweroff"] = time.monotonic() - t0

    def reboot(self):
        """Power off, then boot the same overlay again, from fresh cgroups
        (a host's cgroup trees start empty at boot)."""
        self.stop()
        rc = self.nspawn.returncode
        if rc != 0:
            raise sd.ContainerError("systemd-nspawn exited %s at poweroff\n%s"
                                    % (rc, self.console_text()))
        self._remove_openrc_cgroup()
        for path in self.cgroups:
            sd._remove_cgroup(path)
            os.mkdir(path, 0o755)
        t0 = time.monotonic()
        self._boot()
        self.timings["reboot-boot"] = time.monotonic() - t0

    def _remove_openrc_cgroup(self, timeout=10):
        """Our cgroup in the name=openrc hierarchy, and everything OpenRC made
        below it, once no process is left in it (the container is gone);
        then the hierarchy itself when nothing else is in it."""
        if not self.openrc_cg:
            return
        deadline = time.monotonic() + timeout
        while True:
            r = _in_openrc_hierarchy(
                '[ -d "$1/$2" ] || exit 0; '
                'pids=$(find "$1/$2" -name cgroup.procs -exec cat {} +); '
                '[ -z "$pids" ] || { echo $pids; exit 3; }; '
                'find "$1/$2" -depth -type d -exec rmdir {} +', self.openrc_cg)
            if r.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise sd.ContainerError("name=openrc cgroup %s: exit %d, processes %s %s"
                                        % (self.openrc_cg, r.returncode, r.stdout.split(),
                                           r.stderr))
            time.sleep(0.1)
        release_openrc_hierarchy(max(1, deadline - time.monotonic()))

    def close(self):
        errors = []
        try:
            self.stop()
        except Exception as e:
            errors.append("stop: %s" % e)
            if self.nspawn is not None and self.nspawn.poll() is None:
                self.nspawn.kill()
                self.nspawn.wait()
        # whatever is left of the container (its cgroups are ours) first:
        # a live process in its mount namespace keeps the hierarchy mounted
        for path in reversed(self.cgroups):
            try:
                sd._remove_cgroup(path)
            except Exception as e:
                errors.append("cgroup %s: %s" % (path, e))
        try:
            self._remove_openrc_cgroup()
        except Exception as e:
            errors.append(str(e))
        self.openrc_cg = None
        try:
            super().close()
        except Exception as e:
            errors.append(str(e))
        if errors:
            raise sd.ContainerError("teardown: " + "; ".join(errors))


def _in_openrc_hierarchy(script, *args):
    """sh SCRIPT with the name=openrc hierarchy mounted at "$1" (ARGS after
    it), in a private mount namespace; unmounted again when it ends."""
    with tempfile.TemporaryDirectory(prefix="openrc-hierarchy-", dir=CACHE_DIR) as mnt:
        return subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
             'mount -t cgroup -o none,%s cgnetns-test "$1" || exit 2; (%s); rc=$?; '
             'umount "$1"; exit $rc' % (OPENRC_HIERARCHY, script), "sh", mnt] + list(args),
            capture_output=True, text=True)


def release_openrc_hierarchy(timeout=10):
    """Let the kernel destroy the name=openrc hierarchy when no cgroup is left
    in it: it does so when its last mount goes while it has no child cgroup,
    and a child just removed may still count for a moment, so the mount is
    repeated until the hierarchy is gone.  False when others' cgroups keep it."""
    deadline = time.monotonic() + timeout
    while openrc_hierarchy_exists():
        r = _in_openrc_hierarchy('[ -z "$(find "$1" -mindepth 1 -maxdepth 1 -type d)" ]')
        if r.returncode == 1:
            return False
        if time.monotonic() > deadline:
            raise sd.ContainerError("the name=openrc hierarchy stays (%d %s)"
                                    % (r.returncode, r.stderr))
        time.sleep(0.1)
    return True


def sweep_stale_openrc(log=print):
    """What test runs that were killed left in the name=openrc hierarchy:
    cgroups cgnetns-nspawn-TAG without processes, older than
    systemd_support.STALE_AGE, whose TAG has no cgroup2 cgroup any more
    (systemd_support.sweep_stale removes those)."""
    from cgnetns import cgroups
    r = _in_openrc_hierarchy(
        'now=$(date +%%s); '
        'for d in "$1"/cgnetns-nspawn-*; do [ -d "$d" ] || continue; '
        '[ -d "$2/${d##*/}" ] && continue; '
        '[ $((now - $(stat -c %%Y "$d"))) -gt %d ] || continue; '
        '[ -z "$(find "$d" -name cgroup.procs -exec cat {} +)" ] || continue; '
        'find "$d" -depth -type d -exec rmdir {} + && echo "${d##*/}"; done; true'
        % sd.STALE_AGE, cgroups.find_cgroup2())
    for name in r.stdout.split():
        log("removed stale name=openrc cgroup %s" % name)
    release_openrc_hierarchy()


def openrc_hierarchy_exists():
    """Whether a name=openrc v1 hierarchy exists on this host (any process's
    /proc/self/cgroup lists every hierarchy)."""
    with open("/proc/self/cgroup") as f:
        return any(line.split(":")[1] == OPENRC_HIERARCHY for line in f if line.count(":") >= 2)


if __name__ == "__main__":
    import sys
    sys.path.insert(0, sd.REPO)
    t = time.monotonic()
    root = debootstrap_root(log=print)
    print(root, "%.1f s" % (time.monotonic() - t))
    mode = os.environ.get("RC_CGROUP_MODE", "hybrid")
    with Container(root, unified=mode == "unified") as c:
        print(c.timings)
        for code in sys.argv[1:]:
            r = c.sh(code)
            print("$", code, "->", r.returncode)
            print(r.stdout, r.stderr)
    print(c.timings)
