"""cgnetnsd: the root broker for callers that cannot gain privilege.

Owns the broker's side of doc/BROKER.rst up to one point: the listening socket
(bound here, or handed over by systemd socket activation through LISTEN_FDS),
accepting connections, and handing each one to be served to the helper's fork
server (``cgnetns-helper --fork-server``, started once, restarted when it
ends), which forks a child that does what the helper's ``--supervise`` mode
does with the connection on fd 3 and answers with that child's pidfd
(helper/spawner.c; an exec of the helper per request cost about 0.1 ms of
CPU and of latency).  Everything else is the helper's: it asks the
kernel who connected (SO_PEERCRED, SO_PEERGROUPS, SO_PEERPIDFD), reads the
request, decides with the set-user-ID path's own code, answers, and for a
"join" becomes the supervisor that mints the caller's sockets in the approved
namespace (helper/supervise.c, helper/notify.c).  The program is always the
caller's own process; nothing here or there acts as the caller.

This process reads no request, so an unprivileged peer cannot make it hold
memory.  What a peer can hold is a helper process for at most
``HANDSHAKE_SECONDS`` (the helper's own deadline; killed here after twice
that), and a waiting connection.  At most ``max_pending_per_uid`` helpers run
per uid and ``max_pending`` in all; a connection over its uid's share waits
here, accepted but unserved, in its uid's queue (served in order as that uid's
helpers end), for at most ``HANDSHAKE_SECONDS``, then is answered "busy".  The
queues together hold at most ``max_queued`` connections; over that, the
newest connection of the uid with the longest queue is answered "busy" at once.
So a flood from one uid (an outsider of every build) delays and refuses that
uid's own requests, and everyone else is served.  A joined supervisor is no
longer counted: it lives in the caller's build cgroup with the caller's uid,
so it is the build's.

Degrades: no SO_PEERPIDFD (Linux < 6.5) -> the helper's fallback check (a
pidfd by the connect's pid, refused when that pid names a newer process);
no pidfd_open (< 5.3) -> every request refused by the helper, with a line
in the log.
"""

import array
import collections
import errno
import fcntl
import os
import resource
import selectors
import signal
import socket
import struct
import sys
import time

from . import paths, records

SOCKET_PATH = paths.BROKER_SOCKET
LOCK_PATH = paths.BROKER_LOCK
HELPER = paths.HELPER

# The protocol (helper/protocol.h; tests/test_protocol.py checks they agree).
MAGIC = b"CGN2"
HEADER = struct.Struct("=4sII")
NAME_MAX = 4096
HANDSHAKE_SECONDS = 5

CONN_FD = 3   # where --supervise finds the connection, --fork-server its socket pair
TOKEN = struct.Struct("=Q")   # the fork server's messages: a token (+ one descriptor)
SERVER_STARTS = (5, 5.0)      # at most 5 starts of the fork server in 5 s (a crash loop)


def encode_request(program, flags=0):
    """A client's request for PROGRAM (used by tests and tools)."""
    name = os.fsencode(program)
    return HEADER.pack(MAGIC, flags, len(name)) + name


def escape(text):
    """TEXT for one log line: every byte outside printable ASCII as \\xNN."""
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogateescape")
    return "".join(chr(b) if 0x20 <= b < 0x7f and b != 0x5c else "\\x%02x" % b for b in text)


class Pending:
    """A helper serving one connection, until it answers or ends."""
    __slots__ = ("pid", "pidfd", "uid", "started")

    def __init__(self, pid, pidfd, uid, started):
        self.pid, self.pidfd, self.uid, self.started = pid, pidfd, uid, started


class ForkServer:
    """The helper's --fork-server process, and cgnetnsd's end of its socket pair."""
    __slots__ = ("sock", "pid")

    def __init__(self, sock, pid):
        self.sock, self.pid = sock, pid


