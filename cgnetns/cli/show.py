"""cgnetns-show: why does (or doesn't) a process's allow-listed program get the network?

    cgnetns-show [--json] [--debug] [PID]     explain the decision for one process
    cgnetns-show --all [--json] [--debug]     every build, with its member processes
    cgnetns-show --check [--json] [--debug]   the host and the installation

Exit status: 0 when the explanation or the list was shown (whatever the
verdict: a refusal is an answer) or when --check found no failure; 1 when
--check found a failure; 2 for a bad command line; 3 when the process does not
exist or exited while being shown; 4 when permission is denied (e.g. --all
without root); 125 when cgnetns itself failed.  The JSON keys are documented in
cgnetns-show(8) and only ever added to.
"""

import ctypes
import errno
import json
import os
import re
import shutil
import socket
import stat
import struct
import sys
import textwrap
import time

from .. import __version__, _sys, cgroups, namespaces, paths, resolve
from .. import egress as _egress
from .. import portage as _portage
from ..errors import CgnetnsError, EXIT_USAGE, PlacementError
from . import Parser, run_main

PROG = "cgnetns-show"
WIDTH = 100
HELPER = paths.HELPER            # set-user-ID root, static
FRONT = paths.FRONT              # what builds call: dynamic, not set-user-ID
# Allow-listed, these run any program with the network (README.rst, "Security").
LAUNCHERS = frozenset("""env sh bash dash zsh ksh mksh csh tcsh fish busybox toybox nice nohup
    setsid timeout xargs find sudo su doas runuser setpriv chroot nsenter unshare stdbuf
    ionice chrt taskset flock script expect make ssh""".split())
BROKER_SOCKET = paths.BROKER_SOCKET


def build_parser():
    p = Parser(
        prog=PROG, allow_abbrev=False,
        usage="%(prog)s [--json] [--debug] [PID]\n"
              "       %(prog)s --all [--json] [--debug]\n"
              "       %(prog)s --check [--json] [--debug]",
        description="Explain what cgnetns-exec decides for a process (default: this one): "
                    "its cgroup, the tagged build cgroup above it, the approved network "
                    "namespace, the pin, the process's own namespace and the verdict "
                    "(join, pass-through, refuse) with the reason and the fix.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--all", "-A", action="store_true",
                      help="list every build: cgroup, approved netns, pin, age, members")
    mode.add_argument("--check", action="store_true",
                      help="check the host and the installation (exit 1 when a check fails)")
    p.add_argument("--json", "-J", action="store_true",
                   help="print one JSON document (keys documented in cgnetns-show(8))")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--version", action="version", version="%(prog)s " + __version__)
    p.add_argument("pid", nargs="?", metavar="PID",
                   help="the process to explain (default: cgnetns-show itself)")
    return p


def _pid(text):
    if not text.isdigit() or int(text) <= 0 or int(text) > 2 ** 31 - 1:
        raise CgnetnsError("%r is not a process ID" % text, "give a positive decimal PID",
                           status=EXIT_USAGE)
    return int(text)


# ---------------------------------------------------------------- output

def _utf8():
    enc = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    return enc == "utf8"


def _fit(line, width=WIDTH):
    if len(line) <= width:
        return line
    return line[:width - 1] + ("\u2026" if _utf8() else "~")


def _width():
    if sys.stdout.isatty():
        return max(40, min(WIDTH, shutil.get_terminal_size((WIDTH, 24)).columns))
    return WIDTH


def _printable(text):
    return "".join(c if c.isprintable() else "\\x%02x" % ord(c) if ord(c) < 256 else "?"
                   for c in text or "")


