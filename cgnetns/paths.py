"""Where cgnetns is installed: the one place Python reads its paths from.

Every path is named once, in the checkout's ``paths.mk``.  ``make install``
(with PREFIX, DESTDIR, SYSCONFDIR, ... as given) compiles those values into
the helper and the front (``-D``, helper/Makefile), substitutes them into the
units, scripts and manual pages it installs, and writes them into
``cgnetns/_paths.py`` beside this module, which is what is read here; so the
broker starts the helper that the same install compiled, wherever that is.
A checkout used in place that was never installed reads ``paths.mk`` itself.
An installed package without ``_paths.py`` is an install error and says so
rather than guessing (a packager that installs the package itself runs
``make python-paths PREFIX=... SYSCONFDIR=...`` first).
"""

import os
import re

_MAKE_LINE = re.compile(r"^([A-Z_]+)\s*[?:]?=\s*(.*?)\s*$")
_REF = re.compile(r"\$\(([A-Z_]+)\)")
_CHECKOUT_MK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "paths.mk")


def read_paths_mk(path, given=None):
    """{NAME: value} of the plain ``NAME ?= VALUE`` lines of paths.mk, with
    ``$(NAME)`` references expanded; GIVEN ({NAME: value}) wins over the file,
    as variables given to make do."""
    raw = {}
    with open(path) as f:
        for line in f:
            m = _MAKE_LINE.match(line.split("#", 1)[0])
            if m and "$(" not in _REF.sub("", m.group(2)):
                raw.setdefault(m.group(1), m.group(2))
    given = dict(given or {})

    def expand(name, seen=()):
        if name in given:
            return given[name]
        if name in seen or name not in raw:
            raise ImportError("%s: cannot expand $(%s)" % (path, name))
        return _REF.sub(lambda m: expand(m.group(1), seen + (name,)), raw[name])
    return {name: expand(name) for name in set(raw) | set(given)}


def _values():
    """_paths.py's values; in a checkout, paths.mk's defaults for what it lacks."""
    try:  # written by make install; see the module docstring
        from . import _paths
        given = {k: v for k, v in vars(_paths).items() if k.isupper()}
    except ImportError:
        given = None
    if os.path.exists(_CHECKOUT_MK):
        return read_paths_mk(_CHECKOUT_MK, given)
    if given is None:
        raise ImportError("cgnetns is installed without cgnetns/_paths.py: install it with "
                          "`make install` (or run `make python-paths PREFIX=... SYSCONFDIR=...` "
                          "before packaging it)")
    return given


_v = _values()
PREFIX = _v["PREFIX"]
BINDIR = _v["BINDIR"]
PKGLIBDIR = _v["PKGLIBDIR"]
SYSCONFDIR = _v["SYSCONFDIR"]
RUN_DIR = _v["RUNDIR"]
HELPER = _v["HELPER_PATH"]          # set-user-ID root, static
FRONT = _v["FRONT_PATH"]            # what builds call
MASQ_DIR = _v["MASQDIR"]
MASQ_BIN_DIR = _v["MASQBINDIR"]
ALLOW_PATH = _v["ALLOW_PATH"]       # compiled into the helper
PINS_DIR = _v["PINS_DIR"]           # compiled into the helper
BROKER_SOCKET = _v["BROKER_SOCKET"]  # compiled into the helper and the front
BROKER_LOCK = RUN_DIR + "/cgnetnsd.lock"
BROKER_LOG = RUN_DIR + "/cgnetnsd.log"      # an auto-started broker's stderr
del _v
EGRESS_PATH = SYSCONFDIR + "/cgnetns/egress"  # the egress policy (cgnetns/egress.py)