class Broker:
    def __init__(self, socket_path=SOCKET_PATH, helper=HELPER, max_pending=256,
                 max_pending_per_uid=128, idle_exit=None, log=None, lock_path=None,
                 peer_auth="pidfd", max_queued=4096):
        # One lock per socket: brokers on other sockets (tests, a private
        # instance) do not exclude the system's.
        if lock_path is None:
            lock_path = LOCK_PATH if socket_path == SOCKET_PATH else socket_path + ".lock"
        if peer_auth not in ("pidfd", "peercred"):
            raise ValueError("peer_auth must be 'pidfd' or 'peercred'")
        self.socket_path = socket_path
        self.helper = helper
        self.max_pending = max_pending
        self.max_pending_per_uid = max_pending_per_uid
        self.idle_exit = idle_exit
        self.lock_path = lock_path
        self.argv = [b"cgnetns-helper", b"--fork-server"] + (
            [b"--peercred"] if peer_auth == "peercred" else [])
        self.server = None      # the ForkServer, once started
        self._server_starts = collections.deque(maxlen=SERVER_STARTS[0])
        self.starting = {}      # token -> (uid, handed over at): no pidfd back yet
        self._token = 0
        self.log = log or (lambda msg: sys.stderr.write("cgnetnsd: %s\n" % msg))
        self.sel = None
        self.listener = None
        self.pending = {}       # pidfd -> Pending
        self.per_uid = {}       # uid -> count of pending
        self.queued = {}        # uid -> deque of (connection, accepted at)
        self.n_queued = 0
        self.max_queued = max_queued
        self.served = 0
        self._devnull = None
        self._lock_fd = None
        self._stop = False
        self._activated = False
        self._last_drop_log = {}

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
                    self.log("cannot make %s mode 0666: %s" % (escape(name), e))
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
            s.listen(1024)  # a burst of -j clients queues, not EAGAIN
            self.listener = s
        self.listener.setblocking(False)
        _prepare_for_spawning()
        # Each waiting connection is a descriptor, each running helper one
        # (its pidfd): the queues get what the limit leaves.
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY:
            self.max_queued = max(16, min(self.max_queued, soft - self.max_pending - 64))
        self._devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, None)

    def close(self):
        for q in self.queued.values():
            for conn, _ in q:
                conn.close()
        self.queued.clear()
        for p in list(self.pending.values()):
            self._kill(p)
            self._reap(p)
        self._server_gone(log=False)
        if self.sel:
            self.sel.close()
        if self.listener is not None:
            self.listener.close()
            if not self._activated:
                try:
                    os.unlink(self.socket_path)
                except FileNotFoundError:
                    pass
        if self._devnull is not None:
            os.close(self._devnull)
        if self._lock_fd is not None:
            os.close(self._lock_fd)

    def stop(self, *_):
        self._stop = True

    # -- main loop ----------------------------------------------------------
    def serve(self):
        idle_since = time.monotonic()
        while not self._stop:
            events = self.sel.select(timeout=0.5)
            # Ended helpers first: what they leave counts for no uid's share
            # when this round's new connections are weighed.  Then what waits
            # too long is answered busy, and what may start starts (oldest
            # first) before anything newer is accepted.
            for key, _ in events:
                if isinstance(key.data, Pending):
                    self._guard(self._reap, key.data)
                elif isinstance(key.data, ForkServer):
                    self._guard(self._server_answers)
            self._expire_queued(time.monotonic())
            if self.n_queued:
                self._dequeue()
            for key, _ in events:
                if key.data is None:
                    # Drain the backlog: a flood must not keep a real client
                    # queued behind it in the kernel.
                    for _ in range(64):
                        if not self._guard(self._accept):
                            break
            now = time.monotonic()
            if any(now - t > HANDSHAKE_SECONDS for _, t in self.starting.values()):
                # It answers each token at once, after a fork: one unanswered
                # this long means it is stuck, and its tokens hold uids' shares.
                self._server_gone(why="did not answer within %ds" % HANDSHAKE_SECONDS)
            for p in list(self.pending.values()):
                if now - p.started > 2 * HANDSHAKE_SECONDS:
                    self.log("uid=%d: request still in progress after %ds: killed"
                             % (p.uid, 2 * HANDSHAKE_SECONDS))
                    self._kill(p)
            self._expire_queued(now)
            if self.pending or self.starting or self.n_queued:
                idle_since = now
            elif self.idle_exit is not None and now - idle_since > self.idle_exit \
                    and not self._builds_alive():
                self.log("idle for %gs with no live build: exiting" % self.idle_exit)
                break

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except OSError as e:  # one connection's trouble is its own
            self.log("error: %s" % escape(str(e)))
            return False

    def _builds_alive(self):
        return any(records.record_is_live(p) for p in records.list_records())

    def _accept(self):
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as e:
            # EMFILE and the like: the backlog waits; say so once a second.
            self._drop_log(-1, "cannot accept: %s" % e)
            return False
        try:
            pid, uid, _ = struct.unpack("3i", conn.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        except OSError:
            conn.close()
            return True
        if self._has_room(uid) and not self.queued.get(uid):
            self._start_and_close(conn, uid)
        else:
            self._enqueue(conn, uid)
        return True

    def _has_room(self, uid):
        return (len(self.pending) + len(self.starting) < self.max_pending
                and self.per_uid.get(uid, 0) < self.max_pending_per_uid)

    def _start_and_close(self, conn, uid):
        try:
            self._start(conn, uid)
        finally:
            conn.close()

    def _enqueue(self, conn, uid):
        if self.n_queued >= self.max_queued:
            # Full: the uid with the longest queue loses its newest.
            victim = max(self.queued, key=lambda u: len(self.queued[u]))
            if len(self.queued[victim]) >= len(self.queued.get(uid, ())) + 1:
                old, _ = self.queued[victim].pop()
                self.n_queued -= 1
                self._busy(old, victim)
            else:
                self._busy(conn, uid)
                return
        self.queued.setdefault(uid, collections.deque()).append((conn, time.monotonic()))
        self.n_queued += 1

    def _dequeue(self):
        """Start what waits, oldest first per uid, as far as the shares allow."""
        for uid in list(self.queued):
            q = self.queued[uid]
            while q and self._has_room(uid):
                conn, _ = q.popleft()
                self.n_queued -= 1
                self._guard(self._start_and_close, conn, uid)
            if not q:
                del self.queued[uid]

    def _expire_queued(self, now):
        for uid in list(self.queued):
            q = self.queued[uid]
            while q and now - q[0][1] > HANDSHAKE_SECONDS:
                conn, _ = q.popleft()
                self.n_queued -= 1
                self._busy(conn, uid)
            if not q:
                del self.queued[uid]

    def _busy(self, conn, uid):
        """Answer a connection that cannot be served now (the client prints it
        and exits 125; nothing has run), and close it."""
        self._drop_log(uid, "uid=%d: %d requests in progress: answered busy"
                       % (uid, self.per_uid.get(uid, 0)))
        try:
            conn.send(b"refuse 125 cgnetnsd is busy (too many requests of this user in "
                      b"progress): try again\n", socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except OSError:
            pass
        conn.close()

    def _drop_log(self, key, msg):
        now = time.monotonic()
        if now - self._last_drop_log.get(key, -10.0) >= 1.0:
            self._last_drop_log[key] = now
            self.log(msg)

    def _start(self, conn, uid):
        # The fork server gets the connection and a token; its child serves
        # the connection on fd 3, with /dev/null on 0 and 1, our stderr (the
        # log) on 2, the server's empty environment, and nothing else.  The
        # pidfd comes back with the token (_server_answers); until then the
        # request counts for its uid in self.starting.
        if self.server is None:
            self._start_server()
        self._token += 1
        fds = array.array("i", [conn.fileno()])
        try:
            self.server.sock.sendmsg([TOKEN.pack(self._token)],
                                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        except OSError:
            self._server_gone()
            raise
        self.starting[self._token] = (uid, time.monotonic())
        self.per_uid[uid] = self.per_uid.get(uid, 0) + 1
        self.served += 1

    def start_fork_server(self):
        """Start the helper's fork server now (else the first request does):
        a helper that cannot start is reported at once."""
        if self.server is None:
            self._start_server()

    def _start_server(self):
        now = time.monotonic()
        if len(self._server_starts) == SERVER_STARTS[0] and \
                now - self._server_starts[0] < SERVER_STARTS[1]:
            raise OSError(errno.EAGAIN, "the helper's fork server keeps ending: started %d "
                          "times in %gs" % SERVER_STARTS)
        self._server_starts.append(now)
        ours, theirs = socket.socketpair(socket.AF_UNIX,
                                         socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            # posix_spawn is a vfork-style clone: no copy of this
            # interpreter's page tables.  Every other descriptor here is
            # close-on-exec.
            pid = os.posix_spawn(self.helper, self.argv, {}, file_actions=[
                (os.POSIX_SPAWN_DUP2, theirs.fileno(), CONN_FD),
                (os.POSIX_SPAWN_DUP2, self._devnull, 0),
                (os.POSIX_SPAWN_DUP2, self._devnull, 1),
            ])
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        self.server = ForkServer(ours, pid)
        self.sel.register(ours, selectors.EVENT_READ, self.server)

    def _server_answers(self):
        """Tokens answered by the fork server: with the child's pidfd, watched
        from now on as a pending request, or without (it could not start one:
        the request has ended)."""
        while self.server is not None:
            try:
                msg, anc, _, _ = self.server.sock.recvmsg(
                    TOKEN.size, socket.CMSG_SPACE(array.array("i").itemsize),
                    socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            if not msg:
                self._server_gone()
                return
            fds = array.array("i")
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
            got = self.starting.pop(TOKEN.unpack(msg)[0], None) if len(msg) == TOKEN.size \
                else None
            if got is None or not fds:
                for fd in fds:
                    os.close(fd)
                if got is not None:
                    self._release(got[0])
                continue
            uid, started = got
            p = Pending(None, fds[0], uid, started)
            for fd in fds[1:]:
                os.close(fd)
            self.pending[p.pidfd] = p
            self.sel.register(p.pidfd, selectors.EVENT_READ, p)

    def _server_gone(self, log=True, why="ended"):
        """The fork server ended, stopped answering, or we stop: it is
        killed and reaped (a server that no longer reads would not exit on
        its own), and what it had not answered has ended for its uid (a
        child it made keeps its own deadline); the next request starts a
        new one."""
        srv, self.server = self.server, None
        if srv is None:
            return
        if log:
            self.log("the helper's fork server (pid %d) %s: starting another" % (srv.pid, why))
        try:
            self.sel.unregister(srv.sock)
        except (KeyError, ValueError):
            pass
        srv.sock.close()
        try:
            os.kill(srv.pid, signal.SIGKILL)   # our child, not yet reaped: the pid is its
        except ProcessLookupError:
            pass
        try:
            os.waitpid(srv.pid, 0)
        except ChildProcessError:
            pass
        for uid, _ in self.starting.values():
            self._release(uid)
        self.starting.clear()

    def _kill(self, p):
        try:
            signal.pidfd_send_signal(p.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _reap(self, p):
        # The fork server's children are its own to wait for: only the
        # pidfd is closed here.
        try:
            self.sel.unregister(p.pidfd)
        except (KeyError, ValueError):
            pass
        os.close(p.pidfd)
        self.pending.pop(p.pidfd, None)
        self._release(p.uid)

    def _release(self, uid):
        n = self.per_uid.get(uid, 1) - 1
        if n:
            self.per_uid[uid] = n
        else:
            self.per_uid.pop(uid, None)


def _prepare_for_spawning():
    """Once, before serving: every descriptor but 0-2 close-on-exec (one
    inherited from whoever started us, or systemd's listening socket, must not
    reach a helper), and a soft RLIMIT_NOFILE as high as the hard one (systemd
    starts services with 1024; each pending request holds two descriptors)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError as e:
                if e.errno != errno.EBADF:   # the listing's own descriptor
                    raise
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
