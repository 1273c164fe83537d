"""The egress policy: where a build may go through cgnetns (issue 16).

Owns the policy file ``/etc/cgnetns/egress`` (``paths.EGRESS_PATH``), its
parsing and the resolution of its names, and the nftables filter that
enforces it in each build's approved network namespace: installing it when
a build is made (``prepare``, ``install``; called by ``cgnetns.build``),
removing it when the build ends (``uninstall``), removing the filters of
dead builds (``collect``; ``cgnetns-gc``), and describing it (``explain``,
``counters``, ``check``; ``cgnetns-show``).

The policy
----------
One destination a line, ``#`` starts a comment::

    tcp|udp ADDRESS[/PREFIX]|HOSTNAME PORT[-PORT]

The file obeys the allow list's rules: a root-owned regular file, not
group/other writable, in root-owned directories that are not either, no
symbolic link on the way, at most 64 KiB.  One bad line refuses every new
build (exit 125, one line that names the line and the fix) rather than
guessing.  Names are resolved as root when a build is made; the addresses
are what the filter lists, and the build's run record keeps them (key
``egress``).  No file: no policy, nothing is installed, as before.
``Build(..., egress=...)`` takes a per-build policy instead (a ``Policy``,
or the path of a file under the same rules): for tests and tools.

The filter
----------
One table, ``inet cgnetns``, in each approved namespace that has a build
with a policy, removed with the last such build::

    chain output    hook output, priority filter, policy accept:
                    tcp flags & (syn | ack) != syn accept
                    jump level2            (one per cgroup2 depth in use)
    map level2      cgroupsv2 : verdict    build cgroup -> jump b_<ID>
    chain level2    socket cgroupv2 level 2 vmap @level2
    chain b_<ID>    ip daddr 198.18.0.2 tcp dport 3632 counter return  (a line)
                    meta l4proto tcp counter reject with tcp reset
                    counter reject         (icmp/icmpv6 port-unreachable)

``socket cgroupv2 level N`` takes the cgroup2 ancestor at depth N of the
cgroup the packet's socket was made in, so a build's map element covers the
build cgroup and everything below it (Portage's ``emerge-<pid>/<cpv>``).
A socket's cgroup is that of the task that made it: on the set-user-ID path
the program itself, in the build cgroup; on the broker path the supervisor,
which the helper starts in the caller's cgroup (CLONE_INTO_CGROUP).  The
lookup is one hash probe per level in use, whatever the number of builds.
Only the first packet of a TCP connection is looked at (its SYN): replies
and every later packet of a connection that was let through pass untouched,
and so do connections the build accepts.  Datagrams (UDP, ICMP) are looked
at one by one, without connection tracking, which would be loaded for every
flow of the namespace.  A listed destination *returns*, so that a build
nested in another build meets both policies.  What is not listed is
rejected, not dropped: a TCP connect fails with ECONNREFUSED at once, a
datagram with EPERM, and distcc fails over or fails fast.  Other processes
of the namespace, and every other namespace, are untouched.

How it is driven
----------------
pyroute2's nftables support has no ``socket cgroupv2 level`` expression
(nft_socket's NFTA_SOCKET_LEVEL), so the filter is written in nft's own
language and read back as JSON, through libnftables (the library behind
the ``nft`` command, ``libnftables1``) loaded with ctypes: in-process, every
change is one atomic transaction, and a build pays about a millisecond
rather than the ~10 ms an ``nft`` process spends in exit after a deletion
(the kernel flushes its deferred frees, an RCU grace period, when a
netfilter netlink socket closes).  nft 1.0.6's JSON parser refuses
``socket`` as a map key, and its JSON output drops the level, so JSON is
used for reading only.  Map elements are written as cgroup paths relative
to ``/sys/fs/cgroup`` (nft turns them into cgroup ids; this process has
the host's mounts); an element whose cgroup is gone is deleted by its id
through pyroute2's netlink.  A context for this process's own namespace is
kept open (its socket close-on-exec); another namespace is entered through
the build's pin, in a thread of its own.  Changes take the lock
``/run/cgnetns/egress.lock``.
"""

import contextlib
import ctypes
import fcntl
import json
import os
import re
import stat
import struct
import threading

from . import _sys, namespaces, paths
from .errors import CgnetnsError

