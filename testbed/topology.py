"""A throwaway "remote build host" for tests, the demo and benchmarks.

``Topology`` makes a network namespace that plays a second machine, joins it to
the current (parent) network namespace with a veth pair whose two addresses
exist only on that pair (a /30 from 198.18.0.0/15, the range set aside for
benchmarking, chosen so that several topologies coexist), and runs real servers
from the distribution's packages inside it:

* ``distccd`` in daemon mode (always);
* ``sshd`` on a private port, for distcc's ssh mode (``ssh=True``): it runs in a
  private mount namespace of the remote host whose ``/etc/passwd`` has one
  extra account (a test user with a shell), so the host's user database is never
  changed; a key pair, a host key and a known_hosts file are made here;
* ``icecc-scheduler`` and a compiling ``iceccd`` (``icecc=True``), plus a
  non-compiling "local" ``iceccd`` in the parent namespace that the icecc client
  talks to over a Unix socket (``ICECC_TEST_SOCKET``), as a build host's own
  daemon would be.

Use it as a context manager::

    with Topology(ssh=True) as topo:
        env = topo.distcc_env(distcc_dir)
        ...
        assert topo.count_compile_ok() == n

On exit (also after an exception, and when start-up fails half way) every
process is ended by its own PID (the servers it started, then any process
still in the remote namespace), the veth pair and the namespace are deleted
and the temporary directory is removed.

Needs root, ``ip`` (iproute2), ``nsenter``/``unshare`` (util-linux) and the
servers' packages: Debian's ``distcc`` (``distcc-pump`` for pump mode),
``openssh-server``/``openssh-client`` and ``icecc``.  Nothing happens at import
time; the library raises ``TopologyError`` and prints nothing.
"""

import fcntl
import ipaddress
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time

__all__ = ["Topology", "TopologyError", "SUBNET_POOL"]

#: the /15 that topology /30s are taken from (RFC 2544 benchmarking range)
SUBNET_POOL = ipaddress.ip_network("198.18.0.0/15")

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DISTCC_PORT = 3632
SSH_PORT = 2222
ICECC_SCHEDULER_PORT = 8765
ICECC_DAEMON_PORT = 10245

_LOCK_PATH = "/run/lock/cgnetns-topology.lock"


class TopologyError(RuntimeError):
    """Setting up or using the topology failed; the message says what."""


def _run(argv, **kw):
    """Run a short command; raise TopologyError with its stderr on failure."""
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=kw.pop("timeout", 30), **kw)
    except FileNotFoundError as exc:
        raise TopologyError(f"{argv[0]}: not found ({exc})") from None
    except subprocess.TimeoutExpired:
        raise TopologyError(f"{' '.join(argv)}: timed out") from None
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise TopologyError(f"{' '.join(argv)}: exit {proc.returncode}"
                            + (f": {msg[-1]}" if msg else ""))
    return proc.stdout


def _which(name, extra=("/usr/sbin", "/sbin")):
    path = shutil.which(name, path=os.pathsep.join([SYSTEM_PATH, *extra]))
    if not path:
        raise TopologyError(f"{name} not found (Debian packages: distcc, distcc-pump, "
                            "openssh-server, openssh-client, icecc, iproute2, util-linux)")
    return path


