"""The one exception rnnlm raises for bad input: its message says what was wrong and what to do."""


class RnnlmError(ValueError):
    """A user-facing error; the CLI prints its message as one line and exits 2."""
