"""One exception type for bad input: the CLI prints its message as a single line and exits 2.

It deliberately is not a ValueError: tyro turns ValueErrors raised in a config's `__post_init__` into
a multi-line box; a MasklamError passes through tyro to `masklam.cli.main`, which prints one line.
"""


class MasklamError(Exception):
    """Bad input or state the user can fix (missing file, unknown task, bad config value, ...).

    The message must name the problem in one line, e.g. ``"no such file: data/x.h5"``.
    """
