"""Command-line front ends: each ``main(argv) -> int`` prints, the library raises."""

import sys

from ..errors import CgnetnsError, EXIT_SETUP


def run_main(prog, func, argv, debug=False):
    """Call FUNC(argv); turn CgnetnsError and unexpected errors into one line."""
    try:
        return func(argv)
    except CgnetnsError as e:
        if debug:
            raise
        sys.stderr.write("%s: %s\n" % (prog, e.line()))
        return e.status
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        if debug:
            raise
        sys.stderr.write("%s: %s (use --debug for details)\n" % (prog, e))
        return EXIT_SETUP
