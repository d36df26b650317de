"""How the programs end: user errors as one `error: ...` line and exit status 2; a run stopped by
a signal after its checkpoint with 128 + the signal number (SIGINT 130, SIGTERM 143, SIGUSR1 138)."""

import signal
import sys

from devices import distributed
from errors import Stopped, UserError, first_line


def run_guarded(main, argv=None) -> int:
    """Run `main`, turning user errors into `error: ...` on one line and exit status 2."""
    try:
        main(argv)
    except UserError as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2
    except Stopped as exc:
        if distributed.is_main_process():      # under torchrun, one line for the run, not one per rank
            print(f"stopped by {signal.Signals(exc.signum).name}: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt as exc:
        print(f"interrupted{': ' + str(exc) if str(exc) else ''}", file=sys.stderr)
        return 130
    distributed.cleanup()
    return 0
