"""What every benchmark part shares: the session, rows of the table, the C
tools compiled at bench time, and ways to start a timing loop in a place
(outside any build, or inside a build's cgroup in a new network namespace, as
root or as an unprivileged user).

Benchmarks are not tests: nothing here asserts a timing.  A part that cannot
measure something (a missing helper, a missing feature) says so in its row.
Everything a part creates is registered on a ``Cleanup`` stack and removed by
its own name or PID, also on Ctrl-C or SIGTERM.
"""

import contextlib
import glob
import os
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from cgnetns import build as cgbuild
from cgnetns import paths

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What builds call: cgnetns-exec, the dynamic front without the set-user-ID
# bit.  It execs the set-user-ID static helper where privilege can be gained,
# and under no_new_privs is the broker's client itself (helper/front.c).
FRONT = os.environ.get("CGNETNS_EXEC", paths.FRONT)
HELPER = os.environ.get("CGNETNS_HELPER", paths.HELPER)
# The front as a masquerade: a symlink named distcc (PROGRAM is its name).
MASQ_DISTCC = os.path.join(paths.MASQ_BIN_DIR, "distcc")
ALLOW_PATH = paths.ALLOW_PATH
BROKER_SOCKET = paths.BROKER_SOCKET
# /bin/true is /usr/bin/true on Debian (merged /usr).  The helper takes an
# absolute PROGRAM only as an exact, canonical allow-list entry (no symlink on
# the path), so every row runs the canonical path, baselines included.
TRUE = os.path.realpath("/bin/true")
ENV = os.path.realpath("/usr/bin/env")   # one more dynamic program, nothing else
BUILD_USER = "nobody"
TOOLS = ("spawnloop", "rssprobe", "tcpbench", "scanres", "filler")


class BenchError(Exception):
    """A measurement could not be made; the message says why."""


def median(xs):
    return statistics.median(xs) if xs else None


def command(name, env_var=None):
    """How to start one of the project's Python commands: the installed
    script when there is one, else this checkout with the real interpreter."""
    if env_var and os.environ.get(env_var):
        return [os.environ[env_var]]
    installed = os.path.join("/usr/local/bin", name)
    if os.access(installed, os.X_OK):
        return [installed]
    module = {"cgnetns-run": "cgnetns.cli.run", "cgnetnsd": "cgnetns.cli.broker"}[name]
    return [sys.executable, "-m", module]


def child_env(**extra):
    """A small, fixed environment for everything the benchmarks start."""
    env = {"PATH": SYSTEM_PATH, "LC_ALL": "C", "HOME": "/", "PYTHONPATH": REPO}
    env.update(extra)
    return env


# -- the table --------------------------------------------------------------

class Row:
    """One line of the table.

    ``value``/``baseline_value`` are in ``unit``; ``ratio`` is value over
    baseline unless given (throughput rows give the time ratio).  ``target``
    is the text of the target, ``met`` True/False/None (no target, or not
    measured).  ``na`` replaces the value with its text ("n/a (...)").
    """

    def __init__(self, part, figure, value=None, unit="ms", n=None, baseline=None,
                 baseline_value=None, ratio=None, target=None, met=None, na=None):
        self.part, self.figure, self.value, self.unit, self.n = part, figure, value, unit, n
        self.baseline, self.baseline_value = baseline, baseline_value
        if ratio is None and value is not None and baseline_value:
            ratio = value / baseline_value
        self.ratio, self.target, self.met, self.na = ratio, target, met, na

    def as_dict(self):
        return dict(vars(self))


def paired_ratio(base, other):
    """Median over rounds of OTHER's round time over BASE's (the two lists in
    round order): runs of one round meet the same load on the machine, so
    the ratio of a pair moves less than either time does (README, what the
    figures are)."""
    return median([o / b for b, o in zip(base, other)])


def fmt(value, unit):
    if value is None:
        return "-"
    if unit in ("KiB", "MiB/s", "calls"):
        return "%d %s" % (round(value), unit)
    if abs(value) >= 100:
        s = "%.1f" % value
    elif abs(value) >= 10:
        s = "%.2f" % value
    else:
        s = "%.3f" % value
    return "%s %s" % (s, unit)


