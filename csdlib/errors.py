"""The error contract: every bad input raises `CSDValueError` (a `ValueError`) or `MissingFileError` (a
`FileNotFoundError` and a `CSDValueError`), whose message starts with the argument it is about (e.g.
``k_matrix[1][0]: ...``, ``data_dir: ...``, ``--methods: ...``). `except ValueError` catches them all;
`csd` prints them as one line (``csd run: error: ...``) and exits with status 2."""


class CSDValueError(ValueError):
    """Bad argument: the message names the argument and what was expected."""


class MissingFileError(FileNotFoundError, CSDValueError):
    """A file argument (e.g. a bigram table) does not exist."""
