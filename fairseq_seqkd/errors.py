"""The one exception type for mistakes a user can fix (bad file, mismatched cache, ...)."""


class UserError(Exception):
    """A problem with the user's input: the message names the file and what to do."""
