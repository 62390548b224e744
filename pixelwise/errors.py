"""The one exception type a user sees: one sentence naming the file, the value and the fix."""


class PixelwiseError(Exception):
    """A problem with the user's input (a file, a value, a config) that the user can fix.

    The CLI prints ``str(error)`` without a traceback and exits with status 2; library callers can
    catch it like any exception. The message must name what was wrong and how to fix it.
    """
