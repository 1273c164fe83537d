"""Command-line front ends: each ``main(argv) -> int`` prints, the library raises."""

import argparse
import sys

from ..errors import CgnetnsError, EXIT_SETUP, EXIT_USAGE


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line and status 2 (run_main)."""

    def error(self, message):
        raise CgnetnsError(message, "see %s --help" % self.prog, status=EXIT_USAGE)


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