def row_cells(r):
    value = r.na if r.na else fmt(r.value, r.unit)
    base = "-"
    if r.baseline:
        base = r.baseline if r.baseline_value is None else "%s: %s" % (
            r.baseline, fmt(r.baseline_value, r.unit))
    ratio = "-" if r.ratio is None or r.na else "%.2fx" % r.ratio
    result = {True: "met", False: "NOT met", None: "-" if not r.target else "n/a"}[r.met]
    return [str(r.part), r.figure, "-" if r.n is None else str(r.n), value, base, ratio,
            r.target or "-", result]


HEADERS = ["#", "figure", "n", "median", "baseline (same run)", "ratio", "target", "result"]


def render_text(rows):
    table = [HEADERS] + [row_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    out = []
    for k, line in enumerate(table):
        out.append("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def render_rst(rows):
    table = [HEADERS] + [row_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    head = "+" + "+".join("=" * (w + 2) for w in widths) + "+"
    out = [sep]
    for k, line in enumerate(table):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |")
        out.append(head if k == 0 else sep)
    return "\n".join(out)


# -- cleanup -----------------------------------------------------------------

class Cleanup(contextlib.ExitStack):
    """An ExitStack whose unwinding is not cut short by Ctrl-C: SIGINT,
    SIGTERM and SIGHUP are blocked while it runs, and delivered after."""

    def __exit__(self, *exc):
        with signals_held():
            return super().__exit__(*exc)


@contextlib.contextmanager
def signals_held():
    """Hold SIGINT, SIGTERM and SIGHUP back for a short critical step (they
    are delivered right after it)."""
    sigs = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def new_build(stack, name):
    """A Build made with cgnetns.build.Build and registered for removal.

    create() is not interrupted half way: a signal between two of its steps
    would leave a record or pin file that close() does not know about (for
    cgnetns-gc to find); held back, it arrives once the build is whole and
    its removal registered."""
    from cgnetns.build import Build
    with signals_held():
        b = Build(name=name).create()
        stack.callback(b.close)
    return b


def kill_wait(proc, timeout=10):
    """End a child we started, by its PID (and its process group, when it
    leads one of its own), and reap it: SIGTERM first, so that a cgnetns-run
    tears its build down, then SIGKILL."""
    group = getattr(proc, "bench_group", False)

    def send(sig):
        try:
            if group:
                os.killpg(proc.pid, sig)
            elif proc.poll() is None:
                os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass

    if proc.poll() is None:
        send(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    send(signal.SIGKILL)
    proc.wait()


def communicate(proc, timeout=600, what="command"):
    """proc.communicate(), but the child is killed (by PID) if we are interrupted."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_wait(proc)
        raise BenchError("%s: no answer within %d s" % (what, timeout)) from None
    except BaseException:
        kill_wait(proc)
        raise
    return out, err


class AllowList:
    """Our entries in the allow list, in a marked block of our own.

    Tests or tools may rewrite the file while the benchmark runs (they share
    the machine): ``ensure()`` puts our block back when an entry of ours has
    gone, and the end takes out our blocks only, so the file is byte for byte
    what it was when nobody else changed it.  Without a file (or directory)
    before, none is left after."""

    def __init__(self):
        self.paths = []
        self.begin = ("# cgnetns bench (pid %d): added for the run, removed when it ends\n"
                      % os.getpid()).encode()
        self.end = ("# cgnetns bench (pid %d): end\n" % os.getpid()).encode()
        self.made_dir = False
        self.made_file = False

    def _read(self):
        try:
            with open(ALLOW_PATH, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def add(self, paths):
        self.paths += [p for p in paths if p not in self.paths]
        self.ensure()

    def ensure(self):
        text = self._read()
        listed = set() if text is None else {
            l.strip() for l in text.decode("utf-8", "replace").splitlines()}
        missing = [p for p in self.paths if p not in listed]
        if not missing:
            return
        if text is None:
            d = os.path.dirname(ALLOW_PATH)
            if not os.path.isdir(d):
                os.mkdir(d, 0o755)
                self.made_dir = True
            self.made_file, text, meta = True, b"", (0o644, 0, 0)
        else:
            st = os.stat(ALLOW_PATH)
            meta = (st.st_mode & 0o7777, st.st_uid, st.st_gid)
        if text and not text.endswith(b"\n"):
            text += b"\n"
        block = self.begin + "".join(p + "\n" for p in missing).encode() + self.end
        _replace(ALLOW_PATH, text + block, meta)

    def remove(self, stale=False):
        """Take our blocks out; with STALE, also those of benchmark runs
        that have ended (a tool that restored its own copy of the file may
        have brought one back after that run removed it)."""
        import re
        text = self._read()
        if text is not None:
            old = text
            pat = re.compile(rb"# cgnetns bench \(pid (\d+)\): added for the run[^\n]*\n")
            pos = 0
            while True:
                m = pat.search(text, pos)
                if m is None:
                    break
                pid = int(m.group(1))
                if pid != os.getpid() and not (stale and not _alive(pid)):
                    pos = m.end()
                    continue
                end = b"# cgnetns bench (pid %d): end\n" % pid
                j = text.find(end, m.end())
                j = len(text) if j < 0 else j + len(end)
                text = text[:m.start()] + text[j:]
            if self.made_file and not text.strip():
                os.unlink(ALLOW_PATH)
            elif text != old:
                st = os.stat(ALLOW_PATH)
                _replace(ALLOW_PATH, text, (st.st_mode & 0o7777, st.st_uid, st.st_gid))
        if self.made_dir:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(ALLOW_PATH))
        self.paths = []


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


ALLOW = AllowList()


@contextlib.contextmanager
def allow_listed(paths):
    """Allow-list PATHS (canonical) for the duration of a part."""
    ALLOW.add(paths)
    try:
        yield
    finally:
        ALLOW.remove()


def _replace(path, data, meta):
    tmp = "%s.bench-%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fchown(fd, meta[1], meta[2])
        os.fchmod(fd, meta[0])
    finally:
        os.close(fd)
    os.rename(tmp, path)


# -- the session -------------------------------------------------------------

class Session:
    """State shared by the parts of one run: options, compiled tools, rows."""

    def __init__(self, quick=False, verbose=False):
        self.quick = quick
        self.verbose = verbose
        self.rows = []
        self.notes = []
        self.tools = {}
        self.tooldir = None
        self.only = None
        self.raw = {}          # part -> extra figures, for --json
        self.busy = []         # names of other processes seen busy between parts
        self.allow_rewrites = 0  # loops run again after others rewrote the allow list
        self.broker_restarts = 0  # measurements taken again after the broker went away
        self.distcc_dirs = []  # DISTCC_DIRs in use (their backoff goes with a broker restart)
        self.nobody = pwd.getpwnam(BUILD_USER)
        self.probe = None
        self.broker = None     # the run's cgnetnsd (BrokerProcess), once tools are compiled

    def log(self, msg):
        sys.stderr.write("bench: %s\n" % msg)
        sys.stderr.flush()

    def add(self, *rows):
        self.rows.extend(rows)

    def note(self, text):
        self.notes.append(text)

    # Sizes: (full, quick)
    def pick(self, full, quick):
        return quick if self.quick else full

    def compile_tools(self, stack):
        """Compile the C tools into a root-owned directory below /run (the
        helper runs only programs in root-owned, not group/other-writable
        directories, and the build user must be able to execute them)."""
        if self.tooldir:
            return
        cc = shutil.which("gcc", path=SYSTEM_PATH)
        if not cc:
            raise BenchError("gcc not found (Debian package gcc)")
        self.tooldir = tempfile.mkdtemp(prefix="cgnetns-bench.", dir="/run")
        stack.callback(shutil.rmtree, self.tooldir, True)
        os.chmod(self.tooldir, 0o755)
        self.broker = BrokerProcess(self)
        stack.callback(self.broker.stop)
        for name in TOOLS:
            out = os.path.join(self.tooldir, name)
            _compile([cc, "-O2", "-Wall", "-o", out, os.path.join(HERE, name + ".c")])
            self.tools[name] = out

    def tool(self, name):
        return self.tools[name]

    def start_probe_server(self, stack):
        """The server that the join and broker probes connect to (ProbeServer)."""
        self.probe = ProbeServer(self, stack)


def _compile(argv):
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        raise BenchError("%s failed: %s" % (" ".join(argv), last_line(p.stderr)))


# -- starting things in places ------------------------------------------------

def start_outside(argv, user=None, env=None, **kw):
    """ARGV in the current (parent) network namespace and cgroup."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    ALLOW.ensure()
    _ensure_broker()
    if user is not None:
        uid, gid, groups = cgbuild.resolve_user(user)
        kw.update(user=uid, group=gid, extra_groups=groups)
    # A process group of its own: if we are interrupted, whatever it started
    # (make, distcc, ...) is ended with it (kill_wait).
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env or child_env(), cwd="/",
                            start_new_session=True, **kw)
    proc.bench_group = True
    return proc


def start_in_build(cgroup_path, argv, user=None, unshare_net=True, env=None, **kw):
    """ARGV in the cgroup CGROUP_PATH (a build's, or below it), in a new
    network namespace with lo up, then as USER: the library's own child set-up
    (cgnetns.build.ChildSetup), as Build.spawn and cgnetns-run do."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    ALLOW.ensure()
    _ensure_broker()
    if unshare_net:
        import pyroute2  # noqa: F401 -- imported before fork, as Build.spawn does
    ids = None if user is None else cgbuild.resolve_user(user)
    setup = cgbuild.ChildSetup(cgroup_path, unshare_net, ids)
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env or child_env(), cwd="/",
                            preexec_fn=setup, **kw)


def loop(sess, start, argv, n, warm=3, nnp=False, what=None, expect_status=0):
    """Run ARGV N times inside one spawnloop process started by START(argv).

    ARGV may also be a list of commands: they are called in turn, N calls
    each, and a list of sample lists (one per command) is returned.
    A sample is (seconds, wait status, ru_maxrss KiB).  Every call must end
    with EXPECT_STATUS, else BenchError with the child's last stderr line.
    When our allow-list entries vanished meanwhile (someone else rewrote the
    file: exit 126, "not in the allow list"), they are put back and the loop
    runs again, at most three times.
    """
    for attempt in range(4):
        try:
            return _loop(sess, start, argv, n, warm, nnp, what, expect_status)
        except _AllowListRewritten:
            sess.allow_rewrites += 1
            ALLOW.ensure()
        except BrokerGone:
            broker_gone(sess)
    raise BenchError("%s: the allow list or the broker kept going away under the benchmark" % (
        what or argv[0]))


class _AllowListRewritten(Exception):
    pass


# What the front prints when no broker answers (helper/client.c).
NO_BROKER = "no broker at"


class BrokerGone(BenchError):
    """The broker in use went away during a measurement (another engineer's
    test stopped its own): the measurement is taken again."""


def broker_gone(sess):
    sess.broker_restarts += 1
    sess.log("the broker went away during a measurement: measuring again")
    _ensure_broker()
    # distcc, having failed to reach its host, backs off from it for a
    # minute: that memory goes (DISTCC_DIR/lock/backoff_*).
    for d in sess.distcc_dirs:
        for name in glob.glob(os.path.join(d, "lock", "backoff_*")):
            with contextlib.suppress(OSError):
                os.unlink(name)


def _loop(sess, start, argv, n, warm, nnp, what, expect_status):
    cmds = argv if isinstance(argv[0], (list, tuple)) else [argv]
    cmd = [sess.tool("spawnloop"), "-n", str(n), "-w", str(warm), "--"]
    for k, c in enumerate(cmds):
        cmd += ([":::"] if k else []) + list(c)
    if nnp:
        cmd = ["/usr/bin/setpriv", "--no-new-privs"] + cmd
    what = what or " ".join(cmds[0])
    proc = start(cmd)
    out, err = communicate(proc, what=what)
    err = err.decode(errors="replace")
    last = last_line(err)
    if proc.returncode != 0:
        raise BenchError("%s: spawnloop exit %d: %s" % (what, proc.returncode, last))
    samples = [[] for _ in cmds]
    for line in out.decode().split("\n"):
        if line.strip():
            ns, status, kib, idx = line.split()
            samples[int(idx)].append((int(ns) / 1e9, int(status), int(kib)))
    for k, got in enumerate(samples):
        bad = {os.waitstatus_to_exitcode(s[1]) for s in got} - {expect_status}
        if bad == {126} and "not in the allow list" in err:
            raise _AllowListRewritten()
        if bad and NO_BROKER in err:
            raise BrokerGone(what)
        if bad or len(got) != n:
            raise BenchError("%s: %s: %d calls, exit statuses %s (expected %d): %s" % (
                what, " ".join(cmds[k]), len(got), sorted(bad), expect_status, last))
    return samples if cmds is argv else samples[0]


def exec_probe(sess, start_root, argv, n=10, user=BUILD_USER, nnp=False, what=None):
    """System calls and resident set of each image of one process running
    ARGV (bench/rssprobe.c), N calls: a list with, per image in exec order
    (e.g. front, helper, program), the medians (syscalls, RSS KiB, syscalls
    before its first prctl, i.e. a front's start-up before main).  Every call
    must go through the same images.  START_ROOT must start its argument as
    root; the program runs as USER (None: as whoever START_ROOT starts)."""
    cmd = [sess.tool("rssprobe"), "-n", str(n)]
    if user is not None:
        uid, gid, _ = cgbuild.resolve_user(user)
        cmd += ["-u", str(uid), "-g", str(gid)]
    if nnp:
        cmd.append("-P")
    what = what or argv[0]
    for attempt in range(4):
        proc = start_root(cmd + ["--"] + list(argv))
        out, err = communicate(proc, what=what)
        full = err.decode(errors="replace")
        err = last_line(full)
        calls, statuses = [], set()
        for line in out.decode().split("\n"):
            if line.strip():
                f = line.split()
                statuses.add(os.waitstatus_to_exitcode(int(f[0])))
                calls.append([tuple(int(x) for x in img.split(":")) for img in f[1:]])
        if statuses == {126} and "not in the allow list" in err:
            sess.allow_rewrites += 1
            ALLOW.ensure()
            continue
        if statuses != {0} and NO_BROKER in full:
            broker_gone(sess)
            continue
        if proc.returncode != 0 or statuses != {0} or len(calls) != n:
            raise BenchError("%s: under rssprobe: exit statuses %s: %s" % (
                what, sorted(statuses), err))
        shapes = {len(c) for c in calls}
        if len(shapes) != 1 or any(img[1] < 0 for c in calls for img in c):
            raise BenchError("%s: under rssprobe: calls went through %s images" % (
                what, sorted(shapes)))
        k = shapes.pop()
        return [tuple(median([c[i][j] for c in calls]) for j in range(3)) for i in range(k)]
    raise BenchError("%s: the allow list kept being rewritten under the benchmark" % what)


def last_line(err):
    """The last line a child wrote to stderr (bytes or str), for one-line errors."""
    if isinstance(err, bytes):
        err = err.decode(errors="replace")
    lines = err.strip().splitlines()
    return lines[-1] if lines else ""


def interleaved(sess, places, n, rounds, warm=3):
    """Measure in several places, round-robin, ROUNDS times N calls each.

    PLACES: name -> (start, [command, ...], loop keyword arguments).  In each
    place the commands alternate call by call (spawnloop ":::"), so that
    comparisons within a place see the same machine; the rounds spread the
    places over the same stretch of time.  Returns name -> [samples per
    command].
    """
    got = {name: [[] for _ in cmds] for name, (_, cmds, _) in places.items()}
    for _ in range(rounds):
        for name, (start, cmds, kw) in places.items():
            for k, samples in enumerate(loop(sess, start, cmds, n, warm=warm, what=name, **kw)):
                got[name][k] += samples
    return got


def ms(samples):
    return median([s[0] for s in samples]) * 1e3


def machine_load():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def cpu_seconds():
    """(CPU seconds the whole machine has used, CPU seconds of this process and
    its reaped children): their growth over a run tells how much others used."""
    import resource
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait
    busy = sum(fields[:8]) - fields[3] - fields[4]
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        own += ru.ru_utime + ru.ru_stime
    return busy / os.sysconf("SC_CLK_TCK"), own


def busy_processes(threshold=20.0, interval=0.5):
    """Other processes using more than THRESHOLD % of a CPU right now."""
    def cpu_times():
        out = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                with open("/proc/%s/stat" % pid, "rb") as f:
                    data = f.read()
                rest = data[data.rindex(b")") + 2:].split()
                comm = data[data.index(b"(") + 1:data.rindex(b")")].decode(errors="replace")
                out[pid] = (int(rest[11]) + int(rest[12]), comm)
            except (OSError, ValueError, IndexError):
                continue
        return out
    a = cpu_times()
    time.sleep(interval)
    b = cpu_times()
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (t, comm) in b.items():
        if pid in a:
            pct = 100.0 * (t - a[pid][0]) / hz / interval
            if pct >= threshold:
                busy.append("%s[%s] %.0f%%" % (comm, pid, pct))
    return busy


# -- the helper and the broker -------------------------------------------------

READLINK = os.path.realpath("/usr/bin/readlink")


def helper_missing():
    """Why the front and the set-user-ID helper cannot be measured, or None."""
    try:
        st = os.stat(HELPER)
    except FileNotFoundError:
        return "not installed: %s is missing (make install)" % HELPER
    if st.st_uid != 0 or not st.st_mode & 0o4000:
        return "%s is not set-user-ID root" % HELPER
    try:
        st = os.stat(FRONT)
    except FileNotFoundError:
        return "not installed: %s is missing (make install)" % FRONT
    if st.st_mode & 0o6000:
        return "%s is set-user-ID or set-group-ID: an old install (make install)" % FRONT
    return None


class ProbeServer:
    """A TCP server (bench/tcpbench.c) on 127.0.0.1 in the parent network
    namespace.  "Joined" is a connect reaching it from inside a build, whose
    own namespace has only lo: on the set-user-ID path the program runs in
    the parent namespace (setns); on the broker path it stays in its own and
    only its sockets are made in the parent one, so /proc/self/ns/net would
    not tell."""

    def __init__(self, sess, stack):
        tcp = sess.tool("tcpbench")
        self.proc = subprocess.Popen([tcp, "serve"], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, cwd="/", start_new_session=True)
        stack.callback(kill_wait, self.proc)
        stack.callback(self.proc.stdout.close)
        self.port = self.proc.stdout.readline().decode().strip()
        if not self.port.isdigit():
            raise BenchError("tcpbench server did not start")
        self.client = [tcp, "client", self.port, "1", "0", "0"]


def _connect_probe(sess, start, prefix, what):
    """(exit status, stderr's last line) of one connect from START, through PREFIX."""
    ALLOW.add([sess.tool("tcpbench")])
    proc = start(prefix + sess.probe.client)
    out, err = communicate(proc, timeout=60, what=what)
    ok = proc.returncode == 0 and out.decode(errors="replace").startswith("lat ")
    return (0 if ok else proc.returncode or 1), last_line(err)


def _check(sess, start, nnp, what):
    missing = helper_missing()
    if missing:
        return missing
    rc, err = _connect_probe(sess, start, [], what + " control")
    if rc == 0:
        return "%s: the build reaches the parent namespace's server without cgnetns" % what
    prefix = ["/usr/bin/setpriv", "--no-new-privs"] if nnp else []
    rc, err = _connect_probe(sess, start, prefix + [FRONT], what)
    if rc == 0:
        return None
    return "%s failed (exit %d): %s" % (what, rc, err)


def check_join(sess, start):
    """None when ``cgnetns-exec PROGRAM`` (the front, which execs the
    set-user-ID helper), started by START inside a build, gives PROGRAM a
    connection to the parent namespace (and PROGRAM alone has none); else why
    not."""
    return _check(sess, start, False, "join probe (set-user-ID path)")


def check_broker(sess, start):
    """The same under no_new_privs, where the front is the broker's client:
    None when PROGRAM's socket reaches the parent namespace through cgnetnsd."""
    return _check(sess, start, True, "broker probe (no_new_privs)")


def broker_pid():
    """PID of the cgnetnsd answering on the broker socket, or None.
    (SO_PEERCRED of a client's socket names the process that listens.)"""
    import socket
    import struct
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(BROKER_SOCKET)
        pid, _, _ = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                     struct.calcsize("3i")))
        return pid
    except OSError:
        return None
    finally:
        s.close()


def _broker_lock_held():
    """Whether some cgnetnsd holds the broker's lock (its flock in /proc/locks).
    Read, never taken: taking it, even for a moment, could make a broker that
    someone else is starting fail."""
    try:
        st = os.stat(paths.BROKER_LOCK)
        with open("/proc/locks") as f:
            text = f.read()
    except OSError:
        return False
    for line in text.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:1450715 0 EOF" (a waiter: "1: -> FLOCK ...")
        f = line.split()
        if "FLOCK" not in f or "->" in f:
            continue
        i = f.index("FLOCK")
        try:
            maj, mnr, ino = f[i + 4].split(":")
            if int(ino) == st.st_ino and os.makedev(int(maj, 16), int(mnr, 16)) == st.st_dev:
                return True
        except (IndexError, ValueError):
            continue
    return False


ACTIVE_BROKER = None


def _ensure_broker():
    if ACTIVE_BROKER is not None:
        ACTIVE_BROKER.ensure()


class BrokerProcess:
    """The run's cgnetnsd, one for the whole run (Session.broker): one
    already answering on the socket (a service, or one that cgnetns-run or a
    test started), else one started here and stopped by its PID when the run
    ends.  Other engineers' tests start and stop brokers on the same socket:
    before each measurement (start_outside, start_in_build) ``ensure()``
    starts ours again when none holds the broker's lock any more."""

    def __init__(self, sess):
        self.sess = sess
        self.proc = None
        self.foreign_pid = None
        self.result = False       # not started yet
        self.restarts = 0
        self.log_path = os.path.join(sess.tooldir, "cgnetnsd.log")

    def start(self):
        """Make sure one answers; return None, or why none can."""
        global ACTIVE_BROKER
        if self.result is not False:
            return self.result
        self.foreign_pid = broker_pid()
        if self.foreign_pid:
            self.sess.note("cgnetnsd: the broker already running (pid %d) was used; its peak "
                           "RSS covers its whole life." % self.foreign_pid)
            self.result = None
        else:
            self.result = self._spawn()
        if self.result is None:
            ACTIVE_BROKER = self
        return self.result

    def _spawn(self):
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(command("cgnetnsd", "CGNETNSD"), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, env=child_env(),
                                         cwd="/", start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return "cgnetnsd exited with status %d: %s" % (self.proc.returncode,
                                                              self.log_tail())
            if _broker_lock_held() and broker_pid():
                return None
            time.sleep(0.02)
        return "cgnetnsd did not listen within 10 s"

    def ensure(self):
        if self.result is not None:
            return
        if self.proc is not None and self.proc.poll() is None:
            return
        if _broker_lock_held():
            return
        self.restarts += 1
        self.foreign_pid = None
        if self.proc is not None:
            kill_wait(self.proc, timeout=5)
            self.proc = None
        self.sess.log("cgnetnsd: the broker in use has gone; starting one")
        why = self._spawn()
        if why:
            self.sess.log("cgnetnsd: %s" % why)

    def log_tail(self):
        try:
            with open(self.log_path, errors="replace") as f:
                lines = f.read().strip().splitlines()
            return lines[-1] if lines else ""
        except OSError:
            return ""

    def peak_rss_kib(self):
        """VmHWM of the broker (its own peak resident set, KiB)."""
        pid = self.foreign_pid or (self.proc.pid if self.proc and self.proc.poll() is None
                                   else None)
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except (OSError, TypeError):
            pass
        return None

    def stop(self):
        global ACTIVE_BROKER
        ACTIVE_BROKER = None
        if self.restarts:
            self.sess.note("cgnetnsd: the broker in use went away during the run (another "
                           "engineer's test stopping its own); one was started again %d "
                           "time(s)." % self.restarts)
        if self.proc is not None:
            kill_wait(self.proc, timeout=5)