def _age(seconds):
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return "%ds" % s
    if s < 3600:
        return "%dm%02ds" % (s // 60, s % 60)
    if s < 86400:
        return "%dh%02dm" % (s // 3600, s % 3600 // 60)
    return "%dd%02dh" % (s // 86400, s % 86400 // 3600)


def _ns(d):
    return d["name"] if d else "?"


def _emit(lines):
    sys.stdout.write("".join(line + "\n" for line in lines))


def _field(label, text, width):
    """LABEL, then TEXT wrapped to WIDTH with a hanging indent."""
    indent = " " * 11
    wrapped = textwrap.wrap(_printable(text), width=width - 11, break_long_words=True,
                            break_on_hyphens=False) or [""]
    out = ["%-10s %s" % (label, wrapped[0])]
    out += [indent + w for w in wrapped[1:]]
    return out


def format_explanation(d, width=WIDTH):
    out = []
    user = d["user"] or "?"
    out += _field("process", "%d, user %s (uid %s)%s" % (
        d["pid"], user, d["uid"],
        "" if d["tgid"] == d["pid"] else ", a thread of %d" % d["tgid"]), width)
    out.append(_fit("%-10s %s" % ("command", _printable(d["command"])), width))
    if d["netns"]:
        out += _field("netns", "%s (dev %d, nsid %d)" % (d["netns"]["name"], d["netns"]["dev"],
                                                         d["netns"]["nsid"]), width)
    else:
        out += _field("netns", "unknown: %s" % d["netns_error"], width)
    if d["cgroup"] is not None:
        where = " on %s" % d["cgroup_root"] if d["cgroup_root"] else ""
        member = {True: ", listed in its cgroup.procs", False: ", NOT listed in its cgroup.procs",
                  None: ""}[d["in_cgroup_procs"]]
        out += _field("cgroup", d["cgroup"] + where + member, width)
    first = True
    for a in d["ancestors"]:
        if a["tag"] is not None:
            tag = "tagged %s" % a["tag"]
        elif a["tag_readable"]:
            tag = "no tag"
        else:
            tag = "tag unreadable (no CAP_SYS_ADMIN)"
        owner = "root" if a["owner_uid"] == 0 else "uid %d" % a["owner_uid"]
        out += _field("walk" if first else "", "%s: owner %s, %s" % (a["cgroup"], owner, tag),
                      width)
        first = False
    t = d["tag"]
    if t is not None:
        if t["valid"]:
            out += _field("tag", "pin %s approves net:[%d] (dev %d, nsid %d)"
                          % (t["pin"], t["ino"], t["dev"], t["nsid"]), width)
        else:
            out += _field("tag", "does not parse: %s" % t["error"], width)
    if d["pin"] is not None:
        p = d["pin"]
        holds = ", holds %s" % p["netns"]["name"] if p["netns"] else ""
        match = ", matches the tag" if p["matches"] else ""
        out += _field("pin", "%s: %s%s%s" % (p["path"], p["state"], holds, match), width)
    b = d["build"]
    if b is not None:
        if b["exists"]:
            state = "live" if b["live"] else "dead (its run is gone: cgnetns-gc removes it)"
            out += _field("build", "%s, %s, owner pid %s, age %s" % (
                b["name"] or b["id"], state, b["owner_pid"], _age(b["age"])), width)
        else:
            out += _field("build", "%s: no run record in the pins directory" % b["id"], width)
    al = d["allow_list"]
    if al is not None:
        if al["state"] == "ok":
            progs = al["programs"] or []
            text = "%s: ok, %d program%s%s" % (al["path"], len(progs), "" if len(progs) == 1
                                               else "s", (": " + ", ".join(progs)) if progs else "")
            for bad in al["bad_programs"]:
                text += "; %s" % bad["problem"]
        else:
            text = "%s: %s: %s" % (al["path"], al["state"], al["problem"])
        out += _field("allow", text, width)
    for n in d["notes"]:
        out += _field("note", n, width)
    if d.get("exec_path"):
        out += _field("path", "%s: %s" % (d["exec_path"], d["exec_path_reason"]), width)
    out += _field("verdict", "%s: %s" % (d["verdict"].upper(), d["reason"]), width)
    if d.get("on_join"):
        # What the caller gets, on each path (the one above is the likely one).
        out += _field("via suid", d["on_join"]["set_user_id"], width)
        out += _field("via broker", d["on_join"]["broker"], width)
    if d["fix"]:
        out += _field("fix", d["fix"], width)
    out += format_egress(d.get("egress"), width)
    return out


def egress_of(d):
    """The egress policy of the build of explanation D (cgnetns/egress.py):
    what its run record says, and the filter with its counters as installed
    in the approved namespace (root only); None when not in a build."""
    from .. import records
    b = d.get("build")
    if not b or not b.get("exists") or not b.get("record"):
        return None
    data = records.read_record(b["record"])
    a = d.get("approved_netns")
    ident = namespaces.NsIdentity(a["dev"], a["ino"], a["nsid"]) if a else None
    pin = d["pin"]["path"] if d.get("pin") and d["pin"].get("state") == "ok" else None
    return _egress.explain(data, pin, ident if pin else None)


def format_egress(e, width=WIDTH):
    """The ``egress`` lines of the explanation."""
    if e is None:
        return []
    pol = e["policy"]
    if pol is None:
        return _field("egress", "no policy when the build was made: its allow-listed programs "
                      "reach any destination", width)
    state = {True: "installed", False: "NOT installed (removed by hand?): the build's sockets are not filtered",
             None: "not read (%s)" % (e["error"] or "needs root")}[e["installed"]]
    out = _field("egress", "%s, %s as %s %s" % (pol.get("source"), state, pol.get("table"),
                                                  pol.get("chain")), width)
    counts = {}
    for r in e.get("rules") or []:
        counts.setdefault(r["comment"], 0)
        counts[r["comment"]] += r["packets"] or 0
    for rule in pol.get("rules") or []:
        n = counts.get("line %d" % rule["line"])
        out += _field("", "line %d: %s -> %s%s" % (
            rule["line"], rule["text"], ", ".join(rule["addresses"]),
            "" if n is None else " (%d packet%s)" % (n, "" if n == 1 else "s")), width)
    n = counts.get("not in the policy")
    out += _field("", "anything else from the build's sockets is rejected%s; a TCP "
                  "connection counts its first packet only"
                  % ("" if n is None else " (%d packet%s so far)" % (n, "" if n == 1 else "s")),
                  width)
    return out


def _tree_chars():
    if _utf8():
        return "\u251c\u2500 ", "\u2514\u2500 ", "\u2502  ", "   "
    return "|- ", "`- ", "|  ", "   "


def format_builds(builds, width=WIDTH):
    """systemd-cgls-like tree: one header line per build, its cgroups and members."""
    if not builds:
        return ["no builds"]
    tee, last, bar, blank = _tree_chars()
    out = []
    for b in builds:
        if b["id"] is None:
            out.append(_fit("? %s: tagged, but no record names it (%s)"
                            % (b["cgroup"], b["tag_error"] or "unknown pin"), width))
            continue
        pin = b["pin"]["state"] if b["pin"] else ("missing" if b["tag"] else "none")
        owner = "pid %s" % b["owner_pid"] if b["owner_pid"] else "no owner"
        header = "%s  %s  %s  age %s  pin %s  approves %s" % (
            b["id"], b["state"], owner, _age(b["age"]), pin,
            _ns(b["approved_netns"]) if b["approved_netns"] else "-")
        out.append(_fit(header, width))
        if b["name"] and b["name"] != b["id"] and not b["id"].startswith(b["name"] + "-"):
            out.append(_fit("   name %s" % b["name"], width))
        if b["tag_error"]:
            out.append(_fit("   tag %s: %s" % (b["tag"], b["tag_error"]), width))
        if not b["cgroup"]:
            out.append(_fit("%s(no cgroup)" % last, width))
            continue
        exists = "" if b["cgroup_exists"] else " (gone)"
        out.append(_fit("%s%s%s" % (last, b["cgroup"], exists), width))
        members = b["members"] or []
        # group by cgroup, nested cgroups as subtrees
        by_cg = {}
        for m in members:
            by_cg.setdefault(m["cgroup"], []).append(m)
        out += _cgroup_tree(b["cgroup"], by_cg, blank, width, (tee, last, bar, blank))
    out.append("")
    out.append(_fit("* = in the approved network namespace right now (e.g. a job started "
                    "through cgnetns-exec)", width))
    return out


def _member_line(m):
    ns = _ns(m["netns"]) if m["netns"] else "net:?"
    mark = "*" if m["in_approved_netns"] else " "
    return "%-7d %-10s %-18s %s" % (m["pid"], _printable(m["user"] or "?")[:10], ns + mark,
                                    _printable(m["command"] or "?"))


def _cgroup_tree(cg, by_cg, prefix, width, chars):
    tee, last, bar, blank = chars
    items = [("m", m) for m in sorted(by_cg.get(cg, []), key=lambda m: m["pid"])]
    subs = sorted({c for c in by_cg if c != cg and c.startswith(cg.rstrip("/") + "/")})
    direct = sorted({cg.rstrip("/") + "/" + c[len(cg.rstrip("/")) + 1:].split("/")[0]
                     for c in subs})
    items += [("c", c) for c in direct]
    out = []
    for i, (kind, it) in enumerate(items):
        is_last = i == len(items) - 1
        branch = last if is_last else tee
        if kind == "m":
            out.append(_fit(prefix + branch + _member_line(it), width))
        else:
            out.append(_fit(prefix + branch + os.path.basename(it) + "/", width))
            out += _cgroup_tree(it, by_cg, prefix + (blank if is_last else bar), width, chars)
    return out


# ---------------------------------------------------------------- --check

class Check:
    def __init__(self, name, status, message, fix=None):
        assert status in ("ok", "warn", "fail")
        assert (fix is None) == (status == "ok"), (name, status, fix)
        self.name, self.status, self.message, self.fix = name, status, message, fix

    def to_dict(self):
        return {"name": self.name, "status": self.status, "message": self.message,
                "fix": self.fix}


def _elf_interp(path):
    """The PT_INTERP of the ELF file at PATH, None when it has none (static)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF":
            raise ValueError("not an ELF file")
        is64 = head[4] == 2
        end = "<" if head[5] == 1 else ">"
        if is64:
            phoff, = struct.unpack_from(end + "Q", head, 32)
            phentsize, phnum = struct.unpack_from(end + "HH", head, 54)
        else:
            phoff, = struct.unpack_from(end + "I", head, 28)
            phentsize, phnum = struct.unpack_from(end + "HH", head, 42)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            ph = f.read(phentsize)
            ptype, = struct.unpack_from(end + "I", ph, 0)
            if ptype == 3:  # PT_INTERP
                if is64:
                    off, = struct.unpack_from(end + "Q", ph, 8)
                    size, = struct.unpack_from(end + "Q", ph, 32)
                else:
                    off, = struct.unpack_from(end + "I", ph, 4)
                    size, = struct.unpack_from(end + "I", ph, 16)
                f.seek(off)
                return f.read(size).rstrip(b"\0").decode(errors="replace")
    return None


def find_helper():
    return HELPER if os.path.lexists(HELPER) else None


def _names(path, *strings):
    """Those of STRINGS (compiled-in paths) that the binary at PATH lacks."""
    with open(path, "rb") as f:
        data = f.read(64 << 20)
    return [s for s in strings if b"\0" + s.encode() + b"\0" not in data]


def check_helper(helper=None):
    """The set-user-ID helper (helper/main.c): root-owned, set-user-ID, static,
    not group/other writable, not on a nosuid mount."""
    checks = []
    helper = helper or find_helper()
    if helper is None or not os.path.lexists(helper):
        return [Check("helper", "fail", "the set-user-ID helper is not installed (not at %s): "
                      "cgnetns-exec can only ask the broker" % (helper or HELPER),
                      "run make install in a cgnetns checkout")]
    checks.append(Check("helper", "ok", "set-user-ID helper at %s" % helper))
    st = os.stat(helper)
    problems = []
    if st.st_uid != 0:
        problems.append("owned by uid %d, not root" % st.st_uid)
    if not st.st_mode & stat.S_ISUID:
        problems.append("the setuid bit is not set")
    if st.st_mode & 0o022:
        problems.append("group/other writable")
    if not st.st_mode & 0o001:
        problems.append("not executable by other users")
    mode = "%04o" % stat.S_IMODE(st.st_mode)
    if problems:
        checks.append(Check("helper-setuid", "fail", "%s (mode %s): %s" % (
            helper, mode, ", ".join(problems)),
            "chown root:root %s && chmod 4755 %s (make install does it)" % (helper, helper)))
    else:
        checks.append(Check("helper-setuid", "ok", "setuid root, mode %s" % mode))
    try:
        interp = _elf_interp(helper)
        if interp is None:
            checks.append(Check("helper-static", "ok", "statically linked (no ELF interpreter)"))
        else:
            checks.append(Check("helper-static", "warn", "dynamically linked (interpreter %s): "
                                "libc warns when a build's LD_PRELOAD cannot be preloaded "
                                "into a set-id program" % interp,
                                "rebuild it statically: make -C helper && make install"))
    except (OSError, ValueError) as e:
        checks.append(Check("helper-static", "fail", "cannot read %s as ELF: %s" % (helper, e),
                            "reinstall it: make install"))
    try:
        if os.statvfs(helper).f_flag & os.ST_NOSUID:
            checks.append(Check("helper-mount", "fail", "%s is on a nosuid mount: the setuid bit "
                                "has no effect" % helper,
                                "install into a directory on a mount without nosuid "
                                "(make install LIBDIR=...)"))
    except OSError:
        pass
    try:
        missing = _names(helper, paths.ALLOW_PATH, paths.PINS_DIR, paths.BROKER_SOCKET)
    except OSError as e:
        missing = None
        checks.append(Check("helper-paths", "warn", "cannot read %s: %s" % (helper, e.strerror),
                            "run cgnetns-show --check as root"))
    if missing:
        checks.append(Check("helper-paths", "fail", "%s was built for another installation: it "
                            "does not name %s, which cgnetns-run and cgnetns-show use"
                            % (helper, " or ".join(missing)),
                            "reinstall the helper and the Python package together (make install "
                            "with the same PREFIX and SYSCONFDIR)"))
    elif missing is not None:
        checks.append(Check("helper-paths", "ok", "it reads %s and %s"
                            % (paths.ALLOW_PATH, paths.PINS_DIR)))
    return checks


def check_front(front=None, helper=None, broker_socket=None):
    """The front builds call (helper/front.c): it must exist, be dynamic and
    not set-user-ID (Gentoo's sandbox ptraces static and set-user-ID programs
    and strips their LD_PRELOAD), be executable by everyone, and name the
    helper and the broker socket this installation uses."""
    front = front or FRONT
    helper = helper or HELPER
    broker_socket = broker_socket or BROKER_SOCKET
    try:
        st = os.stat(front)
    except FileNotFoundError:
        return [Check("front", "fail", "cgnetns-exec, the front builds call, is not installed "
                      "(not at %s)" % front, "run make install in a cgnetns checkout")]
    except OSError as e:
        return [Check("front", "fail", "cannot examine %s: %s" % (front, e.strerror),
                      "run cgnetns-show --check as root")]
    checks = [Check("front", "ok", "cgnetns-exec (the front) at %s" % front)]
    mode = "%04o" % stat.S_IMODE(st.st_mode)
    problems = []
    if not stat.S_ISREG(st.st_mode):
        problems.append("not a regular file")
    if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        problems.append("set-user-ID or set-group-ID (the front must hold no privilege: only "
                        "the helper at %s is set-user-ID)" % helper)
    if st.st_uid != 0:
        problems.append("owned by uid %d, not root" % st.st_uid)
    if st.st_mode & 0o022:
        problems.append("group/other writable")
    if st.st_mode & 0o111 != 0o111:
        problems.append("not executable by everyone")
    if problems:
        checks.append(Check("front-mode", "fail", "%s (mode %s): %s"
                            % (front, mode, ", ".join(problems)),
                            "chown root:root %s && chmod 0755 %s (make install does it)"
                            % (front, front)))
    else:
        checks.append(Check("front-mode", "ok", "root-owned, mode %s, not set-user-ID" % mode))
    try:
        interp = _elf_interp(front)
        if interp is not None:
            checks.append(Check("front-dynamic", "ok", "dynamically linked (interpreter %s): "
                                "Gentoo's sandbox neither traces it nor strips its LD_PRELOAD"
                                % interp))
        else:
            checks.append(Check("front-dynamic", "warn", "statically linked: Gentoo's sandbox "
                                "ptraces it and what it runs, without its LD_PRELOAD",
                                "install the dynamic front: make -C helper && make install"))
        missing = _names(front, helper, broker_socket)
        if missing:
            checks.append(Check("front-paths", "fail", "%s was built for another installation: "
                                "it does not name %s" % (front, " or ".join(missing)),
                                "reinstall the front and the helper together (make install "
                                "with the same PREFIX, BINDIR and LIBDIR)"))
        else:
            checks.append(Check("front-paths", "ok", "it executes %s and asks the broker on %s"
                                % (helper, broker_socket)))
    except (OSError, ValueError) as e:
        checks.append(Check("front-dynamic", "fail", "cannot read %s as ELF: %s" % (front, e),
                            "reinstall it: make install"))
    return checks


def check_allow_list(path=resolve.ALLOW_LIST):
    al = resolve.check_allow_list(path)
    fix = "chown root:root %s && chmod 644 %s (and every directory above it)" % (path, path)
    if al["state"] == "unsafe":
        return [Check("allow-list", "fail", "%s: cgnetns-exec refuses every call" % al["problem"],
                      fix)]
    if al["state"] == "missing":
        return [Check("allow-list", "fail", al["problem"],
                      "list the programs (one absolute path a line) in %s, e.g. "
                      "`command -v distcc`; make install creates it" % path)]
    if al["state"] == "unreadable":
        return [Check("allow-list", "warn", al["problem"], "run cgnetns-show --check as root")]
    progs = al["programs"]
    out = [Check("allow-list", "ok" if progs else "warn",
                 "%s: %d program%s%s" % (path, len(progs), "" if len(progs) == 1 else "s",
                                         (": " + ", ".join(progs)) if progs else
                                         " (cgnetns-exec allows nothing)"),
                 None if progs else "add the programs, e.g. `command -v distcc`, to %s" % path)]
    for prog in progs:
        base = os.path.basename(prog)
        if base in LAUNCHERS or re.match(r"(python|perl|ruby|lua|tclsh|php)[0-9.]*\Z", base):
            out.append(Check("allow-list-program", "warn", "%s runs whatever it is told to: "
                             "every build can reach the network through it" % prog,
                             "remove it from %s unless every build may use the network" % path))
    for bad in al["bad_programs"]:
        out.append(Check("allow-list-program", "warn", "%s: cgnetns-exec will not run it: %s"
                         % (bad["path"], bad["problem"]),
                         "list its canonical path (readlink -f), root-owned and not "
                         "group/other writable"))
    return out


def check_cgroups(sys_cgroup=cgroups.SYS_CGROUP, proc="/proc",
                  systemd_rundir=cgroups.SYSTEMD_RUNDIR):
    out = []
    try:
        root = cgroups.find_cgroup2(sys_cgroup)
    except CgnetnsError as e:
        return [Check("cgroup2", "fail", e.message + ": cgnetns-exec refuses every tagged call "
                      "and cgnetns-run cannot run", e.hint)]
    layout = "unified" if root == sys_cgroup else "hybrid"
    out.append(Check("cgroup2", "ok", "cgroup2 mounted at %s (%s layout)" % (root, layout)))
    # A read probe changes nothing: kernfs answers ENODATA for a missing
    # attribute of a namespace it supports, EOPNOTSUPP otherwise.
    try:
        os.getxattr(root, "trusted.cgnetns-check")
        supported = True
    except OSError as e:
        supported = e.errno != errno.EOPNOTSUPP
    if supported:
        out.append(Check("cgroup-xattrs", "ok", "cgroupfs supports trusted.* attributes (the tag)"))
    else:
        out.append(Check("cgroup-xattrs", "fail", "cgroupfs does not support trusted.* "
                         "attributes: no build can be tagged",
                         "use a kernel whose kernfs supports xattrs (Linux 3.x or newer)"))
    if cgroups.systemd_manages_cgroups(systemd_rundir):
        try:
            parent = cgroups.choose_parent(root, proc=proc, systemd_rundir=systemd_rundir)
            out.append(Check("systemd", "ok", "systemd manages cgroups; this process is in the "
                             "delegated cgroup %s, builds go below it"
                             % cgroups.to_rel(root, parent)))
        except PlacementError as e:
            if shutil.which("systemd-run"):
                out.append(Check("systemd", "ok", "systemd manages cgroups; cgnetns-run moves "
                                 "itself into a Delegate=yes scope (systemd-run) for each build"))
            else:
                out.append(Check("systemd", "fail", e.message, e.hint))
    else:
        out.append(Check("systemd", "ok", "systemd does not manage cgroups here; builds go to "
                         "%s/%s" % (root, cgroups.CGNETNS_SUBTREE)))
    return out


def check_run_dir(run_dir=resolve.RUN_DIR):
    out = []
    for path, want in ((run_dir, 0o755), (namespaces.pins_dir(run_dir), 0o700)):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            out.append(Check("run-dir", "ok", "%s does not exist yet (the first build makes it)"
                             % path))
            break
        except PermissionError:
            out.append(Check("run-dir", "warn", "%s cannot be examined by this user" % path,
                             "run cgnetns-show --check as root"))
            break
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
            out.append(Check("run-dir", "fail", "%s is not a root-owned directory without "
                             "group/other write (owner %d, mode %04o): cgnetns-exec refuses "
                             "every tagged call" % (path, st.st_uid, stat.S_IMODE(st.st_mode)),
                             "remove it while no build runs; the next build makes it again"))
            break
    else:
        out.append(Check("run-dir", "ok", "%s and %s are root-owned (0755, 0700)"
                         % (run_dir, namespaces.pins_dir(run_dir))))
    return out


def _syscall():
    libc = _sys.libc()
    libc.syscall.restype = ctypes.c_long
    return libc.syscall


def probe_ns_get_id():
    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _sys.ns_get_id(fd) != 0
    finally:
        os.close(fd)


def probe_openat2():
    class OpenHow(ctypes.Structure):
        _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                    ("resolve", ctypes.c_uint64)]
    how = OpenHow(os.O_PATH | os.O_CLOEXEC | os.O_DIRECTORY, 0, 0x04)  # RESOLVE_NO_SYMLINKS
    sc = _syscall()
    fd = sc(ctypes.c_long(437), ctypes.c_int(-100), ctypes.c_char_p(b"/"), ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)))
    if fd >= 0:
        os.close(fd)
        return True
    return False


def probe_so_peerpidfd():
    a, b = socket.socketpair()
    try:
        fd = a.getsockopt(socket.SOL_SOCKET, 77, 4)  # SO_PEERPIDFD (Linux 6.5)
        fd = struct.unpack("i", fd)[0]
        if fd >= 0:
            os.close(fd)
        return True
    except OSError:
        return False
    finally:
        a.close()
        b.close()


def probe_clone_into_cgroup():
    """clone3(CLONE_INTO_CGROUP) with a descriptor that cannot be open: EBADF
    means the kernel knows the flag (5.7+), EINVAL or ENOSYS that it does not.
    No process is created either way."""
    args = (ctypes.c_uint64 * 11)()
    args[0] = 0x200000000   # CLONE_INTO_CGROUP
    args[4] = 17            # exit_signal SIGCHLD
    args[10] = 2 ** 31 - 1  # cgroup: INT_MAX, never an open descriptor
    sc = _syscall()
    ret = sc(ctypes.c_long(435), ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))
    if ret == 0:  # pragma: no cover - cannot happen; never run Python in a raw child
        os._exit(0)
    if ret > 0:   # pragma: no cover
        os.waitpid(ret, 0)
        return True
    return ctypes.get_errno() == errno.EBADF


def check_kernel(sys_cgroup=cgroups.SYS_CGROUP):
    out = []

    def probe(name, func, ok, warn, fix):
        try:
            good = func()
        except OSError as e:
            good, warn = False, "%s (%s)" % (warn, e.strerror)
        out.append(Check(name, "ok" if good else "warn", ok if good else warn,
                         None if good else fix))

    probe("ns-get-id", probe_ns_get_id, "NS_GET_ID: namespaces have 64-bit ids (tags record them)",
          "no NS_GET_ID: tags match namespaces by inode number only, which the kernel "
          "reuses after a namespace is freed", "use Linux 6.1 or newer")
    probe("openat2", probe_openat2, "openat2: cgroup paths are resolved with "
          "RESOLVE_BENEATH|NO_SYMLINKS|NO_XDEV", "no openat2: the helper walks paths "
          "component by component", "use Linux 5.6 or newer")
    probe("so-peerpidfd", probe_so_peerpidfd, "SO_PEERPIDFD: the broker identifies its peer "
          "by a pidfd", "no SO_PEERPIDFD: the broker falls back to SO_PEERCRED",
          "use Linux 6.5 or newer")
    try:
        root = cgroups.find_cgroup2(sys_cgroup)
        has_kill = None
        for d in [os.path.join(root, cgroups.CGNETNS_SUBTREE)] + sorted(
                os.path.join(root, e) for e in os.listdir(root)):
            if os.path.isdir(d) and os.path.exists(os.path.join(d, "cgroup.procs")):
                has_kill = os.path.exists(os.path.join(d, "cgroup.kill"))
                break
        if has_kill is None:
            has_kill = tuple(int(x) for x in os.uname().release.split(".")[:2]
                             if x.isdigit()) >= (5, 14)
    except (CgnetnsError, OSError, ValueError):
        has_kill = False
    out.append(Check("cgroup-kill", "ok" if has_kill else "warn",
                     "cgroup.kill: a build's processes are killed at once" if has_kill else
                     "no cgroup.kill: cgnetns freezes a build's cgroup and kills its "
                     "processes one by one", None if has_kill else "use Linux 5.14 or newer"))
    probe("clone-into-cgroup", probe_clone_into_cgroup,
          "CLONE_INTO_CGROUP: processes can be started directly in a cgroup",
          "no CLONE_INTO_CGROUP: processes join a cgroup after fork",
          "use Linux 5.7 or newer")
    return out


# The name check_broker asks the broker about: never on an allow list (not a
# program), so the broker's helper answers "refuse 126 ..." after reading the
# allow list, and nothing else happens.
BROKER_PROBE_NAME = "cgnetns-show-check"


def check_broker(path=BROKER_SOCKET, timeout=2.0):
    """cgnetnsd on PATH: a socket every user may connect to, and a broker
    whose helper answers a request (doc/BROKER.rst)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return [Check("broker", "warn", "cgnetnsd is not running (no %s): inside Gentoo's "
                      "sandbox (no_new_privs) cgnetns-exec cannot gain privilege and has no "
                      "broker to ask" % path,
                      "start cgnetnsd (or enable cgnetnsd.socket)")]
    except PermissionError:
        return [Check("broker", "warn", "%s cannot be examined by this user" % path,
                      "run cgnetns-show --check as root")]
    if not stat.S_ISSOCK(st.st_mode):
        return [Check("broker", "fail", "%s is not a socket" % path,
                      "remove it and restart cgnetnsd")]
    if st.st_uid != 0 or stat.S_IMODE(st.st_mode) & 0o666 != 0o666:
        return [Check("broker", "fail", "%s is owned by uid %d, mode %04o: it must be root's "
                      "and mode 0666, or builds cannot connect to it"
                      % (path, st.st_uid, stat.S_IMODE(st.st_mode)),
                      "restart cgnetnsd (it makes the socket 0666; so does cgnetnsd.socket)")]
    from ..broker import encode_request
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(encode_request(BROKER_PROBE_NAME))
        answer = b""
        while b"\n" not in answer and len(answer) < 4096:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    except socket.timeout:
        return [Check("broker", "fail", "cgnetnsd accepts on %s but does not answer within "
                      "%g s" % (path, timeout),
                      "look at cgnetnsd's log; restart it")]
    except OSError as e:
        return [Check("broker", "fail", "cgnetnsd does not answer on %s: %s"
                      % (path, e.strerror or e),
                      "restart cgnetnsd (a stale socket is left when it died)")]
    finally:
        s.close()
    line = answer.split(b"\n", 1)[0].decode("ascii", errors="replace")
    if not line.startswith("refuse "):
        return [Check("broker", "fail", "cgnetnsd on %s gave no answer to a request (%s): its "
                      "helper (cgnetnsd --helper, default %s) failed"
                      % (path, _printable(line) or "connection closed", HELPER),
                      "look at cgnetnsd's log (one line per request)")]
    return [Check("broker", "ok", "cgnetnsd answers on %s" % path)]


def check_debris(run_dir=resolve.RUN_DIR, proc="/proc"):
    from ..gc import inventory
    if not resolve.can_read_trusted_xattrs(proc):
        return [Check("debris", "warn", "cannot look for the debris of dead runs without root",
                      "run cgnetns-show --check as root")]
    found = inventory(run_dir=run_dir, proc=proc)
    dead = [f for f in found if not f.live]
    live = len(found) - len(dead)
    if dead:
        return [Check("debris", "warn", "%d build%s left by runs that died (%s); %d live"
                      % (len(dead), "" if len(dead) == 1 else "s",
                         ", ".join(f.id or f.cgroup for f in dead[:3])
                         + (", ..." if len(dead) > 3 else ""), live), "run cgnetns-gc")]
    return [Check("debris", "ok", "nothing left by dead runs; %d live build%s"
                  % (live, "" if live == 1 else "s"))]


def check_python():
    missing = []
    for mod in ("psutil", "pyroute2"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        return [Check("python", "warn", "Python modules missing for %s: %s"
                      % (sys.executable, ", ".join(missing)),
                      "make install (it installs them with pip)")]
    return [Check("python", "ok", "Python %s at %s with psutil and pyroute2"
                  % (sys.version.split()[0], sys.executable))]


def host_checks(*, helper=None, front=None, allow_list=resolve.ALLOW_LIST,
                sys_cgroup=cgroups.SYS_CGROUP,
                run_dir=resolve.RUN_DIR, proc="/proc", broker_socket=BROKER_SOCKET,
                systemd_rundir=cgroups.SYSTEMD_RUNDIR):
    """Every check of ``cgnetns-show --check``, as a list of :class:`Check`."""
    checks = []
    checks += check_helper(helper)
    checks += check_front(front, helper, broker_socket)
    checks += check_allow_list(allow_list)
    checks += check_cgroups(sys_cgroup, proc, systemd_rundir)
    checks += check_run_dir(run_dir)
    checks += check_kernel(sys_cgroup)
    checks += check_broker(broker_socket)
    checks += check_python()
    checks += [Check(*c) for c in _egress.check(sys_cgroup)]
    checks += [Check(*c) for c in _portage.check(sys_cgroup)]  # make.conf (contrib/portage)
    try:
        checks += check_debris(run_dir, proc)
    except CgnetnsError as e:
        checks.append(Check("debris", "warn", e.message, e.hint or "run cgnetns-gc --dry-run"))
    return checks


def format_checks(checks, width=WIDTH):
    out = []
    for c in checks:
        lines = textwrap.wrap("%-18s %s" % (c.name, c.message), width=width - 6,
                              subsequent_indent=" " * 19, break_on_hyphens=False) or [""]
        out.append("%-5s %s" % (c.status, lines[0]))
        out += ["      " + x for x in lines[1:]]
        if c.fix:
            out += textwrap.wrap("fix: " + c.fix, width=width, initial_indent=" " * 25,
                                 subsequent_indent=" " * 30, break_on_hyphens=False)
    fails = sum(c.status == "fail" for c in checks)
    warns = sum(c.status == "warn" for c in checks)
    out.append("%d checks: %d failed, %d warnings" % (len(checks), fails, warns))
    return out


# ------------------------------------------------------------------ main

def _dump(doc):
    json.dump(doc, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def run(argv):
    args = build_parser().parse_args(argv)
    width = _width()
    if args.pid is not None and (args.all or args.check):
        raise CgnetnsError("PID cannot be combined with --all or --check",
                           "see cgnetns-show --help", status=EXIT_USAGE)
    if args.check:
        checks = host_checks()
        failed = any(c.status == "fail" for c in checks)
        if args.json:
            _dump({"version": 1, "checks": [c.to_dict() for c in checks],
                   "failed": sum(c.status == "fail" for c in checks),
                   "warnings": sum(c.status == "warn" for c in checks)})
        else:
            _emit(format_checks(checks, width))
        return 1 if failed else 0
    if args.all:
        from ..gc import inventory
        cgroups.find_cgroup2()  # no cgroup2: one line, status 125
        now = time.time()
        builds = [f.to_dict(now) for f in inventory(members=True)]
        if args.json:
            _dump({"version": 1, "builds": builds})
        else:
            _emit(format_builds(builds, width))
        return 0
    pid = _pid(args.pid) if args.pid is not None else None
    d = resolve.explain(pid).to_dict()
    d["egress"] = egress_of(d)
    if args.json:
        _dump(d)
    else:
        _emit(format_explanation(d, width))
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run_main(PROG, run, argv, debug="--debug" in argv)
    except BrokenPipeError:  # e.g. | head: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
