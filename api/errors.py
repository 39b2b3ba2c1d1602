"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pagebatch.jobs.errors import OUTAGE_ERRORS, ErrorKind, JobError

STATUS_OF_KIND: dict[ErrorKind, int] = {
    ErrorKind.INVALID: 400, ErrorKind.NOT_FOUND: 404, ErrorKind.CONFLICT: 409, ErrorKind.TOO_LARGE: 413,
    ErrorKind.QUOTA: 429, ErrorKind.UNAVAILABLE: 503,
}
RETRY_AFTER_S = "5"


class APIError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = status, message, code, param, type


class BodyTooLarge(Exception):
    """Raised while a request body streams in, once it passes the limit (api/limits.py)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes)
        self.max_bytes = max_bytes


def too_large_response(max_bytes: int) -> JSONResponse:
    return error_response(413, f"request body larger than {max_bytes} bytes", code="file_too_large")


def not_found(kind: str, object_id: str) -> APIError:
    return APIError(404, f"No such {kind} object: {object_id}", code="not_found", param="id")


def error_response(status: int, message: str, *, code: str | None = None, param: str | None = None,
                   type: str = "invalid_request_error", headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return error_response(e.status, e.message, code=e.code, param=e.param, type=e.type, headers=headers)

    @app.exception_handler(JobError)
    async def _job_error(_: Request, e: JobError) -> JSONResponse:
        status = STATUS_OF_KIND[e.kind]
        code = e.code or ("not_found" if e.kind == ErrorKind.NOT_FOUND else None)
        if e.kind == ErrorKind.UNAVAILABLE:
            return error_response(status, e.message, code=code, type="server_error",
                                  headers={"Retry-After": RETRY_AFTER_S})
        if e.kind == ErrorKind.QUOTA:  # OpenAI's shape for a quota: 429, type insufficient_quota
            return error_response(status, e.message, param=e.param, code=code, type="insufficient_quota")
        return error_response(status, e.message, param=e.param, code=code)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return error_response(400, f"{param or 'request'}: {first.get('msg', 'invalid request')}", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        if isinstance(e.__cause__, BodyTooLarge):  # FastAPI turns errors while reading a body into a 400
            return too_large_response(e.__cause__.max_bytes)
        return error_response(e.status_code, str(e.detail))

    async def _outage(_: Request, e: Exception) -> JSONResponse:
        return error_response(503, "a storage or state service is briefly unavailable; retry shortly",
                              type="server_error", headers={"Retry-After": RETRY_AFTER_S})

    for outage in OUTAGE_ERRORS:
        app.add_exception_handler(outage, _outage)
