"""cgnetns-run with a fault point: ``python tests/fault_run.py POINT ARG...``.

The crash-recovery tests (test_gc.py, test_crash.py) need cgnetns-run to die
by SIGKILL at a chosen point of making or removing a build
(cgnetns.build.Build's ``fault=`` argument: after-record, after-cgroup,
after-pin, after-tag, teardown).  The hook lives here, in the tests, so that
the library reads none: this script makes every Build it creates fault at
POINT, then runs cgnetns-run's own main() with the remaining arguments.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cgnetns import build  # noqa: E402
from cgnetns.cli import run  # noqa: E402


def main(argv):
    point, rest = argv[1], argv[2:]
    init = build.Build.__init__

    def faulting(self, *a, **kw):
        kw["fault"] = point
        init(self, *a, **kw)
    build.Build.__init__ = faulting
    return run.main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
