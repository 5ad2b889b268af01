"""``python -m onnxprune`` and the ``onnxprune`` console command.

The signal handlers are installed before the CLI module (and numpy, onnx behind it) is
imported, so a Ctrl-C or SIGTERM during start-up also ends as one ``error:`` line.
"""

from onnxprune import signals


def run() -> None:
    """Install the signal handlers, then import and run the CLI."""
    signals.install()
    try:
        from onnxprune.cli import main
    except signals.Interrupted as exc:
        signals.exit_on(exc)
    try:
        main()
    except signals.Interrupted as exc:  # in the last instant, after main's own handling
        signals.exit_on(exc)
    finally:
        signals.hold()  # exiting now: a late signal must not print a traceback


if __name__ == "__main__":
    run()
