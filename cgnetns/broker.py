"""cgnetnsd: the root broker for callers that cannot gain privilege.

Owns the broker's side of doc/BROKER.rst: the listening socket (bound here, or
handed over by systemd socket activation through LISTEN_FDS), authenticating
each peer by the kernel (SO_PEERPIDFD; before Linux 6.5, SO_PEERCRED plus a
pidfd and a start-time check), validating the request, and starting the helper
in its ``--broker`` mode as real root for the peer.  The broker decides nothing
about namespaces itself: the helper's code resolves, checks, joins and drops.

One thread, one selector: a slow, broken or hostile connection is a state in a
table, not a blocked thread; each has a deadline and a size limit, and is
dropped with one log line.  Degrades: no SO_PEERPIDFD -> the fallback check;
no pidfd_open (Linux < 5.3) -> refuse every request with a logged reason.
"""

import ctypes
import errno
import fcntl
import os
import selectors
import signal
import resource
import socket
import struct
import sys
import time

from . import records

SOCKET_PATH = "/run/cgnetns/cgnetnsd.sock"
LOCK_PATH = "/run/cgnetns/cgnetnsd.lock"
HELPER = "/usr/local/bin/cgnetns-exec"

MAGIC = b"CGN1"
HEADER = struct.Struct("=4sIII")
MAX_PAYLOAD = 4 << 20
MAX_FDS = 65              # the cwd and at most 64 inherited descriptors
MAX_ARGS = 65536
MAX_FDNUM = 999
AGENT_PIDFD, AGENT_CWD, AGENT_STATUS = 1000, 1001, 1002

SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)   # include/uapi/asm-generic/socket.h
FORWARDED_SIGNALS = frozenset(int(s) for s in (
    signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP,
    signal.SIGCONT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH))


class BadRequest(Exception):
    """A request that does not validate; the connection is dropped."""


class Request:
    __slots__ = ("argv", "env", "fdnums")

    def __init__(self, argv, env, fdnums):
        self.argv, self.env, self.fdnums = argv, env, fdnums


def parse_header(data):
    magic, length, nfds, flags = HEADER.unpack(data)
    if magic != MAGIC:
        raise BadRequest("bad magic %r" % magic)
    if flags != 0:
        raise BadRequest("unknown flags %#x" % flags)
    if not 8 <= length <= MAX_PAYLOAD:
        raise BadRequest("payload length %d out of range" % length)
    if not 1 <= nfds <= MAX_FDS:
        raise BadRequest("%d descriptors (1 to %d allowed)" % (nfds, MAX_FDS))
    return length, nfds


def parse_payload(payload, nfds):
    """Validate and decode the payload of a request with NFDS descriptors."""
    if len(payload) < 8 + 4 * nfds:
        raise BadRequest("payload too short")
    argc, envc = struct.unpack_from("=II", payload, 0)
    if not 1 <= argc <= MAX_ARGS or envc > MAX_ARGS:
        raise BadRequest("argc %d / envc %d out of range" % (argc, envc))
    fdnums = list(struct.unpack_from("=%di" % nfds, payload, 8))
    if fdnums[0] != -1:
        raise BadRequest("first descriptor is not the cwd")
    rest = fdnums[1:]
    if any(not 0 <= n <= MAX_FDNUM for n in rest) or len(set(rest)) != len(rest):
        raise BadRequest("descriptor numbers out of range or repeated")
    body = payload[8 + 4 * nfds:]
    if argc + envc == 0 or not body.endswith(b"\0"):
        raise BadRequest("strings are not NUL-terminated")
    strings = body[:-1].split(b"\0")
    if len(strings) != argc + envc:
        raise BadRequest("%d strings, expected %d" % (len(strings), argc + envc))
    argv, env = strings[:argc], strings[argc:]
    if not argv[0]:
        raise BadRequest("empty program name")
    return Request(argv, env, fdnums)


def encode_request(argv, env, fdnums):
    """The header and payload for a request (used by tests and tools)."""
    body = b"".join(os.fsencode(a) + b"\0" for a in list(argv) + list(env))
    payload = struct.pack("=II", len(argv), len(env)) + struct.pack(
        "=%di" % len(fdnums), *fdnums) + body
    return HEADER.pack(MAGIC, len(payload), len(fdnums), 0), payload


