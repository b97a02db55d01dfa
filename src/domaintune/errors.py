"""User-facing errors: one line (file, line, what is wrong, how to fix), exit code 2, no traceback.

Everything a user can get wrong (a missing file, a bad recipe key, an unknown format) raises
`UserError`; the CLI prints `str(err)` and exits with `EXIT_USER_ERROR`.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake in the user's input, reported as one line.

    Args:
        message: what is wrong.
        file: the file it is in, if any.
        line: the 1-based line in that file, if known.
        hint: how to fix it.

    Example:
        >>> str(UserError("unknown key 'lr'", file="r.yaml", line=3, hint="use 'train.learning_rate'"))
        "r.yaml:3: unknown key 'lr' (fix: use 'train.learning_rate')"
    """

    def __init__(self, message: str, file: str | None = None, line: int | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.hint = hint

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        fix = f" (fix: {self.hint})" if self.hint else ""
        # One line, always: newlines inside a message would break log parsers and the promise.
        return (where + self.message + fix).replace("\n", " ")
