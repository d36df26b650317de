"""Console and log-file output of the programs."""

import logging
import os
import sys

logger = logging.getLogger("dimmatch")


class _StartupBuffer(logging.Handler):
    """Keeps the records of a run's start until its log file may be created (after every check)."""

    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def setup_logging(log_file: str | None = None, main_process: bool = True, buffer: bool = False) -> None:
    """INFO messages of dimmatch on stdout (main process only) and in an optional log file; with
    `buffer`, also kept in memory for `attach_log_file`.

    Only the `dimmatch` logger is configured: the root logger, and whatever a host program
    or test harness attached to it, is left alone."""
    for handler in getattr(logger, "_dimmatch_handlers", []):
        logger.removeHandler(handler)
        handler.close()
    handlers = []
    if main_process:
        handlers.append(logging.StreamHandler(sys.stdout))
        if log_file:
            os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
            handlers.append(logging.FileHandler(log_file))
        if buffer:
            handlers.append(_StartupBuffer())
    formatter = logging.Formatter("%(asctime)s %(message)s")
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger._dimmatch_handlers = handlers
    logger.setLevel(logging.INFO if main_process else logging.WARNING)
    # transformers is chatty about unused weights of the hub checkpoints we load on purpose; imported
    # here, as it is slow to import and the tools' command lines import this module before any work
    from transformers.utils import logging as transformers_logging
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def attach_log_file(log_file: str) -> None:
    """Log to `log_file` from now on, starting with the records buffered since `setup_logging`."""
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    for buffered in [h for h in logger._dimmatch_handlers if isinstance(h, _StartupBuffer)]:
        for record in buffered.records:
            handler.emit(record)
        logger.removeHandler(buffered)
        logger._dimmatch_handlers.remove(buffered)
    logger.addHandler(handler)
    logger._dimmatch_handlers.append(handler)
