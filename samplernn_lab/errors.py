"""The one exception type for mistakes a user can make (bad files, bad settings)."""

from __future__ import annotations


class LabError(Exception):
    """A problem with the user's input, with a message that names the file and the problem.

    The CLI prints it on one line and exits non-zero; any other exception is a bug.
    """
