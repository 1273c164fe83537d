"""``python3 -m testbed.demo`` (``make demo``): a sandboxed build that still
compiles on a remote distcc server.

It makes a throwaway "remote host" (a network namespace with a real distccd,
see ``testbed.topology``), builds a small C project inside
``cgnetns-run --unshare-net --user nobody`` with ``CC='cgnetns-exec distcc gcc'``,
and shows from distccd's own log that every object was compiled there, while
the build itself had no network: in the same build ``ip -o link`` lists only
``lo`` and a direct TCP connect to the same server fails.

Run as root after ``make install``.  On Debian it installs distcc when it is
missing; it adds distcc to /etc/cgnetns/allow when it is not there (and says
so).  ``--debug`` shows a traceback on failure; otherwise a failure is one
line and exit status 1.
"""

import argparse
import os
import pwd
import shutil
import subprocess
import sys
import tempfile

from cgnetns import paths
from .topology import SYSTEM_PATH, DISTCC_PORT, Topology, TopologyError

ALLOW_PATH = paths.ALLOW_PATH
BUILD_USER = "nobody"


class DemoError(Exception):
    """One line saying what failed."""


# -- the C project (also used by the tests) ---------------------------------

def write_project(path, nfiles=8, owner=None, cc_default="cc"):
    """Write a C project of ``nfiles`` library files plus main.c and a Makefile.

    Returns the list of object file names ``make`` builds.  ``owner`` is a
    user name that gets the directory and files (the build user must be able
    to write its objects there).
    """
    os.makedirs(path, exist_ok=True)
    names = [f"part{i:02d}" for i in range(nfiles)]
    files = {"common.h": "\n".join([
        "#ifndef COMMON_H",
        "#define COMMON_H",
        "#include <stdio.h>",
        "#define SCALE 3",
        *[f"int {n}(int x);" for n in names],
        "#endif",
        "",
    ])}
    for i, n in enumerate(names):
        files[f"{n}.c"] = (f'#include "common.h"\n'
                           f"int {n}(int x)\n{{\n    return x * SCALE + {i};\n}}\n")
    files["main.c"] = "\n".join([
        '#include "common.h"',
        "int main(void)",
        "{",
        "    long sum = 0;",
        *[f"    sum += {n}({i});" for i, n in enumerate(names)],
        '    printf("sum=%ld\\n", sum);',
        "    return 0;",
        "}",
        "",
    ])
    objs = [f"{n}.o" for n in names] + ["main.o"]
    files["Makefile"] = "\n".join([
        f"CC ?= {cc_default}",
        "CFLAGS ?= -O2",
        "OBJS = " + " ".join(objs),
        "",
        "prog: $(OBJS)",
        "\t$(CC) -o $@ $(OBJS)",
        "",
        "%.o: %.c common.h",
        "\t$(CC) $(CFLAGS) -c $< -o $@",
        "",
        "clean:",
        "\trm -f prog $(OBJS)",
        "",
        ".PHONY: clean",
        "",
    ])
    for name, text in files.items():
        with open(os.path.join(path, name), "w") as f:
            f.write(text)
    if owner is not None:
        pw = pwd.getpwnam(owner)
        for name in [".", *files]:
            os.chown(os.path.join(path, name), pw.pw_uid, pw.pw_gid)
    return objs


# -- steps ------------------------------------------------------------------

def say(msg=""):
    print(msg, flush=True)


def find_tool(name):
    return shutil.which(name, path=os.pathsep.join(
        [os.environ.get("PATH", ""), SYSTEM_PATH]))


def ensure_distcc():
    missing = [n for n in ("distcc", "distccd") if not find_tool(n)]
    if not missing:
        return
    if not find_tool("apt-get"):
        raise DemoError("distcc is not installed: install your distribution's "
                        "'distcc' package (client and distccd server) and run the demo again")
    say("  distcc is missing; installing Debian's package: apt-get install -y distcc")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    rc = subprocess.run(["apt-get", "install", "-y", "-q", "distcc"], env=env,
                        stdout=subprocess.DEVNULL).returncode
    if rc != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        rc = subprocess.run(["apt-get", "install", "-y", "-q", "distcc"], env=env,
                            stdout=subprocess.DEVNULL).returncode
    if rc != 0 or not find_tool("distcc") or not find_tool("distccd"):
        raise DemoError("apt-get install distcc failed")


def read_allow(path=ALLOW_PATH):
    try:
        with open(path) as f:
            return [l.split("#", 1)[0].strip() for l in f]
    except FileNotFoundError:
        return None


def ensure_allowed(program, path=ALLOW_PATH):
    """Add ``program`` (its real path) to the allow list; True when added."""
    real = os.path.realpath(program)
    entries = read_allow(path)
    if entries is not None and real in entries:
        return False
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    if entries is None:
        with open(path, "w") as f:
            f.write("# cgnetns allow list: programs cgnetns-exec may run in a build's\n"
                    "# approved network namespace; one absolute path a line.\n")
        os.chmod(path, 0o644)
    with open(path, "a") as f:
        f.write(real + "\n")
    return True


def make_build_script(path, remote_addr, port, jobs, cc):
    """The command the sandboxed build runs: make, then two network probes."""
    script = os.path.join(path, "build.sh")
    with open(script, "w") as f:
        f.write("\n".join([
            "#!/bin/sh",
            "# Runs inside cgnetns-run --unshare-net --user nobody.",
            "set -e",
            f"make -j{jobs} CC='{cc}'",
            "./prog > run.txt",
            "ip -o link > links.txt",
            "# The same server, without cgnetns-exec: must fail (no network here).",
            f"if bash -c 'exec 3<>/dev/tcp/{remote_addr}/{port}' 2> connect.txt; then",
            "    echo CONNECTED >> connect.txt",
            "fi",
            "",
        ]))
    os.chmod(script, 0o755)
    return script


