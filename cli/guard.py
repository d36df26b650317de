"""How the programs end: user errors as one `error: ...` line and exit status 2, Ctrl-C as 130."""

import sys

from devices import distributed
from errors import UserError


def one_line(exc: BaseException) -> str:
    """The user-facing line of an error (DataLoader workers wrap it in their traceback)."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    last = lines[-1].strip()
    prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else (lines[0] if len(lines) == 1 else last)


def run_guarded(main, argv=None) -> int:
    """Run `main`, turning user errors into `error: ...` on one line and exit status 2."""
    try:
        main(argv)
    except UserError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"interrupted{': ' + str(exc) if str(exc) else ''}", file=sys.stderr)
        return 130
    distributed.cleanup()
    return 0
