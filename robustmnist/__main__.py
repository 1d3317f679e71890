"""``python -m robustmnist``: the same CLI as the ``robustmnist`` command."""

from robustmnist.cli import app

if __name__ == "__main__":
    app(prog_name="robustmnist")
