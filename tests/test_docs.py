"""README.rst and the design docs render without docutils warnings."""

import os

import docutils.core
import docutils.utils
import pytest

from conftest import REPO


@pytest.mark.parametrize("name", ["README.rst", "doc/FORMAT.rst", "doc/BROKER.rst"])
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
