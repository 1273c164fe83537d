"""README.rst and the design docs render without docutils warnings."""

import os

import docutils.core
import docutils.utils
import pytest

pytestmark = pytest.mark.unit

from conftest import REPO


@pytest.mark.parametrize("name", ["README.rst", "doc/FORMAT.rst", "doc/BROKER.rst",
                                  "doc/THREATS.rst", "doc/ARCHITECTURE.rst"])
def test_rst_renders_cleanly(name):
    with open(os.path.join(REPO, name)) as f:
        text = f.read()
    docutils.core.publish_string(text, writer_name="null",
                                 settings_overrides={"halt_level": 2, "report_level": 2})


def test_readme_gives_exactly_two_setup_commands():
    with open(os.path.join(REPO, "README.rst")) as f:
        text = f.read()
    section = text.split("Quick start\n===========\n", 1)[1]
    block = section.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    lines = [ln.strip() for ln in block.splitlines() if ln.strip()]
    assert [ln.split("#")[0].strip() for ln in lines] == ["make install demo", "make check"]


def test_threats_name_only_tests_that_exist():
    """doc/THREATS.rst maps each item to tests: every name it gives exists."""
    import re
    with open(os.path.join(REPO, "doc", "THREATS.rst")) as f:
        text = f.read()
    sources = ""
    tdir = os.path.join(REPO, "tests")
    for name in os.listdir(tdir):
        if name.endswith(".py"):
            with open(os.path.join(tdir, name)) as f:
                sources += f.read()
    files = set(re.findall(r"``(test_\w+\.py)``", text))
    assert files and all(os.path.exists(os.path.join(tdir, n)) for n in files), files
    names = re.findall(r"``(?:test_\w+\.py::)?(test_\w+?)(?:_\*)?``", text)
    assert len(names) > 30
    for n in names:
        if n.endswith(".py") or n in ("test_helper_threats", "test_broker"):
            continue
        prefix = "def " + n
        assert prefix in sources, "doc/THREATS.rst names %s, which no test defines" % n
