"""The one error type a user can cause: printed as one sentence, exit code 2."""


class UserError(Exception):
    """A mistake in what the user gave us (a file, a flag, a missing download).

    The message is one sentence that names the input and the fix; the CLI prints
    it without a traceback and exits with code 2.
    """
