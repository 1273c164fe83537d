"""The helper's parsers and the Python ones agree, case by case
(tests/parser_cases.py).  No root needed: `make check-unit`."""

import os
import subprocess
import tempfile

import pytest

from cgnetns import allowlist, cgroups, tags
from cgnetns.errors import TagFormatError

from parser_cases import ALLOW_CASES, CGROUP_CASES, TAG_CASES

pytestmark = pytest.mark.unit

HELPER_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "helper")


@pytest.fixture(scope="module")
def parsecheck():
    """helper/testsupport/parsecheck.c over helper/parse.c, built with the
    host's compiler as whoever runs the tests."""
    with tempfile.TemporaryDirectory(prefix="cgnetns-parsecheck-") as d:
        exe = os.path.join(d, "parsecheck")
        subprocess.run(["gcc", "-std=gnu11", "-O1", "-Wall", "-Werror", "-I", HELPER_SRC,
                        "-o", exe, os.path.join(HELPER_SRC, "testsupport", "parsecheck.c"),
                        os.path.join(HELPER_SRC, "parse.c")], check=True)

        def check(*args, data):
            path = os.path.join(d, "input")
            with open(path, "wb") as f:
                f.write(data)
            r = subprocess.run([exe] + list(args) + [path], capture_output=True, timeout=30)
            assert r.returncode == 0, r.stderr
            return r.stdout.decode(errors="replace").rstrip("\n")
        yield check


def py_cgroup(data):
    state, path = cgroups.parse_cgroup_file(data)
    return "OK " + path.decode() if state == "OK" else state


def py_tag(data):
    try:
        t = tags.parse_tag(data)
    except TagFormatError as e:
        return "VERSION" if "format version" in e.message else "BAD"
    return "OK %s %d %d %d" % (t.pin, t.dev, t.ino, t.nsid)


def py_allow(program, data):
    state, x = allowlist.lookup(data, program)
    if state == "OK":
        return "OK " + x.decode()
    return "BAD %d" % x if state == "BAD" else "NONE"


@pytest.mark.parametrize("data,want", CGROUP_CASES)
def test_cgroup_file(parsecheck, data, want):
    assert parsecheck("cgroup", data=data) == want
    assert py_cgroup(data) == want


@pytest.mark.parametrize("data,want", TAG_CASES)
def test_tag(parsecheck, data, want):
    assert parsecheck("tag", data=data) == want
    assert py_tag(data) == want


@pytest.mark.parametrize("program,data,want", ALLOW_CASES)
def test_allow_list(parsecheck, program, data, want):
    assert parsecheck("allow", program, data=data) == want
    assert py_allow(program, data) == want