def peer_pidfd(sock, pid, proc="/proc"):
    """A pidfd for the connected peer (PID from SO_PEERCRED), authenticated by
    the kernel.

    SO_PEERPIDFD (6.5+) names the very process that connected.  Without it,
    the PID may have been reused by the time we open it.  A process started
    after this check began cannot be the peer, so a pidfd whose process
    started later is refused; a reuse between the peer's connect() and this
    check is not caught (this narrows the window, it does not close it --
    kernels before 6.5 only).
    """
    try:
        return sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError as e:
        if e.errno not in (errno.ENOPROTOOPT, errno.EINVAL):
            raise
    accepted_at_ticks = _boot_ticks()
    fd = os.pidfd_open(pid)
    started = records.start_time(pid, proc)
    if started is None or started > accepted_at_ticks:
        os.close(fd)
        raise BadRequest("peer %d exited or its PID was reused" % pid)
    return fd


def _boot_ticks():
    with open("/proc/uptime") as f:
        return int(float(f.read().split()[0]) * os.sysconf("SC_CLK_TCK")) + 1


class Conn:
    """One client connection and, once started, its agent."""

    def __init__(self, sock, deadline):
        self.sock = sock
        self.deadline = deadline
        self.buf = b""
        self.fds = []
        self.length = None
        self.nfds = None
        self.pidfd = None
        self.peer = "?"
        self.agent_pid = None
        self.agent_pidfd = None
        self.status_r = None
        self.status_buf = b""
        self.sigbuf = b""
        self.finished = False
        self.program = None


