"""Stop signals while outputs are written: they unwind the block, so that nothing half-written is left."""

import contextlib
import signal

from errors import Stopped


@contextlib.contextmanager
def stop_signals_unwind(what: str):
    """SIGTERM, SIGHUP and SIGUSR1 raise Stopped inside the block, so that its `finally` clauses
    remove what it left half-written (their default action ends the process where it stands); the
    program then exits with 128 + the signal number, saying `what` was not written."""
    def stop(signum, _frame):
        raise Stopped(signum, f"{what} was not written; nothing half-written is left")
    signals = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)
    previous = {signum: signal.signal(signum, stop) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
