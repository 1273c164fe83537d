"""Where cgnetns is installed: the one place Python reads its paths from.

``make install`` writes ``cgnetns/_paths.py`` from the same variables that it
compiles into the helper (PREFIX, BINDIR, LIBDIR, SYSCONFDIR; helper/Makefile),
so that the broker starts the helper the build installed, wherever that is.
Without it (a checkout used in place) the defaults below are ``make install``'s
own defaults.
"""

PREFIX = "/usr/local"
BINDIR = PREFIX + "/bin"
PKGLIBDIR = PREFIX + "/lib/cgnetns"
SYSCONFDIR = "/etc"
RUN_DIR = "/run/cgnetns"

try:  # written by make install; see the module docstring
    from ._paths import *  # noqa: F401,F403
except ImportError:
    pass

HELPER = PKGLIBDIR + "/cgnetns-helper"        # set-user-ID root, static
FRONT = BINDIR + "/cgnetns-exec"               # what builds call
MASQ_DIR = PKGLIBDIR + "/masq"
MASQ_BIN_DIR = PKGLIBDIR + "/bin"
ALLOW_PATH = SYSCONFDIR + "/cgnetns/allow"
PINS_DIR = RUN_DIR + "/pins"
BROKER_SOCKET = RUN_DIR + "/cgnetnsd.sock"
BROKER_LOCK = RUN_DIR + "/cgnetnsd.lock"
EGRESS_PATH = SYSCONFDIR + "/cgnetns/egress"  # the egress policy (cgnetns/egress.py)
