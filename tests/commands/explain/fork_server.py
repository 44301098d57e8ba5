"""A process that imports the command once and forks a fresh process for each run asked of it.

The fault-injection test kills runs with SIGKILL many times; starting Python and importing torch
for each run would cost seconds, a fork costs milliseconds. This server never runs a model
itself (no OpenMP thread pool exists when it forks), so each child is like a fresh process.

Protocol (one line each way): ``run {"argv": [...], "env": {...}, "stderr": PATH}`` -> child pid;
``wait PID`` -> its return code (negative: killed by that signal).
"""

import json
import os
import sys


def _child(request) -> None:
    os.setsid()  # its own process group: the test kills the run with its DataLoader workers
    os.environ.update(request.get("env", {}))
    err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(err, 2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    sys.stderr = os.fdopen(2, "w", buffering=1, errors="backslashreplace")
    code = 1
    try:
        from igcam_fast.commands.cli import main

        code = main(request["argv"]) or 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    import igcam_fast.commands.cli  # noqa: F401  (import torch and the command once, before any fork)
    import igcam_fast.commands.explain  # noqa: F401

    print("ready", flush=True)
    for line in sys.stdin:
        verb, _, rest = line.strip().partition(" ")
        if verb == "run":
            pid = os.fork()
            if pid == 0:
                _child(json.loads(rest))
            print(pid, flush=True)
        elif verb == "wait":
            _, status = os.waitpid(int(rest), 0)
            print(os.waitstatus_to_exitcode(status), flush=True)


if __name__ == "__main__":
    serve()
