"""One exception type for bad input: the CLI prints its message as a single line and exits 2."""


class MasklamError(ValueError):
    """Bad input or state the user can fix (missing file, unknown task, bad config value, ...).

    The message must name the problem in one line, e.g. ``"no such file: data/x.h5"``.
    """
