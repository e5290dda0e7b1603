"""The one exception type that reaches the user as a one-line message."""


class UserError(Exception):
    """Bad input from the user (a file, an option): printed as one line, exit status 1.

    The message names the file or option and says what to do.
    """


def one_line(error: BaseException) -> str:
    """The message of `error` as one line. A `UserError` raised in a DataLoader worker comes
    back to the main process with the worker's traceback in its message; its last line is the
    original message."""
    text = str(error).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        prefix = f"{type(error).__module__}.{type(error).__name__}: "
        text = last[len(prefix):] if last.startswith(prefix) else last
    return text.splitlines()[0] if text else type(error).__name__
