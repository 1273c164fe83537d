"""Part 3 (data): a check that nothing of cgnetns sits on the data path.

Not a target: cgnetns takes part only in making a socket, so a connection
of a build is an ordinary socket of the approved namespace and its data go
the direct way.  These rows check that, next to what a relay costs.  A
server (bench/tcpbench.c) listens on 127.0.0.1 in the parent network
namespace.  The same client program reaches it four ways:

* direct: the client runs in the parent namespace (the baseline);
* set-user-ID path: the client runs in a build (cgnetns.build.Build, new
  netns with only lo, as the build user) through ``cgnetns-exec`` (the
  front, which execs the set-user-ID helper), which puts it in the parent
  namespace (a client left in the build's own netns would find nothing
  listening on its own loopback);
* broker path: the same under no_new_privs: the client stays in the build's
  namespace, and each socket(AF_INET) it makes is made by the per-call
  supervisor in the parent namespace (seccomp user notification) -- so the
  latency figure, which starts before socket(2), includes that round trip;
* relay: the client runs in the same build without cgnetns and goes through
  Portage's SOCKSv5 relay (portage.util.socks5 from the installed portage
  package, started by bench/relay.py as Portage starts it) over its Unix
  socket, as FEATURES=network-sandbox-proxy builds do.

Latency: from before socket(2) to the first echoed byte (SOCKS handshake
included).  Throughput: 256 MiB, from the first byte sent to the server's
acknowledgement of the last.  Loopback only.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile

from .common import (FRONT, REPO, BUILD_USER, BenchError, Cleanup, Row,
                     allow_listed, check_broker, check_join, child_env, communicate, kill_wait,
                     last_line, median, new_build, start_in_build, start_outside)

PART = 3
NAME = "data"
NBYTES = 256 << 20


class Relay:
    def __init__(self, sess):
        self.sess = sess
        self.dir = None
        self.manager = None
        self.server_pid = None
        self.socket = None

    def start(self):
        self.dir = tempfile.mkdtemp(prefix="cgnetns-bench-relay.")
        os.chmod(self.dir, 0o755)
        self.manager = subprocess.Popen([sys.executable, "-m", "bench.relay", self.dir],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        env=child_env(), cwd=REPO, start_new_session=True)
        line = self.manager.stdout.readline().decode().split()
        if len(line) != 2:
            raise BenchError("Portage's relay did not start (status %s)" % self.manager.poll())
        self.socket, self.server_pid = line[0], int(line[1])
        # Portage gives its build user access through the portage group; this
        # host has no portage user, and the build runs as nobody: let it connect.
        os.chmod(os.path.dirname(self.socket), 0o755)
        os.chmod(self.socket, 0o666)

    def stop(self):
        if self.manager is not None:
            try:
                self.manager.stdin.close()
                self.manager.wait(10)
            except (subprocess.TimeoutExpired, OSError):
                pass
            kill_wait(self.manager)
            self.manager.stdout.close()
        if self.server_pid is not None:
            # proxy.stop() sends SIGTERM; make sure by PID, if it is still ours.
            try:
                with open("/proc/%d/cmdline" % self.server_pid, "rb") as f:
                    if b"socks5-server" in f.read():
                        os.kill(self.server_pid, signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError):
                pass
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def parse(out):
    lat, xfer = [], []
    for line in out.decode().splitlines():
        f = line.split()
        if f and f[0] == "lat":
            lat.append(int(f[1]) / 1e3)                        # microseconds
        elif f and f[0] == "xfer":
            xfer.append(int(f[2]) / (1 << 20) / (int(f[1]) / 1e9))  # MiB/s
    return lat, xfer


def run(sess):
    # Loopback throughput varies a lot from one transfer to the next (two
    # CPUs for client, server and whatever else runs): many short rounds.
    lat_n = sess.pick(100, 50)
    reps = sess.pick(5, 2)
    rounds = sess.pick(6, 2)
    tcp = sess.tool("tcpbench")
    with Cleanup() as stack:
        stack.enter_context(allow_listed([tcp]))
        server = subprocess.Popen([tcp, "serve"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  cwd="/", start_new_session=True)
        stack.callback(kill_wait, server)
        stack.callback(server.stdout.close)
        port = server.stdout.readline().decode().strip()
        if not port.isdigit():
            raise BenchError("tcpbench server did not start")
        relay = Relay(sess)
        stack.callback(relay.stop)
        relay.start()
        b = new_build(stack, "bench-data")

        def inside(argv):
            return start_in_build(b.cgroup_path, argv, user=BUILD_USER)

        args = [port, str(lat_n), str(NBYTES), str(reps)]
        variants = {
            "direct": lambda: start_outside([tcp, "client"] + args, user=BUILD_USER),
            "relay": lambda: inside([tcp, "client", "-S", relay.socket] + args),
        }
        join_why = check_join(sess, inside)
        broker = sess.broker
        broker_why = join_why
        if broker_why is None:
            broker_why = broker.start()
        if broker_why is None:
            broker_why = check_broker(sess, inside)
        if join_why is None:
            variants["setuid"] = lambda: inside([FRONT, tcp, "client"] + args)
        else:
            sess.note("data: set-user-ID path rows not measured: %s" % join_why)
        if broker_why is None:
            variants["broker"] = lambda: inside(["/usr/bin/setpriv", "--no-new-privs", FRONT,
                                                 tcp, "client"] + args)
        else:
            sess.note("data: broker path rows not measured: %s" % broker_why)
        got = {k: ([], []) for k in variants}
        names = list(variants)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = variants[name]
                sess.log("data: round %d/%d: %s" % (r + 1, rounds, name))
                proc = start()
                out, err = communicate(proc, what="tcpbench client (%s)" % name)
                if proc.returncode != 0:
                    raise BenchError("tcpbench client (%s) exit %d: %s" % (
                        name, proc.returncode, last_line(err)))
                lat, xfer = parse(out)
                got[name][0].extend(lat)
                got[name][1].extend(xfer)

    lat = {k: median(v[0]) for k, v in got.items()}
    thr = {k: median(v[1]) for k, v in got.items()}
    cnt = {k: (len(v[0]), len(v[1])) for k, v in got.items()}
    d = "direct"
    chk = "check (no target): "
    label = {"setuid": "cgnetns set-user-ID path", "broker": "cgnetns broker path",
             "relay": "Portage SOCKSv5 relay"}
    rows = [Row(PART, chk + "connect + echo latency: direct (parent netns)", lat[d], unit="us",
                n=cnt[d][0])]
    for k in ("setuid", "broker", "relay"):
        if k in got:
            rows.append(Row(PART, chk + "connect + echo latency: " + label[k], lat[k], unit="us",
                            n=cnt[k][0], baseline="direct", baseline_value=lat[d]))
        else:
            rows.append(Row(PART, chk + "connect + echo latency: " + label[k], na="n/a"))
    rows.append(Row(PART, chk + "256 MiB throughput: direct", thr[d], unit="MiB/s",
                    n=cnt[d][1]))
    # Throughput ratios are time ratios (direct / this): above 1 is slower.
    for k in ("setuid", "broker", "relay"):
        if k in got:
            rows.append(Row(PART, chk + "256 MiB throughput: %s (time ratio)" % label[k], thr[k],
                            unit="MiB/s", n=cnt[k][1], baseline="direct", baseline_value=thr[d],
                            ratio=thr[d] / thr[k]))
        else:
            rows.append(Row(PART, chk + "256 MiB throughput: " + label[k], na="n/a"))
    if "broker" in got and "setuid" in got:
        sess.note("data: on the broker path each socket(2) is answered by the per-call "
                  "supervisor (seccomp user notification): %.1f us more per connection than "
                  "on the set-user-ID path, inside the latency figure." % (
                      lat["broker"] - lat["setuid"]))
    sess.add(*rows)