FAMILY = "inet"
TABLE = "cgnetns"
CHAIN_PREFIX = "b_"
LEVEL_PREFIX = "level"
LOCK_NAME = "egress.lock"
MAX_SIZE = 64 * 1024
NFT_CGROUP_BASE = "/sys/fs/cgroup"   # what nft resolves cgroupsv2 paths against
LIBNFTABLES = ("libnftables.so.1",)
NFT_CTX_OUTPUT_JSON = 1 << 4
FORMAT = "tcp|udp ADDRESS[/PREFIX]|HOSTNAME PORT[-PORT]"
LIBRARY_SOURCE = "<library>"

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_PORTS = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?\Z")
_NFT_PATH_OK = re.compile(r"[A-Za-z0-9_./:@+=,%-]+\Z")


def policy_path():
    """The system policy file (read at call time, so that a test may point
    ``paths.EGRESS_PATH`` elsewhere in a process of its own)."""
    return paths.EGRESS_PATH


class PolicyError(CgnetnsError):
    """The policy file is unsafe or has a bad line: every new build is refused."""


class FilterError(CgnetnsError):
    """The filter could not be installed, read or removed."""


# ---------------------------------------------------------------- the policy

class Rule:
    """One line of a policy: PROTO, a NETWORK or a NAME, ports LO..HI."""

    __slots__ = ("line", "text", "proto", "network", "name", "lo", "hi")

    def __init__(self, line, text, proto, network, name, lo, hi):
        self.line, self.text, self.proto = line, text, proto
        self.network, self.name, self.lo, self.hi = network, name, lo, hi

    @property
    def ports(self):
        return "%d" % self.lo if self.lo == self.hi else "%d-%d" % (self.lo, self.hi)

    def __repr__(self):
        return "<Rule line %d: %s>" % (self.line, self.text)


class Policy:
    """A parsed policy: ``source`` (a path, or ``<library>``) and ``rules``."""

    def __init__(self, rules, source=LIBRARY_SOURCE):
        self.rules = list(rules)
        self.source = source

    @classmethod
    def parse(cls, text, source=LIBRARY_SOURCE):
        """Parse policy TEXT (str or bytes); raise PolicyError naming the first bad line."""
        if isinstance(text, str):
            text = text.encode("utf-8", "surrogateescape")
        if b"\0" in text:
            raise PolicyError("%s line %d contains a NUL byte"
                              % (source, text[:text.index(b"\0")].count(b"\n") + 1),
                              "write one destination a line: " + FORMAT)
        rules = []
        for n, raw in enumerate(text.split(b"\n"), 1):
            body = raw.split(b"#", 1)[0].strip(b" \t\r")
            if not body:
                continue
            try:
                line = body.decode("ascii")
            except UnicodeDecodeError:
                raise PolicyError("%s line %d: not ASCII" % (source, n),
                                  "write one destination a line: " + FORMAT) from None
            rules.append(_parse_line(line, n, source))
        return cls(rules, source)

    def resolve(self, getaddrinfo=None):
        """[(rule, [ip_network, ...])]: names resolved now, as this process
        (root) resolves them; a name without an address refuses the build."""
        import ipaddress
        import socket  # here: builds without a policy never need it
        getaddrinfo = getaddrinfo or socket.getaddrinfo
        out = []
        for r in self.rules:
            if r.network is not None:
                out.append((r, [r.network]))
                continue
            kind = socket.SOCK_STREAM if r.proto == "tcp" else socket.SOCK_DGRAM
            try:
                infos = getaddrinfo(r.name, None, 0, kind)
            except (socket.gaierror, UnicodeError, OSError) as e:
                raise PolicyError("%s line %d: cannot resolve %s: %s"
                                  % (self.source, r.line, r.name,
                                     getattr(e, "strerror", None) or e),
                                  "make the name resolve for root, or write its address "
                                  "instead") from None
            nets = []
            for family, _, _, _, sa in infos:
                if family not in (socket.AF_INET, socket.AF_INET6):
                    continue
                net = ipaddress.ip_network(sa[0].split("%", 1)[0])
                if net not in nets:
                    nets.append(net)
            if not nets:
                raise PolicyError("%s line %d: %s has no IPv4 or IPv6 address"
                                  % (self.source, r.line, r.name),
                                  "make the name resolve for root, or write its address "
                                  "instead")
            out.append((r, nets))
        return out


