"""How the programs end: user errors as one `error: ...` line and exit status 2; a run stopped by
a signal after its checkpoint with 128 + the signal number (SIGINT 130, SIGTERM 143, SIGUSR1 138)."""

import os
import signal
import sys

from errors import Stopped, UserError, first_line


def _main_process() -> bool:
    """Rank 0 under torchrun (or no torchrun): the one process that reports for the run. Read from
    the environment, which holds before the process group is joined and before torch is imported."""
    return os.environ.get("RANK", "0") == "0"


def _cleanup() -> None:
    """Leave the process group, if the program got as far as joining one."""
    distributed = sys.modules.get("devices.distributed")
    if distributed is not None:
        distributed.cleanup()


def run_guarded(main, argv=None) -> int:
    """Run `main`, turning user errors into `error: ...` on one line and exit status 2."""
    try:
        main(argv)
    except UserError as exc:
        if _main_process():                    # under torchrun, one line for the run, not one per rank
            print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2
    except Stopped as exc:
        if _main_process():
            print(f"stopped by {signal.Signals(exc.signum).name}: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt as exc:
        print(f"interrupted{': ' + str(exc) if str(exc) else ''}", file=sys.stderr)
        return 130
    _cleanup()
    return 0

