"""Errors raised by the cgnetns library.

Library code raises :class:`CgnetnsError` (or a subclass) with a message that
names the problem and a hint that names the fix; command-line code turns it into
one line on stderr and the documented exit status.  Nothing here prints.
"""

# Exit statuses shared by the commands (documented in README.rst and the
# manual pages).
EXIT_USAGE = 2          # bad command line
EXIT_SETUP = 125        # cgnetns itself failed or refused; nothing was run
EXIT_NOEXEC = 126       # the command exists but cannot be executed
EXIT_NOTFOUND = 127     # the command was not found


class CgnetnsError(Exception):
    """A failure that a user can act on: ``message`` says what, ``hint`` says how."""

    status = EXIT_SETUP

    def __init__(self, message, hint=None, status=None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if status is not None:
            self.status = status

    def line(self):
        """The one-line form for a command's stderr."""
        if self.hint:
            return "%s; %s" % (self.message, self.hint)
        return self.message


class NoCgroup2Error(CgnetnsError):
    """The host has no cgroup2 hierarchy mounted where cgnetns looks."""


class PlacementError(CgnetnsError):
    """There is no place where cgnetns may create a build cgroup."""


class TagFormatError(CgnetnsError):
    """A tag value that does not parse, or has an unknown format version."""


class PinError(CgnetnsError):
    """A pin could not be made, or is missing, or does not match its tag."""