def _parse_line(line, n, source):
    import ipaddress
    def bad(problem, fix=None):
        return PolicyError("%s line %d: %r: %s" % (source, n, line, problem),
                           fix or "write one destination a line: " + FORMAT)

    fields = line.split()
    if len(fields) != 3:
        raise bad("%d field%s, not 3" % (len(fields), "" if len(fields) == 1 else "s"))
    proto, dest, ports = fields
    if proto not in ("tcp", "udp"):
        raise bad("%r is not a protocol" % proto, "write tcp or udp first: " + FORMAT)
    network = name = None
    if "%" in dest or "[" in dest:
        raise bad("%r is neither an address nor a host name" % dest,
                  "write an IPv4 or IPv6 address (no brackets, no zone), "
                  "ADDRESS/PREFIX, or a host name")
    if "/" in dest:
        try:
            network = ipaddress.ip_network(dest, strict=True)
        except ValueError as e:
            fix = "write ADDRESS/PREFIX with the host bits zero"
            try:
                fix += ", e.g. %s" % ipaddress.ip_network(dest, strict=False)
            except ValueError:
                fix = "write an IPv4 or IPv6 address and a prefix length, e.g. 10.0.0.0/8"
            raise bad("%r is not a network (%s)" % (dest, e), fix)
    else:
        try:
            network = ipaddress.ip_network(ipaddress.ip_address(dest))
        except ValueError:
            name = dest.lower().rstrip(".") if dest != "." else ""
            labels = name.split(".")
            if (not name or len(name) > 253 or not all(_LABEL.match(l) for l in labels)
                    or labels[-1].isdigit()):
                raise bad("%r is neither an address nor a host name" % dest,
                          "write an IPv4 or IPv6 address (no brackets, no zone), "
                          "ADDRESS/PREFIX, or a host name")
    m = _PORTS.match(ports)
    if not m:
        raise bad("%r is not a port or a range" % ports,
                  "write a port (1-65535) or a range LOW-HIGH, e.g. 3632 or 3632-3633")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) is not None else lo
    if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
        raise bad("port %s is not in 1-65535" % ports,
                  "write a port (1-65535) or a range LOW-HIGH, e.g. 3632 or 3632-3633")
    if lo > hi:
        raise bad("the range %s runs backwards" % ports, "write the lower port first: "
                  "%d-%d" % (hi, lo))
    return Rule(n, " ".join(fields), proto, network, name, lo, hi)


def _trusted_problem(path):
    from .resolve import trusted_path_problem
    return trusted_path_problem(path)


