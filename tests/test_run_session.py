"""cgnetns-run and the terminal (THREATS 24, issue 11 finding 3) and the state
of the broker it starts (THREATS 26, issue 11 finding 8).

The terminal tests play it for real: a pty whose slave is the controlling
terminal of a small job-control "root shell" (DRIVER below), which runs a job
in the foreground, reports when it stops or ends, and afterwards reads what is
waiting on the terminal's input -- where bytes typed by TIOCSTI would be, to be
run by root's shell.  The attacker is a C program run as nobody.
"""

import ctypes
import errno
import json
import os
import resource
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time

import pytest

from cgnetns import cgroups
from cgnetns.broker import SOCKET_PATH
from cgnetns.cli import run as run_cli

from conftest import CGNETNS_RUN, NOBODY, PY, USER_PY, repo_env, run
from helper_support import stop_process

LEAK_PREFIX = "session-"
TIMEOUT = 30.0

ATTACKER_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

/* Type TEXT into the terminal on FD; 0 or the first errno. */
static int inject(int fd, const char *text)
{
	for (; *text; text++)
		if (ioctl(fd, TIOCSTI, text) < 0)
			return errno;
	return 0;
}

int main(int argc, char **argv)
{
	FILE *out;
	int fd;

	if (argc != 3 || !(out = fopen(argv[1], "w")))
		return 99;
	fprintf(out, "isatty0=%d\n", isatty(0));
	/* Try to make root's terminal our controlling terminal first. */
	fprintf(out, "sctty=%d\n", ioctl(0, TIOCSCTTY, 0) < 0 ? errno : 0);
	fprintf(out, "sti0=%d\n", inject(0, argv[2]));
	fd = open("/dev/tty", O_RDWR | O_NOCTTY);
	fprintf(out, "devtty=%d\n", fd < 0 ? errno : 0);
	if (fd >= 0)
		fprintf(out, "stitty=%d\n", inject(fd, argv[2]));
	return fclose(out) ? 98 : 0;
}
"""

# COMMAND for the signal tests: forks a child that stays in its process group
# with SIGINT's default action.  On SIGINT, COMMAND waits (up to 10 s) for that
# child and writes how it ended to DIR/child-end ("sigint" only if the group
# got the signal too), then dies of SIGINT itself.
GROUP_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static pid_t child;
static const char *dir;

static void put(const char *name, const char *text)
{
	char path[4096], tmp[4200];
	int fd;

	snprintf(path, sizeof path, "%s/%s", dir, name);
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, text, strlen(text)) < 0 || close(fd) < 0 || rename(tmp, path) < 0)
		_exit(97);
}

static void on_int(int sig)
{
	const char *what = "alive";
	int st, i;

	for (i = 0; i < 1000; i++) {
		if (waitpid(child, &st, WNOHANG) == child) {
			what = WIFSIGNALED(st) && WTERMSIG(st) == SIGINT ? "sigint" : "other";
			break;
		}
		usleep(10000);
	}
	put("child-end", what);
	signal(sig, SIG_DFL);
	raise(sig);	/* blocked in the handler: delivered when it returns */
}

int main(int argc, char **argv)
{
	char buf[128], c;
	int p[2];

	if (argc != 2 || pipe(p) < 0)
		return 99;
	dir = argv[1];
	prctl(PR_SET_DUMPABLE, 0);	/* Ctrl-\ must not leave core files */
	child = fork();
	if (child < 0)
		return 99;
	if (child == 0) {
		close(p[0]);
		if (write(p[1], "x", 1) != 1)
			_exit(99);
		for (;;)
			pause();
	}
	close(p[1]);
	if (read(p[0], &c, 1) != 1)
		return 98;
	signal(SIGINT, on_int);
	snprintf(buf, sizeof buf, "%d %d %d\n", (int)getpid(), (int)getpgrp(), (int)child);
	put("ready", buf);
	for (;;)
		pause();
}
"""

