"""Exceptions that mean "the user asked for something that cannot work": shown as one line, no traceback."""


class UserError(Exception):
    """A problem the user can fix (bad argument, port in use, missing file); the message says what to do."""