class Broker:
    def __init__(self, socket_path=SOCKET_PATH, helper=HELPER, max_conns=256,
                 request_timeout=10.0, idle_exit=None, log=None, lock_path=None):
        # One lock per socket: brokers on other sockets (tests, a private
        # instance) do not exclude the system's.
        if lock_path is None:
            lock_path = LOCK_PATH if socket_path == SOCKET_PATH else socket_path + ".lock"
        self.socket_path = socket_path
        self.helper = helper
        self.max_conns = max_conns
        self.request_timeout = request_timeout
        self.idle_exit = idle_exit
        self.lock_path = lock_path
        self.log = log or (lambda msg: sys.stderr.write("cgnetnsd: %s\n" % msg))
        self.sel = None
        self.listener = None
        self.conns = {}
        self._lock_fd = None
        self._stop = False
        self._activated = False

    # -- set-up -----------------------------------------------------------
    def listen(self):
        fds = int(os.environ.get("LISTEN_FDS", "0") or 0)
        if os.environ.get("LISTEN_PID") == str(os.getpid()) and fds >= 1:
            # systemd socket activation (sd_listen_fds(3)): the socket is fd 3.
            self.listener = socket.socket(fileno=3)
            self._activated = True
            for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                os.environ.pop(k, None)
            # Any process may ask (the kernel says who it is): the socket is
            # 0666 as cgnetnsd.socket's SocketMode= says; a plain activator
            # (systemd-socket-activate) makes it 0644, which shuts out builds.
            name = self.listener.getsockname()
            if isinstance(name, str) and name.startswith("/"):
                try:
                    os.chmod(name, 0o666)
                except OSError as e:
                    self.log("cannot make %s mode 0666: %s" % (name, e))
        else:
            d = os.path.dirname(self.socket_path)
            os.makedirs(d, mode=0o755, exist_ok=True)
            self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RuntimeError("another cgnetnsd serves %s" % self.socket_path) from None
            try:
                os.unlink(self.socket_path)   # stale: we hold the lock
            except FileNotFoundError:
                pass
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            s.bind(self.socket_path)
            os.chmod(self.socket_path, 0o666)  # any process may ask; the kernel says who it is
            s.listen(1024)  # a burst of -j clients (or a flood) queues, not EAGAIN
            self.listener = s
        self.listener.setblocking(False)
        _prepare_for_spawning()
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, ("accept", None))

    def close(self):
        for c in list(self.conns.values()):
            self._drop(c, None)
        if self.sel:
            self.sel.close()
        if self.listener is not None:
            self.listener.close()
            if not self._activated:
                try:
                    os.unlink(self.socket_path)
                except FileNotFoundError:
                    pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)

    def stop(self, *_):
        self._stop = True

    # -- main loop ----------------------------------------------------------
    def serve(self):
        idle_since = time.monotonic()
        while not self._stop:
            events = self.sel.select(timeout=0.5)
            for key, mask in events:
                kind, conn = key.data
                try:
                    if kind == "accept":
                        # Drain the backlog: a flood must not keep a real
                        # client queued behind it in the kernel.
                        for _ in range(64):
                            if not self._accept():
                                break
                    elif kind == "client":
                        self._on_client(conn)
                    elif kind == "status":
                        self._on_status(conn)
                    elif kind == "agent":
                        self._on_agent_exit(conn)
                except Exception as e:  # one connection's trouble is its own
                    if conn is not None:
                        self._drop(conn, "internal error: %s" % e)
                    else:
                        self.log("accept failed: %s" % e)
            now = time.monotonic()
            for c in list(self.conns.values()):
                if c.agent_pid is None and now > c.deadline:
                    self._drop(c, "request not complete within %gs" % self.request_timeout)
            if self.conns:
                idle_since = now
            elif self.idle_exit is not None and now - idle_since > self.idle_exit \
                    and not self._builds_alive():
                self.log("idle for %gs with no live build: exiting" % self.idle_exit)
                break

    def _builds_alive(self):
        return any(records.record_is_live(p) for p in records.list_records())

    def _accept(self):
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return False
        if len(self.conns) >= self.max_conns and not self._evict_oldest_pending():
            self.log("too many connections (%d), all running: dropping a new one"
                     % len(self.conns))
            sock.close()
            return True
        sock.setblocking(False)
        c = Conn(sock, time.monotonic() + self.request_timeout)
        try:
            ucred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, _ = struct.unpack("3i", ucred)
            c.peer = "pid=%d uid=%d" % (pid, uid)   # for the log; the agent asks the pidfd
            c.pidfd = peer_pidfd(sock, pid)
        except (OSError, BadRequest) as e:
            self.log("peer not authenticated (%s): dropped" % e)
            if c.pidfd is not None:
                os.close(c.pidfd)
            sock.close()
            return True
        self.conns[sock.fileno()] = c
        self.sel.register(sock, selectors.EVENT_READ, ("client", c))
        return True

    def _evict_oldest_pending(self):
        """Make room by dropping the connection that has waited longest without
        completing its request.  A real client sends its whole request at once,
        so only idle or slow connections are ever old: a flood of them cannot
        lock well-behaved clients out for the length of the request timeout."""
        pending = [c for c in self.conns.values() if c.agent_pid is None and not c.finished]
        if not pending:
            return False
        oldest = min(pending, key=lambda c: c.deadline)
        self._drop(oldest, "evicted: incomplete request while the broker is full")
        return True

    # -- client side --------------------------------------------------------
    def _on_client(self, c):
        if c.agent_pid is not None or c.finished:
            return self._on_client_signal(c)
        try:
            data, anc, flags, _ = c.sock.recvmsg(
                65536, socket.CMSG_SPACE(MAX_FDS * 4),
                # Close-on-exec at once: no other connection's agent may
                # inherit these (agents are spawned, not forked and cleaned).
                socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            return self._drop(c, "receive failed: %s" % e)
        for level, typ, cdata in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                n = len(cdata) // 4
                c.fds.extend(struct.unpack("%di" % n, cdata[:n * 4]))
        if flags & socket.MSG_CTRUNC:
            return self._drop(c, "too many descriptors")
        if not data:
            return self._drop(c, "client went away before its request was complete")
        c.buf += data
        try:
            if c.length is None and len(c.buf) >= HEADER.size:
                c.length, c.nfds = parse_header(c.buf[:HEADER.size])
            if c.length is not None:
                if len(c.buf) > HEADER.size + c.length:
                    raise BadRequest("bytes after the request")
                if len(c.fds) > c.nfds:
                    raise BadRequest("more descriptors than announced")
                if len(c.buf) == HEADER.size + c.length:
                    if len(c.fds) != c.nfds:
                        raise BadRequest("%d descriptors, %d announced" % (len(c.fds), c.nfds))
                    req = parse_payload(c.buf[HEADER.size:], c.nfds)
                    c.buf = b""
                    self._start_agent(c, req)
        except BadRequest as e:
            self._drop(c, "bad request: %s" % e)

    def _on_client_signal(self, c):
        try:
            data = c.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            # The client is gone (killed?): its program goes with it.
            if c.agent_pidfd is not None:
                self._signal_agent(c, signal.SIGKILL)
                self.log("%s: client went away: killed its program" % c.peer)
            self.sel.unregister(c.sock)
            c.finished = True
            return
        c.sigbuf += data
        if len(c.sigbuf) > 4096:
            return self._drop(c, "signal stream too long without newline", kill=True)
        while b"\n" in c.sigbuf:
            line, c.sigbuf = c.sigbuf.split(b"\n", 1)
            parts = line.split()
            if len(parts) == 2 and parts[0] == b"sig" and parts[1].isdigit():
                n = int(parts[1])
                if n in FORWARDED_SIGNALS and c.agent_pidfd is not None:
                    self._signal_agent(c, n)

    def _signal_agent(self, c, signo):
        try:
            signal.pidfd_send_signal(c.agent_pidfd, signo)
        except ProcessLookupError:
            pass

    # -- agent ---------------------------------------------------------------
    def _start_agent(self, c, req):
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        argv = [b"cgnetns-exec", b"--broker", b"--"] + req.argv
        placements = [(c.pidfd, AGENT_PIDFD), (c.fds[0], AGENT_CWD), (status_w, AGENT_STATUS)]
        placements += list(zip(c.fds[1:], req.fdnums[1:]))
        helper = os.fsencode(self.helper)
        try:
            pid = _spawn(helper, argv, req.env, placements)
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
        c.agent_pid = pid
        c.agent_pidfd = os.pidfd_open(pid)
        c.status_r = status_r
        c.program = os.fsdecode(req.argv[0])
        for fd in c.fds:
            os.close(fd)
        c.fds = []
        os.set_blocking(status_r, False)
        self.sel.register(status_r, selectors.EVENT_READ, ("status", c))
        self.sel.register(c.agent_pidfd, selectors.EVENT_READ, ("agent", c))

    def _on_status(self, c):
        try:
            data = os.read(c.status_r, 4096)
        except BlockingIOError:
            return
        if not data:
            self.sel.unregister(c.status_r)
            os.close(c.status_r)
            c.status_r = None
            return
        c.status_buf += data
        while b"\n" in c.status_buf:
            line, c.status_buf = c.status_buf.split(b"\n", 1)
            self._relay(c, line)

    def _relay(self, c, line):
        word = line.split(b" ", 1)[0]
        if word not in (b"pass", b"start", b"exit", b"signal", b"refuse"):
            self.log("%s: agent said %r: ignored" % (c.peer, line[:80]))
            return
        if word in (b"pass", b"exit", b"signal", b"refuse"):
            self.log("%s program=%s: %s" % (c.peer, c.program, line.decode("ascii", "replace")))
        elif word == b"start":
            self.log("%s program=%s: join" % (c.peer, c.program))
        try:
            c.sock.setblocking(True)
            c.sock.settimeout(5)
            c.sock.sendall(line + b"\n")
            c.sock.setblocking(False)
        except OSError:
            pass
        if word != b"start":
            c.finished = True

    def _on_agent_exit(self, c):
        try:
            os.waitpid(c.agent_pid, os.WNOHANG)
        except ChildProcessError:
            pass
        # Drain the status pipe: its last line may come with the exit.
        while c.status_r is not None:
            before = c.status_r
            self._on_status(c)
            if c.status_r == before:
                break
        if not c.finished:
            self.log("%s program=%s: agent ended without a verdict" % (c.peer, c.program))
            self._relay(c, b"refuse 125")
        self._drop(c, None)

    def _drop(self, c, reason, kill=False):
        if reason:
            self.log("%s: dropped: %s" % (c.peer, reason))
        if kill and c.agent_pidfd is not None:
            self._signal_agent(c, signal.SIGKILL)
        for fd in c.fds:
            os.close(fd)
        c.fds = []
        for attr in ("status_r", "agent_pidfd", "pidfd"):
            fd = getattr(c, attr)
            if fd is not None:
                try:
                    self.sel.unregister(fd)
                except (KeyError, ValueError):
                    pass
                os.close(fd)
                setattr(c, attr, None)
        if c.agent_pid is not None:
            try:
                os.waitpid(c.agent_pid, os.WNOHANG)
            except ChildProcessError:
                pass
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        self.conns.pop(c.sock.fileno(), None)
        c.sock.close()


# -- starting the agent -------------------------------------------------------
#
# posix_spawn(3), not fork(): a fork of this interpreter costs about 1.1 ms more
# per request here (page tables of the whole heap; measured with bench/), and
# glibc's posix_spawn is a vfork-style clone.  It is called through ctypes for
# one reason: os.posix_spawn takes the environment as a mapping, which would
# lose entries without "=" and repeated names, and the client's environment
# must pass byte for byte.  What the agent inherits is exactly: the placed
# descriptors (dup2 clears their close-on-exec flag) and nothing else, because
# every other descriptor of this process is close-on-exec
# (_prepare_for_spawning, MSG_CMSG_CLOEXEC, and Python's own default).

_LIBC = None
_FILE_ACTIONS_SIZE = 256          # sizeof(posix_spawn_file_actions_t) is 80 in glibc
TEMP_FD_BASE = AGENT_STATUS + 1   # temporaries above every target number


def _libc():
    global _LIBC
    if _LIBC is None:
        lib = ctypes.CDLL(None, use_errno=True)
        vp, ci = ctypes.c_void_p, ctypes.c_int
        lib.posix_spawn.argtypes = [ctypes.POINTER(ci), ctypes.c_char_p, vp, vp,
                                    ctypes.POINTER(ctypes.c_char_p),
                                    ctypes.POINTER(ctypes.c_char_p)]
        lib.posix_spawn_file_actions_init.argtypes = [vp]
        lib.posix_spawn_file_actions_destroy.argtypes = [vp]
        lib.posix_spawn_file_actions_adddup2.argtypes = [vp, ci, ci]
        lib.posix_spawn_file_actions_addclose.argtypes = [vp, ci]
        _LIBC = lib
    return _LIBC


def _c_strings(strings):
    """A NULL-terminated char *[] of the byte strings."""
    arr = (ctypes.c_char_p * (len(strings) + 1))()
    arr[:len(strings)] = list(strings)
    arr[len(strings)] = None
    return arr


def _prepare_for_spawning():
    """Once, before serving: every descriptor but 0-2 close-on-exec (one
    inherited from whoever started us, or systemd's listening socket, must not
    reach an agent), and room for the temporaries above AGENT_STATUS (systemd
    starts services with a soft RLIMIT_NOFILE of 1024)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the directory's own descriptor, closed by now
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = TEMP_FD_BASE + MAX_FDS + 8
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _spawn(helper, argv, env, placements):
    """Start HELPER with ARGV and ENV (lists of bytes), each (source fd, target
    number) of PLACEMENTS in place and nothing else inherited; return its PID."""
    lib = _libc()
    # Copies above every target first, so that placing one cannot overwrite
    # the source of another (close-on-exec: they vanish at the exec).
    temps = []
    try:
        for src, dst in placements:
            temps.append((fcntl.fcntl(src, fcntl.F_DUPFD_CLOEXEC, TEMP_FD_BASE), dst))
        fa = ctypes.create_string_buffer(_FILE_ACTIONS_SIZE)
        if lib.posix_spawn_file_actions_init(fa) != 0:
            raise OSError(errno.ENOMEM, "posix_spawn_file_actions_init")
        try:
            targets = {dst for _, dst in temps}
            for n in (0, 1, 2):   # ours, where the client passed none: not inherited
                if n not in targets:
                    lib.posix_spawn_file_actions_addclose(fa, n)
            for tmp, dst in temps:
                lib.posix_spawn_file_actions_adddup2(fa, tmp, dst)
            pid = ctypes.c_int(0)
            rc = lib.posix_spawn(ctypes.byref(pid), helper, fa, None,
                                 _c_strings(argv), _c_strings(env))
            if rc != 0:
                raise OSError(rc, "cannot start %s: %s" % (os.fsdecode(helper), os.strerror(rc)))
            return pid.value
        finally:
            lib.posix_spawn_file_actions_destroy(fa)
    finally:
        for tmp, _ in temps:
            os.close(tmp)