# The "root shell": session leader on the pty (fd 0-2), runs one job in the
# foreground as a job-control shell does, reports JSON lines on fd REPORT, and
# after a stop waits for a line on fd CONTROL before fg'ing the job again.
DRIVER = r"""
import fcntl, json, os, signal, struct, sys, termios
spec = json.loads(sys.argv[1])
rep, ctl = spec["report"], spec["control"]
os.set_inheritable(rep, False)
os.set_inheritable(ctl, False)

def report(**kw):
    os.write(rep, (json.dumps(kw) + "\n").encode())

fcntl.ioctl(0, termios.TIOCSCTTY, 0)
# No canonical mode: all pending input is readable at once; no echo; ISIG
# stays on, so ^C ^Z ^\ written to the master signal the foreground group.
attrs = termios.tcgetattr(0)
attrs[3] &= ~(termios.ICANON | termios.ECHO)
attrs[6][termios.VMIN] = 0
attrs[6][termios.VTIME] = 0
termios.tcsetattr(0, termios.TCSANOW, attrs)
JOB_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
for s in JOB_SIGNALS:
    signal.signal(s, signal.SIG_IGN)
pid = os.fork()
if pid == 0:
    try:
        os.setpgid(0, 0)
        os.tcsetpgrp(0, os.getpid())
        for s in JOB_SIGNALS:
            signal.signal(s, signal.SIG_DFL)
        os.execvp(spec["argv"][0], spec["argv"])
    finally:
        os._exit(127)
try:
    os.setpgid(pid, pid)
except OSError:
    pass  # the child did it already (and may have exec'd)
os.tcsetpgrp(0, pid)
report(event="started", pid=pid)
while True:
    _, status = os.waitpid(pid, os.WUNTRACED)
    if os.WIFSTOPPED(status):
        os.tcsetpgrp(0, os.getpgrp())
        report(event="stopped", signal=os.WSTOPSIG(status))
        os.read(ctl, 100)
        os.tcsetpgrp(0, pid)
        os.killpg(pid, signal.SIGCONT)
        continue
    break
os.tcsetpgrp(0, os.getpgrp())
# What root's shell would read next: bytes typed with TIOCSTI would be here.
pending = struct.unpack("i", fcntl.ioctl(0, termios.FIONREAD, b"\0" * 4))[0]
os.set_blocking(0, False)
try:
    data = os.read(0, 65536)
except BlockingIOError:
    data = b""
report(event="exited", status=os.waitstatus_to_exitcode(status), pending=pending,
       input=data.decode("latin-1"))
"""


