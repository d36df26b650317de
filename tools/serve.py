"""Serve an index of tools/retrieve.py as a local web page and a JSON API (the same two-stage search).

    python tools/serve.py --index photos.index                       # http://127.0.0.1:8000/
    python tools/serve.py --index feats.index --captions caps.txt    # also: captions for an image
    python tools/serve.py --index photos.index --host 0.0.0.0        # reachable from other machines (says so)

The page (one static HTML file, offline) takes a caption and shows the top K images of the index
after re-ranking the first stage's top --rerank_k by the head, each with its score, its rank in the
first stage and after re-ranking and the time each stage took, and for a result what the head saw:
the regions the caption's words attended to most (boxes drawn when the index has them) and the part
of the score from each level or dimension group. The API is JSON (see serving/app.py). The server
keeps one model in memory, binds 127.0.0.1 unless --host says otherwise, and serves only the image
files that the index records.
"""

import contextlib
import ipaddress
import os
import signal
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cli.guard import run_guarded  # noqa: E402
from cli.logs import setup_logging  # noqa: E402
from config.parsers import Parser  # noqa: E402
from errors import ConfigError, Stopped  # noqa: E402

GRACE_SECONDS = 30      # in-flight requests get this long to finish after SIGINT / SIGTERM


def resolve_host(host: str) -> str:
    """--host as an IP address: a name (localhost) is resolved, its first address used."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0]
    except (OSError, IndexError):
        raise ConfigError(f"--host {host} is neither an IP address nor a name this machine resolves") from None


def check_inputs(args) -> None:
    """The files named on the command line, checked before the port is taken, so that a busy port
    never hides a wrong --index and every message says what is wrong with which file."""
    index = args.index.rstrip("/") or args.index
    if not os.path.exists(index):
        raise ConfigError(f"--index {index} does not exist (an index is the folder tools/retrieve.py index wrote)")
    if not os.path.isdir(index):
        raise ConfigError(f"--index {index} is a file, not an index folder (the folder tools/retrieve.py index wrote)")
    if not os.path.exists(os.path.join(index, "index.json")):
        raise ConfigError(f"--index {index} is not an index folder (no index.json; "
                          f"{'it is empty' if not os.listdir(index) else 'it holds other files'})")
    for option in ("checkpoint", "shortlist", "captions"):
        path = getattr(args, option)
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"--{option} {path} " + ("is a folder, not a file" if os.path.isdir(path)
                                                       else "does not exist"))


class Server:
    """uvicorn's server (`server`, a uvicorn.Server listening on `sock`), stopped the same way by
    SIGINT (Ctrl-C) and SIGTERM: no new connections, in-flight requests finished (for at most
    GRACE_SECONDS), then exit 128 + the signal as the project's stopped commands do (130, 143), with
    one line; uvicorn itself re-raised the signal, which killed the process silently on SIGTERM."""

    def __init__(self, server, sock):
        self.sock, self.stopped_by = sock, None
        self.server = server
        self.server.capture_signals = self.capture_signals

    @contextlib.contextmanager
    def capture_signals(self):
        def stop(signum, frame):
            self.stopped_by = self.stopped_by or signum
            self.server.should_exit = True
        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def run(self):
        self.server.run(sockets=[self.sock])
        if self.stopped_by:
            raise Stopped(self.stopped_by, "the server finished its in-flight requests and stopped")


def address(host: str, port: int) -> str:
    """The URL to open here: 0.0.0.0 / :: listen everywhere but are no address, so loopback is given."""
    if ipaddress.ip_address(host).is_unspecified:
        host = "::1" if ":" in host else "127.0.0.1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, so that a port in use is one line before the model is loaded."""
    host = resolve_host(host)
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it a keep-alive client waits 40 ms (Nagle + delayed ACK) for every response's body
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror or exc}); another server "
                          "there? choose another --port") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def main(argv=None):
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", required=True, help="an index folder written by tools/retrieve.py index")
    parser.add_argument("--checkpoint", default=None,
                        help="the index's checkpoint, if it has moved (its content must be the same)")
    parser.add_argument("--shortlist", default=None, help="the index's --shortlist checkpoint, if it has moved")
    parser.add_argument("--captions", default=None, help="one caption a line: ranked for an image of the index")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--thumbnails", default=None, help="the thumbnail cache folder [INDEX.thumbs]")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535 (got {args.port})")
    if args.batch_size < 1:
        raise ConfigError(f"--batch_size must be at least 1 (got {args.batch_size})")
    if os.path.abspath(args.thumbnails or "").startswith(os.path.abspath(args.index.rstrip("/")) + os.sep):
        raise ConfigError(f"--thumbnails {args.thumbnails} lies inside --index {args.index}, which holds only the "
                          "index's own files; put it elsewhere")
    check_inputs(args)
    setup_logging()
    # uvicorn and FastAPI (requirements-extra.txt), torch and the model code: only once the inputs hold
    import uvicorn
    from devices import resolve_device
    from serving.app import create_app
    from serving.service import Service
    sock = bind(args.host, args.port)
    service = Service(args.index, args.checkpoint, args.shortlist, args.captions, resolve_device(args.device),
                      args.batch_size, args.thumbnails)
    host, port = sock.getsockname()[:2]
    if not ipaddress.ip_address(resolve_host(args.host)).is_loopback:
        print(f"warning: --host {args.host}: the page and API are reachable from other machines on port {port}, "
              "without authentication", file=sys.stderr)
    print(f"serving {args.index} ({len(service.current().index)} images) on {address(host, port)} ; Ctrl-C stops",
          flush=True)
    config = uvicorn.Config(create_app(service), log_level="warning", access_log=False, limit_concurrency=256,
                            timeout_keep_alive=5, timeout_graceful_shutdown=GRACE_SECONDS)
    Server(uvicorn.Server(config), sock).run()


if __name__ == "__main__":
    sys.exit(run_guarded(main))
