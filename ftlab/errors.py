"""The one exception type for mistakes a researcher can fix (config, data, incompatible parts).

`ftlab.cli.main` prints it as a single sentence and exits with status 2, without a traceback.
Anything else that escapes is a bug in ftlab or a library and keeps its traceback.
"""


class FTLabError(Exception):
    """A user error: the message is one sentence naming the file, row or key at fault."""