def _alive(pid):
    """True while PID exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _poll(what, predicate, timeout=TIMEOUT, interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(interval)


@pytest.fixture(scope="module")
def probes():
    """The C probes, compiled into a directory nobody can read and run."""
    if not shutil.which("gcc"):
        pytest.fail("gcc is needed to build the probes")
    top = tempfile.mkdtemp(prefix="cgnetns-session-", dir="/tmp")
    try:
        os.chmod(top, 0o755)
        bins = {}
        for name, src in (("attacker", ATTACKER_C), ("group", GROUP_C)):
            c = os.path.join(top, name + ".c")
            with open(c, "w") as f:
                f.write(src)
            out = os.path.join(top, name)
            r = run(["gcc", "-O1", "-Wall", "-Werror", "-o", out, c])
            assert r.returncode == 0, r.stderr.decode()
            os.chmod(out, 0o755)
            bins[name] = out
        yield bins
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def workdir():
    """A directory the job (as nobody) writes its results into."""
    d = tempfile.mkdtemp(prefix="cgnetns-session-work-", dir="/tmp")
    try:
        nobody = subprocess.run(NOBODY + ["id", "-u"], stdout=subprocess.PIPE, check=True)
        os.chown(d, int(nobody.stdout), -1)
        os.chmod(d, 0o755)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Terminal:
    """A pty with DRIVER as the session on it, running ARGV as its foreground job."""

    def __init__(self, argv, cwd):
        self.master = self.driver = self.job = None
        self.output = bytearray()
        self.reader = None
        self._buf = b""
        fds = []
        try:
            self.master, slave = os.openpty()
            fds.append(slave)
            self.report_r, report_w = os.pipe()
            fds.append(report_w)
            control_r, self.control_w = os.pipe()
            fds.append(control_r)
            spec = {"argv": argv, "report": report_w, "control": control_r}
            self.driver = subprocess.Popen(
                [PY, "-c", DRIVER, json.dumps(spec)], stdin=slave, stdout=slave,
                stderr=slave, pass_fds=(report_w, control_r), start_new_session=True,
                cwd=cwd, env=repo_env())
            self.reader = threading.Thread(target=self._read_master, daemon=True)
            self.reader.start()
            self.job = self.event("started")["pid"]
        except BaseException:
            self.close()
            raise
        finally:
            for fd in fds:
                os.close(fd)

    def _read_master(self):
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:  # EIO: the last slave descriptor is gone
                return
            if not data:
                return
            self.output += data

    def type(self, data):
        os.write(self.master, data)

    def event(self, name, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.report_r], [], [], left)[0]:
                raise AssertionError("no %r from the terminal's shell; terminal output: %r"
                                     % (name, bytes(self.output)))
            data = os.read(self.report_r, 4096)
            if not data:
                raise AssertionError("the terminal's shell ended before %r; output: %r"
                                     % (name, bytes(self.output)))
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        ev = json.loads(line)
        assert ev["event"] == name, (ev, bytes(self.output))
        return ev

    def resume(self):
        os.write(self.control_w, b"cont\n")

    def close(self):
        """End the job (by PID: cgnetns-run tears its build down on SIGTERM),
        then the driver, then the pty; also after a failure."""
        if self.job is not None and _alive(self.job):
            for sig in (signal.SIGCONT, signal.SIGTERM):
                try:
                    os.kill(self.job, sig)
                except ProcessLookupError:
                    pass
            try:
                _poll("the job to end", lambda: not _alive(self.job))
            except AssertionError:
                try:
                    os.kill(self.job, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if getattr(self, "control_w", None) is not None:
            os.close(self.control_w)
            self.control_w = None
        if self.driver is not None:
            try:
                self.driver.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.driver.kill()
                self.driver.wait()
        if getattr(self, "report_r", None) is not None:
            os.close(self.report_r)
            self.report_r = None
        if self.reader is not None:
            self.reader.join(TIMEOUT)
        if self.master is not None:
            os.close(self.master)
            self.master = None


def _results(path):
    with open(path) as f:
        return {k: int(v) for k, v in (line.split("=") for line in f.read().split())}


def _attack(probes, workdir, argv_prefix, name):
    payload = "echo cgnetns-tiocsti-%s\n" % os.urandom(4).hex()
    out = os.path.join(workdir, name)
    term = Terminal(argv_prefix + [probes["attacker"], out, payload], cwd=workdir)
    try:
        ev = term.event("exited")
    finally:
        term.close()
    return payload, _results(out), ev


def _legacy_tiocsti():
    try:
        with open("/proc/sys/dev/tty/legacy_tiocsti") as f:
            return f.read().strip() == "1"
    except FileNotFoundError:
        return True  # before 6.2 TIOCSTI always worked


def test_tiocsti_from_the_users_command_does_not_reach_roots_shell(clean_host, probes, workdir):
    if not _legacy_tiocsti():
        pytest.skip("dev.tty.legacy_tiocsti=0: this kernel refuses TIOCSTI to every "
                    "unprivileged process, so the attack cannot be shown working")
    # Control: the same program as nobody, left on root's terminal (as
    # cgnetns-run --user did before), types a command into root's shell.
    payload, res, ev = _attack(probes, workdir, NOBODY, "direct")
    assert ev["status"] == 0, ev
    assert res["isatty0"] == 1 and res["sti0"] == 0, res
    assert payload in ev["input"], (res, ev)

    # cgnetns-run --user: COMMAND has the terminal on fd 0 still, but not as
    # its controlling terminal; every way to type into it fails.
    payload, res, ev = _attack(probes, workdir, CGNETNS_RUN + [
        "--name", "session-sti", "--user", "nobody", "--"], "protected")
    assert ev["status"] == 0, ev
    assert res["isatty0"] == 1, res
    assert res["sctty"] == errno.EPERM, res          # root's session owns the terminal
    assert res["sti0"] in (errno.EPERM, errno.EIO), res
    assert res["devtty"] == errno.ENXIO, res         # no controlling terminal at all
    assert "stitty" not in res, res
    assert ev["pending"] == 0 and ev["input"] == "", ev


def test_user_command_has_its_own_session_root_command_does_not(clean_host):
    code = "import os; print(os.getpid(), os.getsid(0), os.getpgrp())"
    r = run(CGNETNS_RUN + ["--name", "session-sid", "--user", "nobody", "--",
                           USER_PY, "-c", code], env=repo_env())
    assert r.returncode == 0, r.stderr
    pid, sid, pgrp = map(int, r.stdout.split())
    assert sid == pid == pgrp
    r = run(CGNETNS_RUN + ["--name", "session-sid", "--", USER_PY, "-c", code], env=repo_env())
    assert r.returncode == 0, r.stderr
    pid, sid, pgrp = map(int, r.stdout.split())
    assert sid == os.getsid(0) and pgrp != pid  # cgnetns-run's session and group


def _ready(workdir):
    def check():
        try:
            with open(os.path.join(workdir, "ready")) as f:
                return [int(x) for x in f.read().split()]
        except FileNotFoundError:
            return None
    return _poll("the build to start", check)


def _child_end(workdir):
    with open(os.path.join(workdir, "child-end")) as f:
        return f.read()


def test_ctrl_c_at_the_terminal_reaches_the_whole_build(clean_host, probes, workdir):
    term = Terminal(CGNETNS_RUN + ["--name", "session-int", "--user", "nobody", "--",
                                   probes["group"], workdir], cwd=workdir)
    try:
        pid, pgrp, child = _ready(workdir)
        assert pgrp == pid and os.getsid(pid) == pid  # off the terminal
        term.type(b"\x03")
        ev = term.event("exited")
    finally:
        term.close()
    assert ev["status"] == 128 + signal.SIGINT, ev
    # COMMAND's child, in its process group, got the SIGINT too, as it would
    # from the terminal (cgnetns-run signalling COMMAND alone leaves "alive").
    assert _child_end(workdir) == "sigint"


def test_ctrl_backslash_at_the_terminal_ends_the_build(clean_host, probes, workdir):
    term = Terminal(CGNETNS_RUN + ["--name", "session-quit", "--user", "nobody", "--",
                                   probes["group"], workdir], cwd=workdir)
    try:
        _ready(workdir)
        term.type(b"\x1c")
        ev = term.event("exited")
    finally:
        term.close()
    assert ev["status"] == 128 + signal.SIGQUIT, ev


def _frozen(cgroup_path):
    with open(os.path.join(cgroup_path, "cgroup.events")) as f:
        return dict(line.split() for line in f)["frozen"]


def test_ctrl_z_freezes_the_build_and_fg_thaws_it(clean_host, probes, workdir, cg2root):
    term = Terminal(CGNETNS_RUN + ["--name", "session-tstp", "--user", "nobody", "--",
                                   probes["group"], workdir], cwd=workdir)
    try:
        pid, _, child = _ready(workdir)
        build = cgroups.to_abs(cg2root, cgroups.cgroup_of(pid))
        assert os.path.basename(build).startswith("session-tstp-")
        term.type(b"\x1a")
        ev = term.event("stopped")
        assert ev["signal"] == signal.SIGTSTP
        _poll("the build to freeze", lambda: _frozen(build) == "1")
        for p in (pid, child):
            assert _alive(p)
        term.resume()
        _poll("the build to thaw", lambda: _frozen(build) == "0")
        term.type(b"\x03")
        ev = term.event("exited")
    finally:
        term.close()
    assert ev["status"] == 128 + signal.SIGINT, ev
    assert _child_end(workdir) == "sigint"


# -- the auto-started broker (THREATS 26) -----------------------------------

_NR_IOPRIO_SET, _NR_IOPRIO_GET = 251, 252  # x86_64
IOPRIO_CLASS_IDLE = 3
ADDR_NO_RANDOMIZE = 0x0040000


def _listening_inode(path):
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            parts = line.split()
            # Num RefCount Protocol Flags Type St Inode [Path]; St 01: listening
            if len(parts) >= 8 and parts[7] == path and parts[5] == "01":
                return parts[6]
    return None


def _holders(inode):
    want = "socket:[%s]" % inode
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fds = os.listdir("/proc/%s/fd" % d)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink("/proc/%s/fd/%s" % (d, fd)) == want:
                    pids.append(int(d))
                    break
            except OSError:
                continue
    return pids


def _brokers(ppid=None):
    """PIDs of cgnetnsd processes (children of PPID only, when given)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                if b"cgnetns.cli.broker" not in f.read():
                    continue
            with open("/proc/%s/stat" % d) as f:
                if ppid is not None and int(f.read().rsplit(")", 1)[1].split()[1]) != ppid:
                    continue
        except (OSError, IndexError, ValueError):
            continue
        out.append(int(d))
    return out


