"""Serving's own errors, so that serving/ needs nothing from the training side (see docs/architecture.md).

`ServerError` is a user mistake with a known fix (a bad flag, config file or server setup): the CLI and
`moat-model-server` print it as one line and exit with status 2. Request errors that carry a TF Serving status
code are `moatkit.serving.tensors.ServingError`, a subclass.
"""


class ServerError(Exception):
    def __init__(self, message: str, *, fix: str = ""):
        super().__init__(f"{message} — {fix}" if fix else message)
        self.message, self.fix = message, fix


class ServingConfigError(ServerError):
    """A model config, batching, monitoring or logging config file is invalid."""
