"""``python -m robustmnist`` and the ``robustmnist`` command: the CLI (`robustmnist.cli`)."""

import sys


def main() -> None:
    """Start the CLI. Ctrl-C while it loads (importing PyTorch takes a few seconds) exits 130
    with one line, as it does once a command runs, not with an import traceback."""
    try:
        from robustmnist.cli import app
    except KeyboardInterrupt:
        sys.stderr.write("interrupted while starting: nothing was run or written\n")
        raise SystemExit(130) from None
    app(prog_name="robustmnist")


if __name__ == "__main__":
    main()
