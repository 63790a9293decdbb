"""Error values the simulator answers with, shaped exactly like each upstream's.

Handlers raise :class:`SimError`; the app turns it into a response. Keeping the body builders
here means the OpenAI and Gemini modules, the fault injector and the prompt directives all
produce byte-for-byte the same envelopes the real services do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import orjson
from starlette.responses import Response

#: gRPC canonical status names Google uses in `error.status`, by HTTP code.
GOOGLE_STATUS_BY_HTTP: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

GOOGLE_DEFAULT_MESSAGES: dict[int, str] = {
    400: "Request contains an invalid argument.",
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    429: "Resource has been exhausted (e.g. check quota).",
    500: (
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting"
    ),
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}

#: (type, code, message) OpenAI uses for a bare status, by HTTP code.
OPENAI_DEFAULTS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", None, "Not found."),
    409: ("invalid_request_error", None, "Conflict."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for images per min. Limit: 5, Used: 5, Requested: 1. "
        "Please try again in 1s.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    504: ("server_error", None, "Gateway timeout."),
}


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """orjson-encoded JSON response (the simulator sits on the benchmark's hot path)."""
    response = Response(orjson.dumps(body), status_code=status, media_type="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


class SimError(Exception):
    """An error answer: status, JSON (or raw text) body and extra headers."""

    def __init__(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status}: {body!r}"[:200])
        self.status = status
        self.body = body
        self.headers = dict(headers or {})

    def to_response(self) -> Response:
        if isinstance(self.body, str | bytes):
            response = Response(self.body, status_code=self.status, media_type="text/plain")
            for name, value in self.headers.items():
                response.headers[name] = value
            return response
        return json_response(self.body, self.status, self.headers)


def openai_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """OpenAI `ErrorResponse`: `{"error": {"message", "type", "param", "code"}}`."""
    return {"error": {"message": message, "type": type, "param": param, "code": code, **extra}}


def openai_error(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> SimError:
    return SimError(
        status, openai_body(message, type=type, param=param, code=code, **extra), headers
    )


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> SimError:
    """The everyday OpenAI 400 `invalid_request_error`."""
    return openai_error(400, message, param=param, code=code)


def google_body(
    status: int, message: str, *, grpc_status: str | None = None, details: list[Any] | None = None
) -> dict[str, Any]:
    """Google API error: `{"error": {"code", "message", "status"[, "details"]}}`."""
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": grpc_status or GOOGLE_STATUS_BY_HTTP.get(status, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return {"error": error}


def google_error(
    status: int,
    message: str,
    *,
    grpc_status: str | None = None,
    details: list[Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> SimError:
    return SimError(
        status, google_body(status, message, grpc_status=grpc_status, details=details), headers
    )


def invalid_argument(message: str, violations: list[tuple[str, str]] | None = None) -> SimError:
    """Gemini 400 INVALID_ARGUMENT, with `google.rpc.BadRequest` field violations if known."""
    details = None
    if violations:
        details = [
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [
                    {"field": field, "description": desc} if field else {"description": desc}
                    for field, desc in violations
                ],
            }
        ]
    return google_error(400, message, details=details)


class SimulatedDisconnect(httpx.RemoteProtocolError):
    """Raised to drop a connection without a complete answer.

    Under uvicorn the response head is already sent, so uvicorn just closes the socket and the
    client sees a truncated response. Under `httpx.ASGITransport` the exception propagates to the
    caller; because it *is* an `httpx.RemoteProtocolError`, an in-process gateway test sees
    exactly what a real dropped connection would raise.
    """

    def __init__(self) -> None:
        super().__init__("simulated upstream disconnect: connection closed without an answer")
