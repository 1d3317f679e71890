"""robustmnist: how MNIST ConvNets read thin and thick pens, and how to make them read both."""

__version__ = "0.1.0"


class RobustMnistError(Exception):
    """A user-facing error: the message names the thing at fault and the fix (one line)."""
