"""Errors that end an audit with exit code 2 and a one-line message."""


class AuditorInputError(Exception):
    """The user's input (a file, an option, a data set) cannot be used.

    The message is shown to the user as one line, so it names the file and what is wrong.
    """


class UnsafeModelError(AuditorInputError):
    """A model file would run code or reach outside its folder if loaded."""
