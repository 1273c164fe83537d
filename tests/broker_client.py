"""A hand-made broker client for tests/test_broker.py: the attacker's side.

Run as an unprivileged user with Debian's /usr/bin/python3 (standard library
and ctypes only; the interpreter under /root is not readable by others):

    broker_client.py SOCK answer OUT NAME            request NAME, write the answer line
    broker_client.py SOCK join OUT NAME -- CMD...    the whole client, but exec CMD
    broker_client.py SOCK raw OUT HEX                send raw bytes, write all answers
    broker_client.py SOCK fds OUT NAME N             the request with N descriptors attached
    broker_client.py SOCK peer-exits OUT NAME        connect, then the child sends
    broker_client.py SOCK relay OUT NAME UNIXPATH    on "join", send the listener that
                                                     arrives on UNIXPATH instead of our own
    broker_client.py SOCK held OUT NAME HELPER -- CMD...
                                                     connect, then exec the set-user-ID
                                                     HELPER blocked at euid 0 (full stderr
                                                     pipe) while a child asks and execs CMD
    broker_client.py - offer UNIXPATH -- CMD...      install the filter here, offer its
                                                     listener on UNIXPATH, exec CMD
OUT gets the answer lines, as bytes.
"""

import ctypes
import os
import socket
import struct
import sys
import time

MAGIC = b"CGN2"
libc = ctypes.CDLL(None, use_errno=True)


def request(name, flags=0):
    name = os.fsencode(name)
    return struct.pack("=4sII", MAGIC, flags, len(name)) + name


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.settimeout(20)
    return s


def read_line(s):
    data = b""
    while not data.endswith(b"\n"):
        d = s.recv(1)
        if not d:
            break
        data += d
    return data


def read_all(s):
    data = b""
    try:
        while True:
            d = s.recv(4096)
            if not d:
                break
            data += d
    except (socket.timeout, ConnectionResetError):
        pass
    return data


def install_listener(domains=(2, 10)):
    """seccomp filter: socket(AF_INET|AF_INET6) -> user notification; returns
    the listener (as helper/notify.c does; x86_64 and aarch64).  DOMAINS: the
    two families sent (an attacker's filter may send others)."""
    arch = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}[os.uname().machine]
    nr_socket = {"x86_64": 41, "aarch64": 198}[os.uname().machine]
    ins = [(0x20, 0, 0, 4), (0x15, 0, 5, arch), (0x20, 0, 0, 0), (0x15, 0, 3, nr_socket),
           (0x20, 0, 0, 16), (0x15, 2, 0, domains[0]), (0x15, 1, 0, domains[1]),
           (0x06, 0, 0, 0x7fff0000), (0x06, 0, 0, 0x7fc00000)]
    buf = b"".join(struct.pack("=HBBI", *i) for i in ins)
    filt = ctypes.create_string_buffer(buf)

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    prog = Prog(len(ins), ctypes.addressof(filt))
    if libc.prctl(38, 1, 0, 0, 0) != 0:   # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "no_new_privs")
    nr_seccomp = {"x86_64": 317, "aarch64": 277}[os.uname().machine]
    fd = libc.syscall(nr_seccomp, 1, 8, ctypes.byref(prog))   # NEW_LISTENER
    if fd < 0:
        raise OSError(ctypes.get_errno(), "seccomp")
    return fd


def send_fd(s, fd):
    s.sendmsg([b"L"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])


def main(argv):
    path, mode = argv[1], argv[2]
    if mode == "offer":
        unixpath, cmd = argv[3], argv[argv.index("--") + 1:]
        fd = install_listener()
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(unixpath)
        srv.listen(1)
        c, _ = srv.accept()
        send_fd(c, fd)
        c.recv(1)       # the relay has passed it on and the broker said "ok"
        c.close()
        srv.close()
        os.close(fd)
        os.execv(cmd[0], cmd)
    out = argv[3]
    answers = b""
    if mode == "answer":
        s = connect(path)
        s.sendall(request(argv[4]))
        answers = read_line(s)
    elif mode in ("join", "join-unix"):
        # join-unix: the attacker's own filter sends socket(AF_UNIX) too
        cmd = argv[argv.index("--") + 1:]
        s = connect(path)
        s.sendall(request(argv[4]))
        answers = read_line(s)
        if answers.startswith(b"join "):
            fd = install_listener((1, 2) if mode == "join-unix" else (2, 10))
            send_fd(s, fd)
            os.close(fd)
            answers += read_line(s)
            with open(out, "wb") as f:
                f.write(answers)
            if answers.endswith(b"ok\n"):
                s.close()
                os.execv(cmd[0], cmd)
    elif mode == "held":
        helper, cmd = argv[5], argv[argv.index("--") + 1:]
        s = connect(path)
        r, w = os.pipe()
        os.set_blocking(w, False)
        for chunk in (4096, 1):   # to the last byte: the helper's line must block
            try:
                while True:
                    os.write(w, b"x" * chunk)
            except BlockingIOError:
                pass
        os.set_blocking(w, True)
        parent = os.getpid()
        if os.fork() != 0:
            os.dup2(w, 2)
            os.execv(helper, [helper, "--no-such-option"])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with open("/proc/%d/status" % parent) as f:
                uids = [l.split()[1:] for l in f if l.startswith("Uid:")][0]
            if uids[1] == "0":
                break
            time.sleep(0.01)
        answers = b"holder %d euid %s\n" % (parent, uids[1].encode())
        s.sendall(request(argv[4]))
        line = read_line(s)
        answers += line
        if line.startswith(b"join "):
            fd = install_listener()
            send_fd(s, fd)
            os.close(fd)
            answers += read_line(s)
            with open(out, "wb") as f:
                f.write(answers)
            if answers.endswith(b"ok\n"):
                s.close()
                os.execv(cmd[0], cmd)
    elif mode == "raw":
        s = connect(path)
        s.sendall(bytes.fromhex(argv[4]))
        answers = read_all(s)
    elif mode == "fds":
        s = connect(path)
        fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(int(argv[5]))]
        req = request(argv[4])
        s.sendmsg([req[:4]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                struct.pack("%di" % len(fds), *fds))])
        s.sendall(req[4:])
        answers = read_line(s)
    elif mode == "peer-exits":
        s = connect(path)
        parent = os.getpid()    # before the fork: it may be gone at once
        if os.fork() != 0:
            os._exit(0)
        while os.getppid() == parent:
            time.sleep(0.01)
        s.sendall(request(argv[4]))
        answers = read_line(s)
    elif mode == "relay":
        unixpath = argv[5]
        s = connect(path)
        s.sendall(request(argv[4]))
        answers = read_line(s)
        if answers.startswith(b"join "):
            deadline = time.monotonic() + 20
            while not os.path.exists(unixpath) and time.monotonic() < deadline:
                time.sleep(0.01)
            u = connect(unixpath)
            _, anc, _, _ = u.recvmsg(1, socket.CMSG_SPACE(4))
            fd = struct.unpack("i", anc[0][2][:4])[0]
            send_fd(s, fd)
            answers += read_line(s)
            u.send(b"x")
            u.close()
    with open(out, "wb") as f:
        f.write(answers)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