def _listener():
    """PIDs holding the listening system socket."""
    inode = _listening_inode(SOCKET_PATH)
    return _holders(inode) if inode is not None else []


def _limits(pid):
    """[(soft, hard)] from /proc/PID/limits, in resource order (RLIMIT_CPU = 0...)."""
    out = []
    with open("/proc/%s/limits" % pid) as f:
        next(f)
        for line in f:
            out.append(tuple(resource.RLIM_INFINITY if v == "unlimited" else int(v)
                             for v in line[26:].split()[:2]))
    return out


def _children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return []


def _comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def _lower(a, b):
    inf = resource.RLIM_INFINITY
    return b if a == inf else a if b == inf else min(a, b)


def _above(a, b):
    inf = resource.RLIM_INFINITY
    return a != b and (a == inf or (b != inf and a > b))


def _has_cap(bit):
    return bool(int(_status("self")["CapEff"], 16) & (1 << bit))


def _status(pid):
    with open("/proc/%s/status" % pid) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _stop_broker(pid):
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        _poll("cgnetnsd %d to exit" % pid, lambda: not _alive(pid), timeout=10)
    except ProcessLookupError:
        pass
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        _poll("cgnetnsd %d to die" % pid, lambda: not _alive(pid), timeout=10)


def test_an_auto_started_broker_does_not_inherit_the_callers_state(cg2root, tmp_path):
    assert not run_cli.broker_answers(), (
        "a broker was left running on %s (pid %s): stop it, this test must see "
        "cgnetns-run start one" % (SOCKET_PATH, _listener()))
    if cgroups.systemd_manages_cgroups():
        pytest.skip("systemd manages cgroups here: the broker stays in the delegated cgroup")
    libc = ctypes.CDLL(None, use_errno=True)
    caller_cg = os.path.join(cg2root, "%sbroker-caller-%s" % (LEAK_PREFIX, os.urandom(4).hex()))
    cpus = sorted(os.sched_getaffinity(0))

    def caller_state():
        # What a build tool might run cgnetns-run with: every one of these is
        # inherited across fork and exec unless cgnetns-run resets it.
        with open(os.path.join(caller_cg, "cgroup.procs"), "w") as f:
            f.write("0")
        os.setpriority(os.PRIO_PROCESS, 0, 10)
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("500")
        libc.syscall(_NR_IOPRIO_SET, 1, 0, IOPRIO_CLASS_IDLE << 13)
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        if len(cpus) > 1:
            os.sched_setaffinity(0, cpus[:1])
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        os.umask(0o077)
        # Soft limits only: root here may lack CAP_SYS_RESOURCE to raise hard ones.
        for res, soft in ((resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_FSIZE, 1 << 30),
                          (resource.RLIMIT_CPU, 3600)):
            resource.setrlimit(res, (soft, resource.getrlimit(res)[1]))
        libc.personality(ADDR_NO_RANDOMIZE)

    env = repo_env()
    env.pop("CGNETNS_RUN_NO_BROKER", None)
    log_offset = os.path.getsize(run_cli.BROKER_LOG) if os.path.exists(run_cli.BROKER_LOG) else 0
    os.mkdir(caller_cg)
    gate_r, gate_w = os.pipe()
    p = broker = None
    try:
        # COMMAND waits on the gate, so a live build keeps the broker up while we look.
        p = subprocess.Popen(CGNETNS_RUN + ["--name", "session-broker", "--", "head", "-c1"],
                             stdin=gate_r, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=env, cwd=str(tmp_path), preexec_fn=caller_state)
        os.close(gate_r)
        gate_r = None
        # Ours is cgnetns-run's child until cgnetns-run exits (by PID: other
        # suites on this host may run brokers of their own).
        broker = _poll("cgnetns-run to start a broker on %s" % SOCKET_PATH,
                       lambda: (_brokers(p.pid) or [None])[0])
        _poll("cgnetnsd %d to listen on %s" % (broker, SOCKET_PATH),
              lambda: broker in _listener())
        # cgnetns-run probes the socket until the broker answers, and the broker
        # blocks every signal for the moment it spawns a helper: look once
        # COMMAND runs (no more probes) and only the fork server, which it
        # spawned at its start, is left of its children.
        _poll("COMMAND to start", lambda: any(_comm(c) == "head" for c in _children(p.pid)))
        _poll("cgnetnsd's helpers to end", lambda: len(_children(broker)) == 1)
        (fork_server,) = _children(broker)
        with open("/proc/%d/cmdline" % fork_server, "rb") as f:
            assert f.read().split(b"\0")[1] == b"--fork-server"
        # The fork server, whose children serve every request, has the
        # broker's reset state, not the caller's.
        assert os.getpriority(os.PRIO_PROCESS, fork_server) == 0
        with open("/proc/%d/oom_score_adj" % fork_server) as f:
            assert f.read().strip() == "0"
        assert _status(fork_server)["Umask"] == "0022"
        # The caller's state did reach cgnetns-run itself (the test's premise).
        assert os.getpriority(os.PRIO_PROCESS, p.pid) == 10
        assert cgroups.cgroup_of(p.pid) == cgroups.to_rel(cg2root, caller_cg)

        with open("/proc/%d/stat" % broker) as f:
            fields = f.read().rsplit(")", 1)[1].split()  # fields[0] is field 3
        pgrp, session, tty_nr, nice, policy = (int(fields[i]) for i in (2, 3, 4, 16, 38))
        assert (session, pgrp, tty_nr) == (broker, broker, 0)  # own session, no terminal
        assert nice == 0
        assert policy == os.SCHED_OTHER
        assert libc.syscall(_NR_IOPRIO_GET, 1, broker) == 0        # IOPRIO_CLASS_NONE
        with open("/proc/%d/oom_score_adj" % broker) as f:
            assert f.read().strip() == "0"
        st, st1 = _status(broker), _status(1)
        assert not int(st["SigBlk"], 16) & (1 << (signal.SIGUSR1 - 1)), st["SigBlk"]
        assert not int(st["SigIgn"], 16) & (1 << (signal.SIGUSR2 - 1)), st["SigIgn"]
        assert st["Umask"] == "0022"
        assert st["Cpus_allowed_list"] == st1["Cpus_allowed_list"]
        with open("/proc/%d/personality" % broker) as f:
            assert int(f.read(), 16) & ADDR_NO_RANDOMIZE == 0
        # PID 1's limits, RLIMIT_NOFILE's soft one raised to its hard one; a
        # hard limit above the caller's only with CAP_SYS_RESOURCE (else the
        # caller's hard limit, and a line in the log).
        cap = _has_cap(24)
        expected, kept = [], []
        for res, ((soft1, hard1), (_, mine)) in enumerate(zip(_limits(1), _limits("self"))):
            if _above(hard1, mine) and not cap:
                soft1, hard1 = _lower(soft1, mine), mine
                kept.append(res)
            expected.append((hard1, hard1) if res == resource.RLIMIT_NOFILE else (soft1, hard1))
        assert _limits(broker) == expected
        with open(run_cli.BROKER_LOG, "rb") as f:
            f.seek(log_offset)
            logged = f.read().decode(errors="replace")
        for res in kept:
            assert "RLIMIT_" + run_cli._RLIMIT_NAMES[res] in logged, logged
        assert os.readlink("/proc/%d/cwd" % broker) == "/"
        assert cgroups.cgroup_of(broker) == "/"                    # neither the caller's nor a build's
        assert os.readlink("/proc/%d/fd/0" % broker) == "/dev/null"
        assert os.readlink("/proc/%d/fd/1" % broker) == "/dev/null"
        assert os.readlink("/proc/%d/fd/2" % broker) == run_cli.BROKER_LOG
        log = os.stat(run_cli.BROKER_LOG)
        assert stat.S_IMODE(log.st_mode) == 0o600 and log.st_uid == 0

        os.close(gate_w)
        gate_w = None
        out, err = p.communicate(timeout=TIMEOUT)
        assert p.returncode == 0, err
        assert err == b""
    finally:
        for fd in (gate_r, gate_w):
            if fd is not None:
                os.close(fd)
        if broker is None and p is not None and p.poll() is None:
            broker = (_brokers(p.pid) or [None])[0]
        if p is not None:
            stop_process(p, TIMEOUT)
        _stop_broker(broker)
        if not run_cli.broker_answers() and os.path.lexists(SOCKET_PATH):
            os.unlink(SOCKET_PATH)
        try:
            _poll("the caller's cgroup to empty", lambda: not cgroups.procs(caller_cg), timeout=10)
        finally:
            os.rmdir(caller_cg)
