"""Manual pages: every command has one in doc/man/, written in
reStructuredText; they build with docutils' rst2man without a warning;
``make install`` (through doc/Makefile) installs them into man8; and each
command's --help agrees with its page.

The --help test is parametrized over the commands that exist when the tests
are collected: a Python command whose module (cgnetns.cli.*) exists, and
cgnetns-exec when its front is installed (cgnetns.paths.FRONT) or built
(helper/build); the set-user-ID helper it executes (cgnetns.paths.HELPER)
answers --help as the front does, and is documented in cgnetns-exec(8) too.
A command that does not exist yet therefore has no test case (visible in the
test ids), rather than a skipped one;
test_the_commands_that_must_exist_do fails if one of those that this tree
already has disappears, and test_every_command_has_a_page covers all five
pages regardless.
"""

import importlib.util
import os
import re
import shutil

import pytest

from cgnetns import paths

from conftest import PY, REPO, repo_env, run

MAN = os.path.join(REPO, "doc", "man")
# cgnetns-exec: the front builds call (installed, or built in the checkout).
HELPER_BINARIES = [paths.FRONT, os.path.join(REPO, "helper", "build", "cgnetns-exec")]
# The set-user-ID helper the front executes (installed, or built).
SETUID_HELPERS = [paths.HELPER, os.path.join(REPO, "helper", "build", "cgnetns-helper")]
# command -> its Python module (None: the C helper)
COMMANDS = {
    "cgnetns-run": "cgnetns.cli.run",
    "cgnetns-show": "cgnetns.cli.show",
    "cgnetns-gc": "cgnetns.cli.gc",
    "cgnetnsd": "cgnetns.cli.broker",
    "cgnetns-exec": None,
}
OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][A-Za-z0-9-]*)")


def _helper():
    for path in HELPER_BINARIES:
        if os.path.exists(path):
            return path
    return None


def existing_commands():
    out = []
    for name, mod in COMMANDS.items():
        if mod is None:
            if _helper():
                out.append(name)
        elif importlib.util.find_spec(mod) is not None:
            out.append(name)
    return out


def help_text(name):
    mod = COMMANDS[name]
    argv = [_helper(), "--help"] if mod is None else [PY, "-m", mod, "--help"]
    r = run(argv, env=repo_env())
    # argparse prints to stdout and exits 0; cgnetns-exec has no options and
    # refuses --help with its usage line on stderr.
    return (r.stdout + r.stderr).decode()


def page(name):
    with open(os.path.join(MAN, name + ".8.rst")) as f:
        return f.read()


def section(text, title):
    m = re.search(r"^%s\n=+\n(.*?)(?=^[A-Z][A-Z ]+\n=+\n|\Z)" % re.escape(title), text,
                  re.M | re.S)
    assert m, "no %s section" % title
    return m.group(1)


def test_every_command_has_a_page():
    for name in COMMANDS:
        text = page(name)
        assert text.startswith("=" * len(name) + "\n" + name + "\n"), name
        assert ":Manual section: 8" in text
        for title in ("SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "SEE ALSO"):
            assert re.search(r"^%s\n=+$" % title, text, re.M), (name, title)


def test_the_commands_that_must_exist_do():
    assert {"cgnetns-run", "cgnetns-show", "cgnetns-gc"} <= set(existing_commands())


@pytest.mark.parametrize("name", existing_commands())
def test_help_agrees_with_the_page(name):
    text = page(name)
    helped = set(OPTION.findall(help_text(name)))
    assert helped, "no option found in %s --help" % name
    missing = sorted(o for o in helped
                     if not re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(o), text))
    assert not missing, "%s --help has options its page lacks: %s" % (name, missing)
    documented = set(re.findall(r"\*\*(--?[A-Za-z][\w-]*)\*\*", section(text, "OPTIONS")))
    extra = sorted(documented - helped)
    assert not extra, "%s(8) documents options --help lacks: %s" % (name, extra)


@pytest.mark.parametrize("binary", [b for b in SETUID_HELPERS if os.path.exists(b)])
def test_helper_help_agrees_with_the_exec_page(binary):
    """The helper refuses --help as the front does, and cgnetns-exec(8) names
    it, where it is installed, and its --supervise mode (cgnetnsd's)."""
    r = run([binary, "--help"], env=repo_env())
    text = (r.stdout + r.stderr).decode()
    assert r.returncode == 125 and "usage: cgnetns-exec" in text, text
    helped = set(OPTION.findall(text))
    assert helped == set(OPTION.findall(help_text("cgnetns-exec"))), text
    exec_page = page("cgnetns-exec")
    for word in (paths.HELPER, paths.FRONT, "--supervise"):
        assert word in exec_page, word
    assert "--supervise" in page("cgnetnsd") and paths.HELPER in page("cgnetnsd")


def _rst2man():
    for cmd in ("rst2man", "rst2man.py"):
        if shutil.which(cmd):
            return [cmd]
    return [PY, "-m", "docutils", "--writer=manpage"]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_page_builds_without_warnings(name, tmp_path):
    out = tmp_path / (name + ".8")
    r = run(_rst2man() + ["--halt=warning", "--report=warning", os.path.join(MAN, name + ".8.rst"),
                          str(out)])
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    roff = out.read_text()
    assert re.search(r'^\.TH "?%s"? "?8"?' % re.escape(name.upper()), roff, re.M | re.I), roff[:400]
    if shutil.which("man"):
        m = run(["man", "--warnings", "-l", str(out)], env=dict(os.environ, MANWIDTH="100"))
        assert m.returncode == 0, m.stderr
        assert m.stderr.strip() == b"", m.stderr  # groff had nothing to complain about
        plain = re.sub(rb".\x08", b"", m.stdout)  # no overstrike (bold, underline)
        assert b"SYNOPSIS" in plain and name.encode() in plain


def test_make_install_installs_every_page(tmp_path):
    # The top Makefile's install-man (part of `make install`) calls doc/Makefile.
    dest = tmp_path / "root"
    r = run(["make", "-s", "install-man", "DESTDIR=%s" % dest, "MANDIR=/usr/local/share/man"],
            cwd=REPO)
    assert r.returncode == 0, r.stderr
    man8 = dest / "usr" / "local" / "share" / "man" / "man8"
    assert sorted(os.listdir(man8)) == sorted(n + ".8" for n in COMMANDS)
    for n in COMMANDS:
        assert (man8 / (n + ".8")).stat().st_mode & 0o777 == 0o644
    # Built pages stay in doc/man (ignored by git): a `make install` running at
    # the same time may be installing them.
    r = run(["make", "-C", os.path.join(REPO, "doc")])
    assert r.returncode == 0 and b"rst2man" not in r.stdout, r.stdout  # up to date
