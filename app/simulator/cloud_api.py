"""The cloud forms of the same two APIs: Azure OpenAI deployments and Vertex AI, plus the
OAuth2 token endpoint a Google service account talks to.

- Azure: `POST /openai/deployments/{deployment}/images/{edits|generations}?api-version=...`
  with header `api-key` (a Bearer header is not accepted here); the body is OpenAI's (multipart
  or JSON for edits, JSON for generations). Without
  `api-version` Azure answers 404 "Resource not found".
- Vertex express (API key): `POST /{v1|v1beta1}/publishers/google/models/{id}:generateContent`,
  header `x-goog-api-key`. Service account: `.../projects/{p}/locations/{l}/publishers/google/
  models/{id}:generateContent` with `Authorization: Bearer <token from POST /token>`; a key there
  is refused with 401 as Google does. Vertex requires `contents[].role`.
- `POST /token`: the JWT-bearer grant (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`,
  `assertion=<JWT>`): the assertion's claims are checked (issuer, scope, audience), not its
  signature (the simulator has no public key); tokens live `token_lifetime_s` (/_sim/config).
"""

from __future__ import annotations

import base64
import secrets
import time
from typing import Any
from urllib.parse import parse_qs

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.simulator import gemini_api, openai_api
from app.simulator.common import SimContext, begin_record, read_body, record_status
from app.simulator.errors import SimError, google_error, json_response, openai_error

GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


def _azure_auth(request: Request) -> None:
    if not request.headers.get("api-key"):
        raise openai_error(
            401,
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
            "provide a valid key for an active subscription and use a correct regional API "
            "endpoint for your resource.",
            code="401",
        )
    if request.headers["api-key"] in ("sk-sim-invalid", "sim-invalid"):
        raise openai_error(401, "Access denied due to invalid subscription key.", code="401")


def _express_auth(request: Request) -> None:
    if request.headers.get("authorization"):
        raise google_error(401, "Request had invalid authentication credentials.")
    gemini_api._auth(request)


def _bearer_auth(state: Any) -> Any:
    def check(request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if request.headers.get("x-goog-api-key") or request.query_params.get("key"):
            raise google_error(
                401,
                "API keys are not supported by this API. Expected OAuth2 access token or other "
                "authentication credentials that assert a principal.",
                grpc_status="UNAUTHENTICATED",
            )
        expiry = state.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if expiry is None or expiry <= time.time():
            raise google_error(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access token.",
                grpc_status="UNAUTHENTICATED",
            )

    return check


def _claims(assertion: str) -> dict[str, Any]:
    try:
        payload = assertion.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def routes(ctx: SimContext) -> list[Route]:
    state = ctx.state

    async def azure_edits(request: Request) -> Response:
        return await azure(request, generation=False)

    async def azure_generations(request: Request) -> Response:
        return await azure(request, generation=True)

    async def azure(request: Request, *, generation: bool) -> Response:
        record = begin_record(request, state, "azure-openai")
        try:
            if not request.query_params.get("api-version"):
                raise openai_error(404, "Resource not found", code="404")
            response = await openai_api.handle_edit(
                request, ctx, record, _azure_auth, generation=generation
            )
        except SimError as exc:
            response = exc.to_response()
        record_status(record, response)
        response.headers["apim-request-id"] = secrets.token_hex(16)
        return response

    async def vertex(request: Request) -> Response:
        record = begin_record(request, state, "vertex")
        model_id, _, method = request.path_params["model_action"].rpartition(":")
        method = method.split("?", 1)[0]
        projects = "project" in request.path_params
        auth = _bearer_auth(state) if projects else _express_auth
        try:
            response = await gemini_api.handle_generate(
                request, ctx, record, model_id, method, auth, vertex=True
            )
        except SimError as exc:
            response = exc.to_response()
        record_status(record, response)
        return response

    async def token(request: Request) -> Response:
        record = begin_record(request, state, "oauth2")
        form = parse_qs(((await read_body(request, 64 * 1024)) or b"").decode("utf-8", "replace"))
        grant = form.get("grant_type", [""])[0]
        claims = _claims(form.get("assertion", [""])[0])
        ok = (
            grant == "urn:ietf:params:oauth:grant-type:jwt-bearer"
            and claims.get("aud") == GOOGLE_TOKEN_AUDIENCE
            and isinstance(claims.get("iss"), str)
            and CLOUD_PLATFORM in str(claims.get("scope", "")).split()
        )
        if not ok:
            record["status"] = 400
            return json_response(
                {"error": "invalid_grant", "error_description": "Invalid JWT assertion."}, 400
            )
        access = "ya29.sim-" + secrets.token_urlsafe(24)
        state.tokens[access] = time.time() + state.token_lifetime_s
        record["status"] = 200
        return json_response(
            {"access_token": access, "expires_in": state.token_lifetime_s, "token_type": "Bearer"}
        )

    vertex_paths = [
        f"/{version}{prefix}/publishers/google/models/{{model_action}}"
        for version in ("v1", "v1beta1")
        for prefix in ("", "/projects/{project}/locations/{location}")
    ]
    return [
        Route("/openai/deployments/{deployment}/images/edits", azure_edits, methods=["POST"]),
        Route(
            "/openai/deployments/{deployment}/images/generations",
            azure_generations,
            methods=["POST"],
        ),
        *(Route(path, vertex, methods=["POST"]) for path in vertex_paths),
        Route("/token", token, methods=["POST"]),
    ]
