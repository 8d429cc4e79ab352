"""The one exception type for mistakes a user can make (bad data, bad flags, bad run folders).

The CLI prints its message as a single line on stderr and exits with status 2; the Python API lets
it propagate. Everything else is a bug and keeps its traceback.
"""


class VaekitError(Exception):
    """A user-caused problem; the message names the problem and what to do about it."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived outside the training loop (which checkpoints first); the CLI exits 143."""
