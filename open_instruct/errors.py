"""User-facing errors: one line, naming the field, file or row, raised before heavy work."""


class UserError(Exception):
    """A problem with the user's input (config, data, recipe, reward). The CLI prints it as
    one line (`error: ...`) and exits with status 2, without a traceback."""


class ConfigError(UserError):
    """A bad config or recipe key/value."""


class DataError(UserError):
    """A bad data file, row or column."""


class Interrupted(Exception):
    """Ctrl-C during a run: the message says where it stopped and how to resume (the CLI prints it as
    one line and exits 130, the shell's code for SIGINT)."""
