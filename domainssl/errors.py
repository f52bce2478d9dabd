"""The one exception type for mistakes a user can fix (bad path, bad config, bad data)."""


class DomainSSLError(Exception):
    """A problem with the user's input: the message names the thing and the fix.

    The CLI prints the message alone (no traceback) and exits with code 2.
    """


class SkippedInputsWarning(UserWarning):
    """Unreadable files of a folder were skipped (the message lists them, one per line)."""
