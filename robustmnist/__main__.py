"""``python -m robustmnist``: the same CLI as the ``robustmnist`` command."""

from robustmnist.cli import app

app(prog_name="robustmnist")
