"""The one exception type that means "the user gave us something we cannot use".

The CLI prints it as a single ``error: ...`` line and exits with status 2; every other exception is a
bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: a missing file, a wrong option, inputs that do not fit together.

    The message is one line that names the file or option and says what to do.
    """
