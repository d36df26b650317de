"""The JSON API and the page of tools/serve.py, on FastAPI (served by uvicorn).

    GET /                     the page (serving/page.html: one static file, no build step, offline)
    GET /api/health           always 200 while up: status ok (index, checkpoint hash, count, what the index
                              records) or refused / unavailable with the reason
    GET /api/search?q=&k=&rerank_k=       two-stage text-to-image search (= retrieve.py text)
    GET /api/captions?id=&k=              captions of --captions ranked for an image (= retrieve.py image)
    GET /api/explain?q=&id=[&gen=]        what the head saw for (caption, image)
    GET /api/image/{id}[?size=full][&gen=]  the thumbnail (cached) or the index's own file

Every route also answers HEAD. A query parameter a route does not take is a 400 that names it. Every
error is JSON {"error": one line} with a 4xx status, or 503 when the server's own storage fails (the
index is being replaced, the thumbnail cache cannot be made); a route with a trailing slash is a 404.
"""

import logging
import os

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException

from errors import first_line
from .service import LIMITS, Refused, Service

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page.html")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def known_parameters(request: Request):
    """A misspelt parameter (kk=5, ids=3) is refused, not silently answered with the default."""
    route = request.scope.get("route")
    known = {field.alias for field in route.dependant.query_params} if route is not None else set()
    for name in request.query_params:
        if name not in known:
            takes = ", ".join(sorted(known)) or "none"
            raise Refused(f"{name}: not a parameter of {request.url.path} (it takes {takes})")


def create_app(service: Service) -> FastAPI:
    # no /docs: its page loads scripts from a CDN, and this server works offline; no redirect of
    # /api/search/ to /api/search (an empty 307): every answer is the route's or a JSON error
    app = FastAPI(title="dimmatch retrieval", docs_url=None, redoc_url=None, openapi_url=None,
                  redirect_slashes=False, dependencies=[Depends(known_parameters)])
    get = lambda path: app.api_route(path, methods=["GET", "HEAD"])  # noqa: E731  (HEAD: probes, curl -I)

    @app.middleware("http")
    async def cap_requests(request: Request, call_next):
        """Only GET (and HEAD) with a small body: nothing here reads one."""
        if request.method not in ("GET", "HEAD"):
            return _error(405, f"{request.method} is not served here; every route is GET")
        length = request.headers.get("content-length")
        if "chunked" in request.headers.get("transfer-encoding", "").lower() or (
                length is not None and (not length.isdigit() or int(length) > LIMITS["body_bytes"])):
            return _error(413, f"request body over {LIMITS['body_bytes']} bytes; the API takes its parameters in "
                               "the query string")
        return await call_next(request)

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused):
        return _error(exc.status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problem = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in problem.get("loc", ())[1:]) or "request"
        return _error(400, f"{where}: {problem.get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception):       # a bug: still JSON, one line, and logged
        logging.getLogger("serve").exception("%s %s failed", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}: {first_line(exc)}); see the server's log")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        message = "no such page or API route (see /api/health)" if exc.status_code == 404 else str(exc.detail)
        return _error(exc.status_code, message)

    @get("/")
    def page():
        return FileResponse(PAGE, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})

    @get("/api/health")
    def health():
        return service.health()

    @get("/api/search")
    def search(q: str, k: int = 10, rerank_k: int = 100):
        return service.search(q, k, rerank_k)

    @get("/api/captions")
    def captions(id: int, k: int = 10):  # noqa: A002  (the API's name)
        return service.captions_for(id, k)

    @get("/api/explain")
    def explain(q: str, id: int, gen: str | None = None):  # noqa: A002
        return service.explain(q, id, gen)

    @get("/api/image/{id}")
    def image(id: int, size: str = "thumb", gen: str | None = None):  # noqa: A002
        if size not in ("thumb", "full"):
            raise Refused(f"size must be thumb or full (got {size!r})")
        path, media = service.image(id, size == "full", gen)
        return FileResponse(path, media_type=media, headers={"Cache-Control": "private, max-age=60"})

    return app
