"""The one exception type that reaches the user as a one-line message."""


class UserError(Exception):
    """Bad input from the user (a file, an option): printed as one line, exit status 1.

    The message names the file or option and says what to do.
    """