def load(path=None, missing_ok=True):
    """The policy in the file at PATH (default: the system's), or None when
    there is no file and MISSING_OK.  Raises PolicyError when the file is
    unsafe, unreadable or has a bad line."""
    path = policy_path() if path is None else os.fspath(path)
    fix = ("chown root:root %s && chmod 644 %s (and every directory above it), or remove it "
           "to run builds without an egress policy" % (path, path))
    try:
        os.lstat(path)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise PolicyError("the egress policy %s does not exist" % path,
                          "write it (one destination a line: %s)" % FORMAT) from None
    except OSError as e:
        raise PolicyError("the egress policy %s cannot be examined: %s" % (path, e.strerror),
                          fix) from None
    problem = _trusted_problem(path)
    if problem:
        raise PolicyError("the egress policy %s is unsafe: %s" % (path, problem), fix)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NOCTTY)
    except OSError as e:
        raise PolicyError("the egress policy %s cannot be read: %s" % (path, e.strerror),
                          fix) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
            raise PolicyError("the egress policy %s changed while it was read" % path, fix)
        data = b""
        while len(data) <= MAX_SIZE:
            chunk = os.read(fd, MAX_SIZE + 1 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if len(data) > MAX_SIZE:
        raise PolicyError("the egress policy %s is larger than %d KiB" % (path, MAX_SIZE >> 10),
                          "list only destinations, one a line: " + FORMAT)
    return Policy.parse(data, path)


# ------------------------------------------------------------------ the plan

class Plan:
    """What one build installs: its chain, the map (level) and cgroup path
    its element is keyed by, and the resolved rules."""

    def __init__(self, build_id, source, resolved, level, nft_cgroup):
        self.build_id = build_id
        self.source = source
        self.resolved = resolved          # [(Rule, [ip_network])]
        self.level = level
        self.nft_cgroup = nft_cgroup
        self.chain = chain_name(build_id)
        self.cgroup_ino = None            # the cgroup's id, once installed

    def record(self):
        """The ``egress`` value of the build's run record."""
        return {
            "source": self.source,
            "table": "%s %s" % (FAMILY, TABLE),
            "chain": self.chain,
            "level": self.level,
            "nft_cgroup": self.nft_cgroup,
            "rules": [{"line": r.line, "text": r.text, "proto": r.proto, "ports": [r.lo, r.hi],
                       "name": r.name, "addresses": [_net_text(n) for n in nets]}
                      for r, nets in self.resolved],
        }

    def commands(self):
        """nft commands for the build's chain and its map element."""
        c = "%s %s %s" % (FAMILY, TABLE, self.chain)
        out = ["create chain %s" % c]
        for r, nets in self.resolved:
            for fam, want in (("ip", 4), ("ip6", 6)):
                sel = [_net_text(n) for n in nets if n.version == want]
                if not sel:
                    continue
                dest = sel[0] if len(sel) == 1 else "{ %s }" % ", ".join(sel)
                out.append('add rule %s %s daddr %s %s dport %s counter return comment "line %d"'
                           % (c, fam, dest, r.proto, r.ports, r.line))
        out.append('add rule %s meta l4proto tcp counter reject with tcp reset '
                   'comment "not in the policy"' % c)
        out.append('add rule %s counter reject comment "not in the policy"' % c)
        out.append('add element %s %s %s%d { "%s" : jump %s }'
                   % (FAMILY, TABLE, LEVEL_PREFIX, self.level, self.nft_cgroup, self.chain))
        return out


def chain_name(build_id):
    return CHAIN_PREFIX + build_id


def _net_text(net):
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def nft_cgroup_path(cgroup_path):
    """CGROUP_PATH as nft names it: relative to /sys/fs/cgroup."""
    return os.path.relpath(cgroup_path, NFT_CGROUP_BASE)


def prepare(build):
    """The plan for BUILD (its ``egress`` argument, else the system file),
    or None when there is no policy.  Called by Build before anything is
    made: a bad policy or a name that does not resolve refuses the build."""
    spec = getattr(build, "egress", None)
    if spec is None:
        policy = load(None, missing_ok=True)
    elif isinstance(spec, Policy):
        policy = spec
    elif isinstance(spec, (str, bytes, os.PathLike)):
        policy = load(os.fsdecode(spec), missing_ok=False)
    else:
        raise TypeError("egress must be None, a Policy or a path, not %r" % (spec,))
    if policy is None:
        return None
    level = len([p for p in build.cgroup.split("/") if p])
    nft_cgroup = nft_cgroup_path(build.cgroup_path)
    if level < 1 or not _NFT_PATH_OK.match(nft_cgroup):
        raise FilterError("the build cgroup %s cannot be named in an nftables rule"
                          % build.cgroup_path,
                          "make builds below a cgroup whose path has only letters, digits and "
                          "_ . - : @ + = , %")
    return Plan(build.id, policy.source, policy.resolve(), level, nft_cgroup)


def record(plan):
    """The run record's ``egress`` value for PLAN (None: no policy)."""
    return plan.record() if plan is not None else None


# ---------------------------------------------------------------- libnftables

_lib = None
_lib_lock = threading.Lock()


class NftUnavailable(FilterError):
    pass


def _load_lib():
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        last = None
        for name in LIBNFTABLES:
            try:
                lib = ctypes.CDLL(name, use_errno=True)
                break
            except OSError as e:
                last = e
        else:
            raise NftUnavailable("libnftables cannot be loaded (%s)" % last,
                                 "install nftables (Debian: apt-get install nftables)")
        vp, c = ctypes.c_void_p, ctypes
        lib.nft_ctx_new.restype = vp
        lib.nft_ctx_new.argtypes = [c.c_uint32]
        lib.nft_ctx_free.argtypes = [vp]
        lib.nft_ctx_buffer_output.argtypes = [vp]
        lib.nft_ctx_buffer_error.argtypes = [vp]
        lib.nft_ctx_get_output_buffer.argtypes = [vp]
        lib.nft_ctx_get_output_buffer.restype = c.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [vp]
        lib.nft_ctx_get_error_buffer.restype = c.c_char_p
        lib.nft_ctx_output_set_flags.argtypes = [vp, c.c_uint]
        lib.nft_ctx_set_dry_run.argtypes = [vp, c.c_bool]
        lib.nft_run_cmd_from_buffer.argtypes = [vp, c.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = c.c_int
        _lib = lib
        return lib


def _socket_fds():
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink("/proc/self/fd/" + name).startswith("socket:"):
                out.add(int(name))
        except OSError:
            continue
    return out


class Nft:
    """One libnftables context, bound to the network namespace of the thread
    that made it.  Not thread-safe: callers serialise."""

    def __init__(self):
        self.lib = _load_lib()
        before = _socket_fds()
        self.ctx = self.lib.nft_ctx_new(0)
        if not self.ctx:
            raise FilterError("libnftables could not make a context",
                              "check that nf_tables is available (modprobe nf_tables)")
        # libnftables opens its netlink socket without close-on-exec: a build
        # started by this process must not inherit it.
        for fd in _socket_fds() - before:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
        self.lib.nft_ctx_buffer_output(self.ctx)
        self.lib.nft_ctx_buffer_error(self.ctx)

    def run(self, commands, as_json=False, dry_run=False):
        """Run COMMANDS (nft's language, one transaction); return the output."""
        if isinstance(commands, (list, tuple)):
            commands = "\n".join(commands)
        self.lib.nft_ctx_output_set_flags(self.ctx, NFT_CTX_OUTPUT_JSON if as_json else 0)
        self.lib.nft_ctx_set_dry_run(self.ctx, bool(dry_run))
        try:
            rc = self.lib.nft_run_cmd_from_buffer(self.ctx, commands.encode() + b"\n")
        finally:
            self.lib.nft_ctx_set_dry_run(self.ctx, False)
        out = (self.lib.nft_ctx_get_output_buffer(self.ctx) or b"").decode(errors="replace")
        err = (self.lib.nft_ctx_get_error_buffer(self.ctx) or b"").decode(errors="replace")
        if rc != 0:
            raise NftCommandError(err, commands)
        return out

    def objects(self, command):
        """The objects of a ``list`` COMMAND's JSON output (metainfo left out)."""
        doc = json.loads(self.run(command, as_json=True) or '{"nftables": []}')
        return [o for o in doc.get("nftables", []) if "metainfo" not in o]

    def close(self):
        if self.ctx:
            self.lib.nft_ctx_free(self.ctx)
            self.ctx = None


class NftCommandError(FilterError):
    def __init__(self, text, commands=""):
        lines = [l.strip() for l in text.splitlines() if l.strip()]
        first = next((l for l in lines if "Error:" in l), lines[0] if lines else "failed")
        first = first.split("Error:", 1)[-1].strip()
        super().__init__("nft: " + first)
        self.text = text
        self.commands = commands

    @property
    def missing(self):
        return "No such file or directory" in self.text


_own = {}                # namespace identity -> Nft (this process's own namespaces)
_own_lock = threading.RLock()


def _in_netns(identity, pin_path, func):
    """FUNC(nft) with an Nft context in the namespace IDENTITY (entered
    through PIN_PATH when it is not the calling thread's own)."""
    here = namespaces.current_identity()
    if identity is None or identity.same(here):
        with _own_lock:
            nft = _own.get(tuple(here))
            if nft is None:
                nft = _own[tuple(here)] = Nft()
            return func(nft)
    if pin_path is None:
        raise FilterError("the network namespace %s cannot be entered (no pin)" % (identity,),
                          "run it in that namespace")
    result = {}

    def body():
        try:
            fd = os.open(pin_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                got = namespaces.identity_of_fd(fd)
                if not got.same(identity):
                    raise FilterError("the pin %s holds %s, not %s" % (pin_path, got, identity),
                                      "run cgnetns-gc")
                _sys.setns(fd, _sys.CLONE_NEWNET)
            finally:
                os.close(fd)
            nft = Nft()
            try:
                result["value"] = func(nft)
            finally:
                nft.close()
        except BaseException as e:  # handed to the caller's thread
            result["error"] = e

    t = threading.Thread(target=body, name="cgnetns-egress", daemon=True)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


@contextlib.contextmanager
def _lock(run_dir):
    path = os.path.join(run_dir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ------------------------------------------------------------ reading state

def _levels(names):
    """The levels a table with chains NAMES serves (a level's map, chain and
    jump are made in one transaction), or None when there is no table."""
    if names is None:
        return None
    return {int(n[len(LEVEL_PREFIX):]) for n in names
            if n.startswith(LEVEL_PREFIX) and n[len(LEVEL_PREFIX):].isdigit()}


def _chains(nft):
    """Names of the chains of the cgnetns table, or None when there is none.
    (nft's text, not its JSON: a third of the time with many builds.)"""
    names, table = [], None
    for line in nft.run("list chains %s" % FAMILY).splitlines():
        words = line.split()
        if len(words) == 4 and words[0] == "table" and words[3] == "{":
            table = words[2] if words[1] == FAMILY else None
        elif len(words) == 3 and words[0] == "chain" and words[2] == "{" and table == TABLE:
            names.append(words[1])
    return names or None


def _build_chains(names):
    return [n for n in names or () if n.startswith(CHAIN_PREFIX)]


def _skeleton():
    t = "%s %s" % (FAMILY, TABLE)
    return ["add table %s" % t,
            "add chain %s output { type filter hook output priority filter; policy accept; }" % t,
            # Only a connection's first packet is looked at (see the module docstring).
            "add rule %s output tcp flags & (syn | ack) != syn accept" % t]


def _level_commands(level):
    t = "%s %s" % (FAMILY, TABLE)
    name = "%s%d" % (LEVEL_PREFIX, level)
    return ["add map %s %s { type cgroupsv2 : verdict; }" % (t, name),
            "add chain %s %s" % (t, name),
            "add rule %s %s socket cgroupv2 level %d vmap @%s" % (t, name, level, name),
            "add rule %s output jump %s" % (t, name)]


# ------------------------------------------------------- install and remove

def _fail(plan, build, e, doing="install"):
    where = str(build.identity) if build.identity else "?"
    if isinstance(e, NftUnavailable):
        hint = e.hint
    elif isinstance(e, NftCommandError) and ("socket" in e.commands and
                                             ("Operation not supported" in e.text
                                              or "No such file" in e.text)):
        hint = ("the kernel must match sockets by cgroup (nft_socket, Linux 5.13 or newer); "
                "cgnetns-show --check tells; or remove %s to run builds without a policy"
                % plan.source)
    else:
        hint = "cgnetns-show --check tells why; or remove %s to run builds without a policy" % (
            plan.source)
    msg = e.message if isinstance(e, CgnetnsError) else str(e)
    return FilterError("cannot %s the egress filter of %s in %s: %s"
                       % (doing, plan.source, where, msg), hint)


def install(build, plan):
    """Install PLAN's filter in BUILD's approved namespace (after its cgroup,
    pin and tag exist).  Raises FilterError; nothing is left on failure
    (one transaction)."""
    try:
        plan.cgroup_ino = os.stat(build.cgroup_path).st_ino

        def op(nft):
            with _lock(build.run_dir):
                try:  # the table and the level's map are there (the usual case)
                    nft.run(plan.commands())
                    return
                except NftCommandError:
                    pass
                levels = _levels(_chains(nft))
                cmds = []
                if levels is None:
                    cmds += _skeleton()
                    levels = set()
                if plan.level not in levels:
                    cmds += _level_commands(plan.level)
                nft.run(cmds + plan.commands())
        _in_netns(build.identity, build.pin_path, op)
    except (OSError, CgnetnsError) as e:
        raise _fail(plan, build, e) from None


def uninstall(build, plan):
    """Remove PLAN's filter (the last build's removes the table)."""
    try:
        def op(nft):
            with _lock(build.run_dir):
                _remove(nft, plan.chain, plan.level, plan.nft_cgroup, plan.cgroup_ino)
        _in_netns(build.identity, build.pin_path, op)
    except (OSError, CgnetnsError) as e:
        raise _fail(plan, build, e, "remove") from None


def _cgroup_id(nft_cgroup):
    try:
        return os.stat(os.path.join(NFT_CGROUP_BASE, nft_cgroup)).st_ino
    except OSError:
        return None


def _remove(nft, chain, level, nft_cgroup, cgroup_ino=None):
    """Remove CHAIN and the element that jumps to it; the table too when no
    other build's chain is left.  Returns True when something was removed."""
    names = _chains(nft)
    if names is None or chain not in names:
        return False
    if not [c for c in _build_chains(names) if c != chain]:
        nft.run("delete table %s %s" % (FAMILY, TABLE))
        return True
    t = "%s %s" % (FAMILY, TABLE)
    key = _cgroup_id(nft_cgroup) if nft_cgroup else None
    if key is not None and (cgroup_ino is None or key == cgroup_ino):
        try:
            nft.run(['delete element %s %s%d { "%s" }' % (t, LEVEL_PREFIX, level, nft_cgroup),
                     "delete chain %s %s" % (t, chain)])
            return True
        except NftCommandError as e:
            if not e.missing:
                raise
    # The cgroup is gone (or another one took its path): find the element by
    # its target and delete it by its key, the cgroup id.
    for lvl, ident in _elements_to(nft, chain, level):
        _delete_element_by_id(lvl, ident)
    nft.run("delete chain %s %s" % (t, chain))
    return True


def _elements_to(nft, chain, level=None):
    """[(level, cgroup id)] of the map elements that jump to CHAIN."""
    out = []
    levels = _levels(_chains(nft)) or set()
    if level is not None:
        levels.add(level)
    for lvl in sorted(levels):
        try:
            objs = nft.objects("list map %s %s %s%d" % (FAMILY, TABLE, LEVEL_PREFIX, lvl))
        except NftCommandError as e:
            if e.missing:
                continue
            raise
        for o in objs:
            for key, verdict in o.get("map", {}).get("elem", []) or []:
                if not isinstance(verdict, dict) or \
                        verdict.get("jump", {}).get("target") != chain:
                    continue
                # nft prints a key as the path of the cgroup with that id, or
                # as the number when it finds none.
                ident = int(key) if str(key).isdigit() else _cgroup_id(str(key))
                if ident is not None:
                    out.append((lvl, ident))
    return out


def _delete_element_by_id(level, ident):
    """Delete the element keyed by cgroup id IDENT (nft names keys only by
    path, and a removed cgroup has none) through pyroute2's netlink, in the
    calling thread's namespace."""
    from pyroute2.nftables.main import NFTables, NFTSet
    try:
        n = NFTables(nfgen_family=1)  # NFPROTO_INET
        try:
            n.set_elems("del", table=TABLE,
                        set=NFTSet(table=TABLE, name="%s%d" % (LEVEL_PREFIX, level),
                                   key_type=None),
                        elements=[struct.pack("=Q", ident)])
        finally:
            n.close()
    except Exception as e:  # pyroute2's NetlinkError is no OSError
        raise FilterError("cannot delete the element of cgroup id %d from %s%d: %s"
                          % (ident, LEVEL_PREFIX, level, e), None) from None


# ------------------------------------------------------------------ reading

def rules_of(identity, pin_path, chain):
    """The rules of CHAIN as [{"comment", "packets", "bytes", "verdict",
    "expr"}], or None when it is not installed."""
    def op(nft):
        try:
            objs = nft.objects("list chain %s %s %s" % (FAMILY, TABLE, chain))
        except NftCommandError as e:
            if e.missing:
                return None
            raise
        out = []
        for o in objs:
            r = o.get("rule")
            if not r:
                continue
            d = {"comment": r.get("comment"), "packets": None, "bytes": None,
                 "verdict": None, "expr": r.get("expr")}
            for e in r.get("expr", []):
                if "counter" in e and isinstance(e["counter"], dict):
                    d["packets"] = e["counter"].get("packets")
                    d["bytes"] = e["counter"].get("bytes")
                for v in ("return", "reject", "accept", "drop"):
                    if v in e:
                        d["verdict"] = v
            out.append(d)
        return out
    return _in_netns(identity, pin_path, op)


def counters(build):
    """The rules of BUILD's chain with their counters (None: not installed)."""
    plan = getattr(build, "egress_plan", None)
    if plan is None:
        return None
    return rules_of(build.identity, build.pin_path, plan.chain)


def table_exists(identity=None, pin_path=None):
    """Whether the cgnetns table exists in a namespace (default: this one)."""
    return _in_netns(identity, pin_path, lambda nft: _chains(nft) is not None)


def chains(identity=None, pin_path=None):
    """The build chains in a namespace's cgnetns table (default: this one)."""
    return _in_netns(identity, pin_path, lambda nft: _build_chains(_chains(nft)))


# ------------------------------------------------------------------------ gc

def gc_action(f, run_dir, make_action):
    """The action that removes dead build F's filter (``cgnetns-gc``, under
    its global lock), or None when there is nothing to remove: no policy in
    its record, its namespace gone or out of reach (the filter went with
    it), or no chain of it there.  MAKE_ACTION(kind, path, build_id, why)
    is gc's Action."""
    if f.live or not f.id or not isinstance(f.record, dict):
        return None
    rec = f.record.get("egress")
    if not isinstance(rec, dict) or not isinstance(rec.get("chain"), str):
        return None
    ident = f.approved()
    pin = namespaces.pin_path(f.id, run_dir) if f.pin_mounted else None
    if ident is None and pin is not None:  # its cgroup (and tag) is gone: the pin says
        try:
            ident = namespaces.identity_of_path(pin)
        except (OSError, CgnetnsError):
            ident = None
    if ident is None or (pin is None and not ident.same(namespaces.current_identity())):
        return None
    try:
        _load_lib()
    except NftUnavailable:
        return None
    why = "its run (pid %s) is gone" % f.owner_pid if f.owner_pid else "its run is gone"
    a = make_action("remove-filter", "%s %s %s in net:[%d]" % (FAMILY, TABLE, rec["chain"],
                                                               ident.ino), f.id, why)
    a.filter = {"identity": ident, "pin": pin, "chain": rec["chain"],
                "level": rec.get("level") if isinstance(rec.get("level"), int) else None,
                "nft_cgroup": rec.get("nft_cgroup") if isinstance(rec.get("nft_cgroup"), str)
                else None}
    try:
        present = _in_netns(ident, pin, lambda nft: rec["chain"] in (_chains(nft) or ()))
    except (OSError, CgnetnsError) as e:
        a.error = e.line() if isinstance(e, CgnetnsError) else str(e)
        return a
    return a if present else None


def gc_remove(a, run_dir):
    """Carry out gc_action's action A (after the build's processes are killed)."""
    d = a.filter

    def op(nft):
        with _lock(run_dir):
            _remove(nft, d["chain"], d["level"], d["nft_cgroup"])
    _in_netns(d["identity"], d["pin"], op)


# ---------------------------------------------------------------------- show

def explain(build_record, pin_path=None, identity=None):
    """What ``cgnetns-show PID`` prints about the policy of a process's build:
    a dict (``policy``: the record's ``egress`` value or None; ``installed``;
    ``rules`` with counters, when they can be read) or None when unknown."""
    if not isinstance(build_record, dict) or "egress" not in build_record:
        return None
    rec = build_record.get("egress")
    out = {"policy": rec, "installed": None, "rules": None, "error": None}
    if not isinstance(rec, dict) or identity is None:
        return out
    try:
        rules = rules_of(identity, pin_path, rec.get("chain"))
        out["installed"] = rules is not None
        out["rules"] = rules
    except (OSError, CgnetnsError) as e:
        out["error"] = e.line() if isinstance(e, CgnetnsError) else str(e)
    return out


def check(sys_cgroup="/sys/fs/cgroup"):
    """For ``cgnetns-show --check``: [(name, status, message, fix)] about the
    policy file and whether nftables can match sockets by cgroup here."""
    out = []
    path = policy_path()
    policy = None
    try:
        policy = load(path, missing_ok=True)
        if policy is None:
            out.append(("egress-policy", "ok", "no egress policy (%s does not exist): builds "
                        "reach whatever the allow-listed programs reach" % path, None))
        else:
            out.append(("egress-policy", "ok", "%s: %d destination%s" % (
                path, len(policy.rules), "" if len(policy.rules) == 1 else "s"), None))
    except PolicyError as e:
        out.append(("egress-policy", "fail", e.message + ": cgnetns-run refuses every build",
                    e.hint))
    if os.geteuid() != 0:
        out.append(("egress-nftables", "warn", "cannot try nftables without root",
                    "run cgnetns-show --check as root"))
        return out
    try:
        from . import cgroups
        root = cgroups.find_cgroup2(sys_cgroup)
        own = cgroups.to_abs(root, cgroups.cgroup_of("self"))
        level = len([p for p in cgroups.to_rel(root, own).split("/") if p])
        if level == 0:  # the root itself cannot be a socket's ancestor at level >= 1
            subs = sorted(e for e in os.listdir(root) if os.path.isdir(os.path.join(root, e)))
            if not subs:
                raise FilterError("no cgroup below %s to try a rule with" % root, None)
            own, level = os.path.join(root, subs[0]), 1
        t = "inet cgnetns-check"
        cmds = ["add table %s" % t,
                "add chain %s output { type filter hook output priority filter; }" % t,
                'add rule %s output socket cgroupv2 level %d "%s" meta l4proto tcp '
                'counter reject with tcp reset' % (t, level, nft_cgroup_path(own)),
                "add map %s m { type cgroupsv2 : verdict; }" % t,
                "add rule %s output socket cgroupv2 level %d vmap @m" % (t, level),
                "add rule %s output counter reject" % t]
        # dry run: the kernel checks every expression, nothing is committed
        _in_netns(None, None, lambda nft: nft.run(cmds, dry_run=True))
        out.append(("egress-nftables", "ok", "nftables matches sockets by cgroup here "
                    "(socket cgroupv2, a cgroupsv2 map, reject)", None))
    except (OSError, CgnetnsError) as e:
        status = "fail" if policy is not None else "warn"
        msg = e.message if isinstance(e, CgnetnsError) else str(e)
        out.append(("egress-nftables", status, "nftables cannot match sockets by cgroup here: "
                    "%s%s" % (msg, ": every build is refused" if policy is not None else
                              " (only needed with an egress policy)"),
                    "install nftables (libnftables1) and use Linux 5.13 or newer with "
                    "nf_tables and nft_socket"))
    return out