def run_demo(nfiles=8, jobs=4, keep=False):
    if os.geteuid() != 0:
        raise DemoError("run the demo as root (it makes a network namespace and a build cgroup)")
    say("cgnetns demo: a build without network whose distcc still reaches its server.")
    say()
    say("1. Checking what is installed")
    run_cmd = find_tool("cgnetns-run")
    exec_cmd = find_tool("cgnetns-exec")
    if not run_cmd or not exec_cmd:
        raise DemoError("cgnetns-run/cgnetns-exec not found on PATH: run 'make install' first")
    ensure_distcc()
    distcc = find_tool("distcc")
    say(f"   cgnetns-run: {run_cmd}; cgnetns-exec: {exec_cmd}; distcc: {os.path.realpath(distcc)}")
    if ensure_allowed(distcc):
        say(f"   added {os.path.realpath(distcc)} to {ALLOW_PATH} (cgnetns-exec runs only "
            "programs listed there)")
    else:
        say(f"   {os.path.realpath(distcc)} is in {ALLOW_PATH}")

    workdir = tempfile.mkdtemp(prefix="cgnetns-demo-")
    try:
        pw = pwd.getpwnam(BUILD_USER)
        os.chmod(workdir, 0o755)
        src = os.path.join(workdir, "src")
        distcc_dir = os.path.join(workdir, "distcc")
        os.mkdir(distcc_dir, 0o755)
        os.chown(distcc_dir, pw.pw_uid, pw.pw_gid)
        objs = write_project(src, nfiles, owner=BUILD_USER)
        say()
        say(f"2. Wrote a C project of {len(objs)} source files to {src} (owned by {BUILD_USER})")

        say()
        say("3. Starting a 'remote host': a network namespace with a real distccd,")
        say("   joined to this host by a veth pair whose addresses exist nowhere else")
        with Topology(client_user=BUILD_USER) as topo:
            say(f"   distccd listens on {topo.remote_addr}:{DISTCC_PORT} "
                f"(namespace {topo.netns})")
            cc = f"{exec_cmd} distcc gcc"
            script = make_build_script(src, topo.remote_addr, DISTCC_PORT, jobs, cc)
            env = {
                "PATH": SYSTEM_PATH, "HOME": src, "LANG": "C", "TMPDIR": "/tmp",
                **topo.distcc_env(distcc_dir),
            }
            say()
            say("4. Building inside the sandbox:")
            say(f"   cgnetns-run --unshare-net --user {BUILD_USER} -- make -j{jobs} CC='{cc}'")
            say(f"   with DISTCC_HOSTS={env['DISTCC_HOSTS']}, DISTCC_FALLBACK=0 (no silent local "
                "compiles)")
            proc = subprocess.run([run_cmd, "--unshare-net", "--user", BUILD_USER,
                                   "--name", "demo", "--", script],
                                  cwd=src, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=600)
            for line in proc.stdout.splitlines():
                say("   | " + line)
            if proc.returncode != 0:
                raise DemoError(f"the sandboxed build failed (exit {proc.returncode}); "
                                "its output is above")
            missing = [o for o in objs if not os.path.exists(os.path.join(src, o))]
            if missing:
                raise DemoError(f"objects missing after the build: {' '.join(missing)}")

            say()
            say("5. What distccd on the remote host says (its log, COMPILE_OK lines):")
            compiled = topo.compile_ok_sources()
            for name in compiled:
                say(f"   compiled remotely: {os.path.basename(name)}")
            if len(compiled) != len(objs):
                raise DemoError(f"distccd compiled {len(compiled)} of {len(objs)} objects "
                                "remotely; expected all")
            say(f"   all {len(objs)} objects were compiled on the remote host")

            say()
            say("6. And the build itself had no network:")
            with open(os.path.join(src, "links.txt")) as f:
                links = [l.split(":")[1].strip() for l in f if l.strip()]
            say(f"   ip -o link inside the build: {', '.join(links)}")
            with open(os.path.join(src, "connect.txt")) as f:
                connect = f.read().strip()
            if links != ["lo"]:
                raise DemoError(f"the build saw interfaces {links}; expected only lo")
            if "CONNECTED" in connect:
                raise DemoError("a direct connection from the build reached distccd: "
                                "the build was not sandboxed")
            reason = connect.splitlines()[-1] if connect else "failed"
            say(f"   direct TCP connect to {topo.remote_addr}:{DISTCC_PORT} from the build: "
                f"{reason.split(': ')[-1]}")
            with open(os.path.join(src, "run.txt")) as f:
                say(f"   the program built runs: {f.read().strip()}")
        say()
        say("7. Stopped the remote host and removed its namespace and files.")
        say("Demo passed: every object was compiled remotely by a build that had no network.")
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python3 -m testbed.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=8, help="C files to build (default 8)")
    p.add_argument("--jobs", type=int, default=4, help="make -j (default 4)")
    p.add_argument("--keep", action="store_true", help="keep the project directory")
    p.add_argument("--debug", action="store_true", help="show a traceback on failure")
    args = p.parse_args(argv)
    try:
        run_demo(args.files, args.jobs, args.keep)
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130
    except (DemoError, TopologyError, OSError, subprocess.SubprocessError) as e:
        if args.debug:
            raise
        print(f"demo: FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