def _ns_ident(path):
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def _pids_in_netns(ident):
    """PIDs of every process whose network namespace is ``ident``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if _ns_ident(f"/proc/{entry}/ns/net") == ident:
                out.append(int(entry))
        except OSError:
            continue
    return out


def _pid_alive(pid):
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2:][:1] not in (b"Z", b"X")


class _Server:
    """One server process we started; we own its PID."""

    def __init__(self, name, popen, log_path=None):
        self.name = name
        self.popen = popen
        self.log_path = log_path

    @property
    def pid(self):
        return self.popen.pid

    def check_alive(self):
        rc = self.popen.poll()
        if rc is not None:
            tail = ""
            if self.log_path and os.path.exists(self.log_path):
                with open(self.log_path, errors="replace") as f:
                    lines = [l.strip() for l in f if l.strip()]
                if lines:
                    tail = ": " + lines[-1]
            raise TopologyError(f"{self.name} exited with status {rc} during start-up{tail}")

    def stop(self, timeout=5.0):
        if self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(timeout)


class Topology:
    """A remote build host in its own network namespace, joined by a veth pair.

    Parameters:
      ssh: also run sshd for distcc's ssh mode (``DISTCC_HOSTS=@remote``).
      icecc: also run icecc-scheduler and iceccd (remote) and a local iceccd.
      client_user: the user that runs the clients (build user); the ssh client
        key and config are made readable for it.
      distcc_jobs: distccd's --jobs.
      tmp_root: where the temporary directory goes (default: tempfile's).
    """

    def __init__(self, ssh=False, icecc=False, client_user="nobody", distcc_jobs=4,
                 tmp_root=None, ready_timeout=20.0):
        self.want_ssh = ssh
        self.want_icecc = icecc
        self.client_user = client_user
        self.distcc_jobs = int(distcc_jobs)
        self.tmp_root = tmp_root
        self.ready_timeout = ready_timeout
        self.tag = secrets.token_hex(4)
        self.netns = f"cgnetns-remote-{self.tag}"
        self.veth_parent = f"cgnr{self.tag}p"   # 13 characters, under IFNAMSIZ
        self.veth_remote = f"cgnr{self.tag}r"
        self.subnet = None
        self.parent_addr = None
        self.remote_addr = None
        self.tmpdir = None
        self.servers = []
        self.distccd_log = None
        self.ssh_distccd_log = None
        self.icecc_remote_log = None
        self.icecc_local_log = None
        self.icecc_scheduler_log = None
        self.icecc_socket = None
        self.ssh_config = None
        self.ssh_wrapper = None
        self.ssh_key = None
        self.ssh_host_alias = "remote"
        self.remote_user = None
        self._netns_made = False
        self._veth_made = False
        self._netns_ident = None
        self._started = False

    # -- context manager -------------------------------------------------
    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    # -- public, after start ----------------------------------------------
    @property
    def netns_path(self):
        return f"/run/netns/{self.netns}"

    @property
    def distcc_hosts(self):
        """DISTCC_HOSTS for plain TCP to the remote distccd."""
        return f"{self.remote_addr}:{DISTCC_PORT}/{self.distcc_jobs}"

    @property
    def distcc_pump_hosts(self):
        """DISTCC_HOSTS for pump mode (remote preprocessing)."""
        return f"{self.remote_addr}:{DISTCC_PORT}/{self.distcc_jobs},cpp,lzo"

    @property
    def distcc_ssh_hosts(self):
        """DISTCC_HOSTS for ssh mode; needs ``ssh=True`` and DISTCC_SSH=self.ssh_wrapper."""
        self._need(self.want_ssh, "ssh")
        return f"@{self.ssh_host_alias}/{self.distcc_jobs}"

    def distcc_env(self, distcc_dir, mode="tcp"):
        """Environment additions for a distcc client that must compile remotely.

        ``mode``: ``tcp``, ``ssh`` or ``pump``.  Local fallback is off, so a
        compile that cannot reach the server fails instead of running locally.
        """
        hosts = {"tcp": lambda: self.distcc_hosts, "ssh": lambda: self.distcc_ssh_hosts,
                 "pump": lambda: self.distcc_pump_hosts}[mode]()
        env = {
            "DISTCC_HOSTS": hosts,
            "DISTCC_FALLBACK": "0",
            "DISTCC_SKIP_LOCAL_RETRY": "1",
            "DISTCC_DIR": str(distcc_dir),
        }
        if mode == "ssh":
            env["DISTCC_SSH"] = self.ssh_wrapper
        return env

    def icecc_env(self):
        """Environment additions for an icecc client using the local iceccd."""
        self._need(self.want_icecc, "icecc")
        return {"ICECC_TEST_SOCKET": self.icecc_socket}

    def count_compile_ok(self):
        """COMPILE_OK lines in the distccd logs (daemon and ssh-started)."""
        n = 0
        for path in (self.distccd_log, self.ssh_distccd_log):
            n += self._count(path, "COMPILE_OK")
        return n

    def compile_ok_sources(self):
        """Source file names the distccd logs report as COMPILE_OK (for messages)."""
        names = []
        pat = re.compile(r"COMPILE_OK .*\btime:\d+ms \S+ (\S+)")
        for path in (self.distccd_log, self.ssh_distccd_log):
            if path and os.path.exists(path):
                with open(path, errors="replace") as f:
                    for line in f:
                        m = pat.search(line)
                        if m:
                            names.append(m.group(1))
        return names

    def count_icecc_remote_jobs(self):
        """Compile jobs the remote iceccd finished (from its log)."""
        self._need(self.want_icecc, "icecc")
        return self._count(self.icecc_remote_log, "Remote compilation completed with exit code 0")

    def log_text(self, which="distccd"):
        path = {"distccd": self.distccd_log, "ssh-distccd": self.ssh_distccd_log,
                "iceccd": self.icecc_remote_log, "iceccd-local": self.icecc_local_log,
                "icecc-scheduler": self.icecc_scheduler_log}[which]
        if not path or not os.path.exists(path):
            return ""
        with open(path, errors="replace") as f:
            return f.read()

    def pids(self):
        """PIDs of the servers this topology started."""
        return [s.pid for s in self.servers]

    # -- start --------------------------------------------------------------
    def start(self):
        if self._started:
            raise TopologyError("topology already started")
        if os.geteuid() != 0:
            raise TopologyError("the test topology needs root")
        self._started = True
        try:
            self.tmpdir = tempfile.mkdtemp(prefix=f"cgnetns-topo-{self.tag}-", dir=self.tmp_root)
            os.chmod(self.tmpdir, 0o755)
            self._make_network()
            self._start_distccd()
            if self.want_ssh:
                self._start_sshd()
            if self.want_icecc:
                self._start_icecc()
            self._wait_ready()
        except BaseException:
            try:
                self.stop()
            except TopologyError:
                pass  # the start-up failure is the error to report
            raise

    def _need(self, flag, what):
        if not flag:
            raise TopologyError(f"this topology was made without {what}=True")

    def _nsenter(self):
        return [_which("nsenter"), f"--net={self.netns_path}", "--"]

    def _spawn(self, name, argv, log_path=None, env=None, **kw):
        base_env = {"PATH": SYSTEM_PATH, "HOME": "/", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        if env:
            base_env.update(env)
        out = open(os.path.join(self.tmpdir, f"{name}.out"), "wb")
        try:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, env=base_env,
                                     start_new_session=True, close_fds=True, cwd="/", **kw)
        except OSError as exc:
            raise TopologyError(f"cannot start {name}: {exc}") from None
        finally:
            out.close()
        server = _Server(name, popen, log_path or os.path.join(self.tmpdir, f"{name}.out"))
        self.servers.append(server)
        return server

    def _file(self, name, content="", mode=0o644, owner=None):
        path = os.path.join(self.tmpdir, name)
        with open(path, "w") as f:
            f.write(content)
        os.chmod(path, mode)
        if owner is not None:
            os.chown(path, *owner)
        return path

    def _used_blocks(self):
        out = _run([_which("ip"), "-o", "-4", "addr", "show"])
        used = set()
        for m in re.finditer(r"\binet (\d+\.\d+\.\d+\.\d+)/(\d+)", out):
            addr = ipaddress.ip_address(m.group(1))
            if addr in SUBNET_POOL:
                used.add((int(addr) - int(SUBNET_POOL.network_address)) // 4)
        return used

    def _make_network(self):
        ip = _which("ip")
        os.makedirs(os.path.dirname(_LOCK_PATH), exist_ok=True)
        # The lock serialises choosing a /30 and putting it on a link, so that
        # topologies made at the same time (other processes) never collide.
        with open(_LOCK_PATH, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = self._used_blocks()
            nblocks = SUBNET_POOL.num_addresses // 4
            for _ in range(64):
                block = secrets.randbelow(nblocks)
                if block not in used:
                    break
            else:
                raise TopologyError("no free /30 found in 198.18.0.0/15")
            base = int(SUBNET_POOL.network_address) + 4 * block
            self.subnet = ipaddress.ip_network(f"{ipaddress.ip_address(base)}/30")
            self.parent_addr = str(ipaddress.ip_address(base + 1))
            self.remote_addr = str(ipaddress.ip_address(base + 2))

            _run([ip, "netns", "add", self.netns])
            self._netns_made = True
            self._netns_ident = _ns_ident(self.netns_path)
            _run([ip, "link", "add", self.veth_parent, "type", "veth",
                  "peer", "name", self.veth_remote])
            self._veth_made = True
            _run([ip, "link", "set", self.veth_remote, "netns", self.netns])
            _run([ip, "addr", "add", f"{self.parent_addr}/30", "dev", self.veth_parent])
            _run([ip, "link", "set", self.veth_parent, "up"])
        _run([ip, "-n", self.netns, "link", "set", "lo", "up"])
        _run([ip, "-n", self.netns, "addr", "add", f"{self.remote_addr}/30",
              "dev", self.veth_remote])
        _run([ip, "-n", self.netns, "link", "set", self.veth_remote, "up"])

    def _start_distccd(self):
        distccd = _which("distccd")
        try:
            user = pwd.getpwnam("distccd")
        except KeyError:
            raise TopologyError("user distccd missing (Debian package distcc makes it)") from None
        owner = (user.pw_uid, user.pw_gid)
        self.distccd_log = self._file("distccd.log", owner=owner)
        pid_file = self._file("distccd.pid", owner=owner)
        self._distccd = self._spawn("distccd", self._nsenter() + [
            distccd, "--daemon", "--no-detach", "--user", "distccd",
            "--allow", str(self.subnet), "--listen", self.remote_addr,
            "--port", str(DISTCC_PORT), "--jobs", str(self.distcc_jobs),
            "--log-file", self.distccd_log, "--log-level", "info",
            "--pid-file", pid_file,
        ], log_path=self.distccd_log)

    def _free_uid(self):
        for uid in range(64900, 65000):
            try:
                pwd.getpwuid(uid)
            except KeyError:
                return uid
        raise TopologyError("no free uid in 64900-64999 for the remote test user")

    def _start_sshd(self):
        sshd = _which("sshd")
        keygen = _which("ssh-keygen")
        ssh = _which("ssh")
        unshare = _which("unshare")
        distccd = _which("distccd")
        try:
            client = pwd.getpwnam(self.client_user)
        except KeyError:
            raise TopologyError(f"client user {self.client_user!r} does not exist") from None

        # The remote host's own account for distcc: it exists only in the
        # remote host's private view of /etc/passwd.
        uid = self._free_uid()
        gid = uid
        self.remote_user = f"cgnetns-r{self.tag}"
        home = os.path.join(self.tmpdir, "home")
        os.mkdir(home, 0o755)
        os.chown(home, uid, gid)
        with open("/etc/passwd") as f:
            passwd = f.read()
        if not passwd.endswith("\n"):
            passwd += "\n"
        passwd += f"{self.remote_user}:x:{uid}:{gid}:cgnetns test:{home}:/bin/sh\n"
        passwd_path = self._file("passwd", passwd)
        with open("/etc/group") as f:
            group = f.read()
        if not group.endswith("\n"):
            group += "\n"
        group += f"{self.remote_user}:x:{gid}:\n"
        group_path = self._file("group", group)

        hostkey = os.path.join(self.tmpdir, "ssh_host_ed25519_key")
        _run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "cgnetns-topology-host", "-f", hostkey])
        self.ssh_key = os.path.join(self.tmpdir, "client_ed25519")
        _run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "cgnetns-topology-client",
              "-f", self.ssh_key])
        os.chown(self.ssh_key, client.pw_uid, client.pw_gid)
        os.chmod(self.ssh_key, 0o600)
        with open(self.ssh_key + ".pub") as f:
            pub = f.read().strip()
        auth_keys = self._file("authorized_keys", pub + "\n", 0o644)
        with open(hostkey + ".pub") as f:
            host_pub = f.read().split()
        known_hosts = self._file(
            "known_hosts", f"[{self.remote_addr}]:{SSH_PORT} {host_pub[0]} {host_pub[1]}\n")

        self.ssh_distccd_log = self._file("ssh-distccd.log", owner=(uid, gid), mode=0o644)
        # Forced command: only distccd --inetd may run, with its log where we read it.
        force = self._file("distccd-forced", "\n".join([
            "#!/bin/sh",
            "# sshd ForceCommand of the cgnetns test topology: distccd --inetd only.",
            'set -f',
            'set -- $SSH_ORIGINAL_COMMAND',
            'case "$1" in distccd|' + distccd + ') shift ;; *) echo "refused: $1" >&2; exit 1 ;; esac',
            'case "$1" in --inetd) ;; *) echo "refused: not --inetd" >&2; exit 1 ;; esac',
            'for a; do case "$a" in --inetd|--enable-tcp-insecure) ;; '
            '*) echo "refused option: $a" >&2; exit 1 ;; esac; done',
            f'exec {distccd} "$@" --log-file {self.ssh_distccd_log} --log-level info',
            "",
        ]), 0o755)
        sshd_pid = os.path.join(self.tmpdir, "sshd.pid")
        sshd_config = self._file("sshd_config", "\n".join([
            f"ListenAddress {self.remote_addr}:{SSH_PORT}",
            f"HostKey {hostkey}",
            f"PidFile {sshd_pid}",
            f"AuthorizedKeysFile {auth_keys}",
            f"AllowUsers {self.remote_user}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin no",
            "UsePAM no",
            # the key files live below /tmp (mode 1777): StrictModes would refuse them
            "StrictModes no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "PrintMotd no",
            "UseDNS no",
            f"ForceCommand {force}",
            "LogLevel VERBOSE",
            "",
        ]))
        self.ssh_config = self._file("ssh_config", "\n".join([
            f"Host {self.ssh_host_alias}",
            f"  HostName {self.remote_addr}",
            f"  Port {SSH_PORT}",
            f"  User {self.remote_user}",
            f"  IdentityFile {self.ssh_key}",
            "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {known_hosts}",
            "  GlobalKnownHostsFile /dev/null",
            "  StrictHostKeyChecking yes",
            "  BatchMode yes",
            "  LogLevel ERROR",
            "  ConnectTimeout 10",
            "",
        ]))
        self.ssh_wrapper = self._file("ssh", "\n".join([
            "#!/bin/sh",
            "# ssh for distcc's ssh mode against the cgnetns test topology",
            f'exec {ssh} -F {self.ssh_config} "$@"',
            "",
        ]), 0o755)
        # sshd in the remote host's network namespace and in a private mount
        # namespace: there /etc/passwd and /etc/group carry the test account and
        # /run is a fresh tmpfs (privilege separation wants /run/sshd).
        script = (f"mount --bind {passwd_path} /etc/passwd && "
                  f"mount --bind {group_path} /etc/group && "
                  "mount -t tmpfs -o mode=0755 cgnetns-topology /run && "
                  "mkdir -m 0755 /run/sshd && "
                  f'exec {sshd} -D -e -f {sshd_config}')
        self._spawn("sshd", self._nsenter() + [
            unshare, "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script])

    def _start_icecc(self):
        sched = _which("icecc-scheduler")
        iceccd = _which("iceccd")
        try:
            ice = pwd.getpwnam("icecc")
        except KeyError:
            raise TopologyError("user icecc missing (Debian package icecc makes it)") from None
        owner = (ice.pw_uid, ice.pw_gid)
        self.icecc_scheduler_log = self._file("icecc-scheduler.log", owner=owner)
        self.icecc_remote_log = self._file("iceccd-remote.log", owner=owner)
        self.icecc_local_log = self._file("iceccd-local.log", owner=owner)
        netname = f"cgnetns{self.tag}"
        # iceccd empties and re-creates its environment directory without
        # CAP_DAC_OVERRIDE: the directory above it must belong to icecc.
        for d in ("icecc-remote", "icecc-local"):
            os.mkdir(os.path.join(self.tmpdir, d), 0o755)
            os.chown(os.path.join(self.tmpdir, d), *owner)
        remote_env = os.path.join(self.tmpdir, "icecc-remote", "envs")
        local_env = os.path.join(self.tmpdir, "icecc-local", "envs")
        self._spawn("icecc-scheduler", self._nsenter() + [
            sched, "-n", netname, "-l", self.icecc_scheduler_log, "-vvv",
            "-u", "icecc"], log_path=self.icecc_scheduler_log)
        # A daemon that misses the scheduler at its first try waits ~20 s
        # before the next: start the daemons only once the scheduler listens.
        self._wait_for({"icecc-scheduler": lambda: "scheduler ready" in self.log_text("icecc-scheduler")})
        self._spawn("iceccd-remote", self._nsenter() + [
            iceccd, "-n", netname, "-s", f"{self.remote_addr}:{ICECC_SCHEDULER_PORT}",
            "-m", "2", "-N", f"remote-{self.tag}", "-b", remote_env,
            "-u", "icecc", "-l", self.icecc_remote_log, "-vvv",
        ], log_path=self.icecc_remote_log,
            env={"ICECC_TEST_SOCKET": os.path.join(self.tmpdir, "icecc-remote", "iceccd.sock")})
        # The daemon the icecc client asks for a compile host ("local" daemon):
        # compiles nothing itself, listens for the client on a Unix socket of
        # its own.  It runs in the remote namespace too, because iceccd
        # broadcasts to every interface of its namespace (here: only the veth).
        self.icecc_socket = os.path.join(self.tmpdir, "icecc-local", "iceccd.sock")
        self._spawn("iceccd-local", self._nsenter() + [
            iceccd, "-n", netname, "-s", f"{self.remote_addr}:{ICECC_SCHEDULER_PORT}",
            "-m", "0", "--no-remote", "-N", f"local-{self.tag}", "-b", local_env,
            "-p", str(ICECC_DAEMON_PORT + 1),
            "-u", "icecc", "-l", self.icecc_local_log, "-vvv",
        ], log_path=self.icecc_local_log, env={"ICECC_TEST_SOCKET": self.icecc_socket})

    # -- readiness ------------------------------------------------------------
    def _tcp_ready(self, port):
        try:
            with socket.create_connection((self.remote_addr, port), timeout=1):
                return True
        except OSError:
            return False

    def _wait_ready(self):
        pending = {"distccd": lambda: self._tcp_ready(DISTCC_PORT)}
        if self.want_ssh:
            pending["sshd"] = lambda: self._tcp_ready(SSH_PORT)
        if self.want_icecc:
            pending["iceccd-local"] = lambda: os.path.exists(self.icecc_socket)
            pending["iceccd logins at the scheduler"] = self._icecc_logged_in
        self._wait_for(pending)

    def _wait_for(self, pending):
        deadline = time.monotonic() + self.ready_timeout
        while pending:
            for server in self.servers:
                server.check_alive()
            for name in list(pending):
                if pending[name]():
                    del pending[name]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise TopologyError("not ready after %.0f s: %s"
                                    % (self.ready_timeout, ", ".join(sorted(pending))))
            time.sleep(0.05)

    def _icecc_logged_in(self):
        text = self.log_text("icecc-scheduler")
        return all(f"login {who}-{self.tag} " in text for who in ("remote", "local"))

    # -- stop -----------------------------------------------------------------
    def stop(self):
        """End everything, delete the network and temp files.  Idempotent."""
        errors = []
        for server in reversed(self.servers):
            try:
                server.stop()
            except Exception as exc:  # keep tearing down
                errors.append(f"{server.name}: {exc}")
        self.servers = []
        # Whatever still lives in the remote namespace (sshd sessions, distccd
        # children, compilers) is ended by PID too.
        if self._netns_ident is not None:
            for _ in range(50):
                pids = [p for p in _pids_in_netns(self._netns_ident) if _pid_alive(p)]
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.05)
            else:
                errors.append("processes left in %s" % self.netns)
        ip = shutil.which("ip", path=SYSTEM_PATH) or "ip"
        if self._veth_made:
            try:
                subprocess.run([ip, "link", "del", self.veth_parent], capture_output=True,
                               timeout=30)
            except Exception as exc:
                errors.append(f"veth: {exc}")
            self._veth_made = False
        if self._netns_made:
            try:
                _run([ip, "netns", "del", self.netns])
            except TopologyError as exc:
                errors.append(str(exc))
            self._netns_made = False
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
        if errors:
            raise TopologyError("teardown: " + "; ".join(errors))

    @staticmethod
    def _count(path, needle):
        if not path or not os.path.exists(path):
            return 0
        with open(path, errors="replace") as f:
            return sum(1 for line in f if needle in line)
