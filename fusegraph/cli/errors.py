"""The one exception the console script turns into a one-line message and exit code 2."""
from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user (unknown preset, broken factory, unwritable path, bad option).

    ``main()`` prints ``fusegraph: error: <message>`` on stderr and exits with code 2, with no
    traceback: the message alone must say what was wrong and what to do.
    """


EXIT_OK = 0
EXIT_CHECK_FAILED = 1   # the command ran and found a problem (shortfall with --strict, out of tolerance)
EXIT_USAGE = 2
