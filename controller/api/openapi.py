"""What the OpenAPI document declares beyond the routes themselves: the bearer
schemes, the refusals each endpoint can answer with, and the docs page served from
files installed with the package, so the docs work where no CDN is reachable."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPBearer
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from controller.api.schemas import ErrorBody, Outcome

# Declared through FastAPI so the spec carries them; ``auto_error=False`` because the
# API answers a missing token itself, with its own message and WWW-Authenticate.
API_TOKEN = HTTPBearer(
    auto_error=False,
    scheme_name="apiToken",
    description="A token from CANARY_API_TOKENS; its role (viewer < operator < admin) "
    "decides what it may do.",
)
ALERTMANAGER_TOKEN = HTTPBearer(
    auto_error=False,
    scheme_name="alertmanagerToken",
    description="CANARY_ALERTMANAGER_TOKEN: the webhook's own token, not an API token.",
)

_REFUSALS: dict[int, str] = {
    401: "Missing or invalid token (WWW-Authenticate: Bearer)",
    403: "The token's role is too small for this",
    404: "No such rollout, plan or incident",
    409: "Refused by the rollout's state, or in conflict with another rollout",
    413: "Request body larger than CANARY_API_MAX_BODY_BYTES",
    422: "Bad input; each problem names its field in loc",
    503: "The store is unavailable; nothing was recorded, retry (Retry-After)",
}


def refusals(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error answers an endpoint gives, for ``responses=``: a client generator and
    a fuzzer then know every status to expect and the body that comes with it."""
    declared: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody, "description": _REFUSALS[code]} for code in codes
    }
    if 409 in codes:
        # An action the state refuses answers with its outcome; a conflict found
        # while checking the input names the field like a 422.
        declared[409]["model"] = Outcome | ErrorBody
    return declared


# Which refusals each kind of endpoint can give.
READ = refusals(401, 422, 503)
READ_ONE = refusals(401, 404, 422, 503)
ACT = refusals(401, 403, 404, 409, 413, 422, 503)
WEBHOOK = refusals(401, 413, 422, 503)


def acted(code: int) -> dict[int | str, dict[str, Any]]:
    """An action on a rollout: its outcome with ``code`` when accepted (200 done, 202
    handed to the workers), and the refusals of any action."""
    done = "Done" if code == 200 else "Accepted; the workers carry it out"
    return {code: {"model": Outcome, "description": done}, **ACT}


ACTED = acted(200)
HANDED_OVER = acted(202)

DOCS_PATH = "/api/v1/docs"
DOCS_STATIC_PATH = "/api/v1/docs-static"


def add_docs(app: FastAPI, path: str = DOCS_PATH, static_path: str = DOCS_STATIC_PATH) -> None:
    """Swagger UI at ``path`` with its script, stylesheet and icon served from the
    installed ``swagger_ui_bundle`` under ``static_path``: the page loads nothing
    from outside, so it works on an air-gapped host and leaks no visit to a CDN."""
    app.mount(static_path, StaticFiles(directory=str(swagger_ui_path)), name="docs-static")

    @app.get(path, include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} API",
            swagger_js_url=f"{root}{static_path}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{static_path}/swagger-ui.css",
            swagger_favicon_url=f"{root}{static_path}/favicon-32x32.png",
        )
