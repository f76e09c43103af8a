"""The one exception type that user mistakes raise.

A ``UserError`` carries a single line that names the problem and the fix. The CLI prints it
without a traceback and exits with status 2; library callers can catch it like any exception.
"""


class UserError(Exception):
    """Bad input from the user (config, data files, experiment names): one line, actionable."""
