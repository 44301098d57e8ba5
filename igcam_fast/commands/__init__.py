"""The commands of ``igcam-fast``: the outermost wing of the package.

Each command is one module (or package) with ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args)``, listed in :data:`igcam_fast.commands.cli.COMMANDS`. A command reports a user's
mistake by raising :class:`CommandError`; ``cli.main`` prints it as one line,
``igcam-fast <command>: error: ...``, and exits with status 2. Nothing outside this folder
imports it: commands call the library, and each other's functions, never argv strings.
"""


class CommandError(Exception):
    """A mistake in what the user asked for, shown as one line (exit status 2), never a traceback."""
