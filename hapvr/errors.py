"""The error a user can fix.

Library code raises :class:`InputError` (a ``ValueError``) when what it was handed cannot be used:
a missing or damaged file, a folder without videos, a setting out of range. The message names
the thing and says what to do; ``argument`` names the parameter at fault when there is one
(``videos``, ``features``, ``dim``), so the command-line tools can print it as the option the
user typed (``error: --videos DIR: no such folder ...``, :func:`hapvr.cli.run_main`) and Python
callers read the message alone.
"""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a long job; the message says what was kept and how to continue."""


class InputError(ValueError):
    """What the caller handed in cannot be used; the message names it and what to do."""

    def __init__(self, message: str, argument: str | None = None):
        super().__init__(message)
        self.argument = argument
