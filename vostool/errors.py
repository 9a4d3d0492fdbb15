"""User-facing errors.

Anything a user can cause (a wrong path, a bad mask, a missing checkpoint) raises
:class:`VostoolError` with a one-line message; the CLI prints it on stderr and exits
non-zero, never with a traceback.
"""


class VostoolError(Exception):
    """An error whose message is meant for the user, on one line."""

    exit_code: int = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
