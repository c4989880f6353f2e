"""Errors raised on bad input. Every one is a `ValueError`, so `except ValueError` catches them all."""


class CSDValueError(ValueError):
    """Bad argument: the message names the argument and what was expected."""


class MissingFileError(FileNotFoundError, CSDValueError):
    """A file argument (e.g. a bigram table) does not exist."""
