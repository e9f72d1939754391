"""The project's error types: what went wrong decides the exit code, not the message text.

Library code (farm, inference, deploy's service) raises these; only the command line turns them into
exit codes (bad input: 2, runtime failure: 1). Both stay subclasses of the builtin they refine, so
callers that catch `ValueError` / `RuntimeError` keep working.
"""

from __future__ import annotations

__all__ = ["FarmError", "FarmInputError", "FarmRuntimeError"]


class FarmInputError(ValueError):
    """Bad input from the user (a value, a file, a store that cannot be used as given): exit code 2.

    The message is one line that names the bad value and what is allowed.
    """


class FarmRuntimeError(RuntimeError):
    """Work that could not finish although its input was fine: exit code 1.

    A lost cluster or a full disk, for example.

    The message says how to resume; completed work stays on disk.
    """


class FarmError(FarmRuntimeError):
    """A simulation run that cannot finish; completed chunks stay flagged and a re-run resumes."""
