"""The commands of ``igcam-fast``: the outermost wing of the package.

Each command is one module (or package) with ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args)``, listed in :data:`igcam_fast.commands.cli.COMMANDS`. A command reports a user's
mistake by raising :class:`CommandError`; ``cli.main`` prints it as one line,
``igcam-fast <command>: error: ...``, and exits with status 2. Nothing outside this folder
imports it: commands call the library, and each other's functions, never argv strings.
"""


class CommandError(Exception):
    """A mistake in what the user asked for, shown as one line (exit status 2), never a traceback."""


def run_with_argv(command, argv=None):
    """Parse ``argv`` with a command module's own arguments and run it: ``igcam-fast <command> ARGS``
    without the process (what tests and scripts that drive one command use)."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"igcam-fast {command.NAME}", description=command.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv))
