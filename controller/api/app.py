"""The HTTP API (FastAPI): rollouts, their events and incidents, and the Alertmanager
webhook that rolls back at once.

The app is built by ``create_app`` from the settings and a function that enqueues a
rollback, so the domain never imports Celery; ``canary api`` passes the Celery one.
"""

import hmac
import json
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any

import redis
import structlog
from fastapi import Depends, FastAPI, HTTPException, Request, Security, status
from fastapi.dependencies.models import Dependant
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ValidationError
from sqlalchemy import select, text
from sqlalchemy.exc import DataError, SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from config.settings import Settings
from controller import operations
from controller.alerts import AlertmanagerPayload, match_alert
from controller.api.auth import Principal, Role, TokenBook, bearer
from controller.api.limits import BodySizeLimit
from controller.api.openapi import (
    ACT,
    ACTED,
    ALERTMANAGER_TOKEN,
    API_TOKEN,
    HANDED_OVER,
    READ,
    READ_ONE,
    WEBHOOK,
    add_docs,
)
from controller.api.schemas import (
    Approval,
    IncidentId,
    ListLimit,
    Note,
    PlanName,
    PlanVersion,
    Readiness,
    Reason,
    RegisterPlan,
    Resolve,
    RolloutId,
    ServiceFilter,
    ServiceName,
    StartRollout,
)
from controller.metrics.prometheus import PrometheusProvider, RetryPolicy
from controller.plan_loader import PlanError, parse_plan
from controller.plan_registry import (
    find_plan,
    list_plans,
    plan_source_view,
    plan_view,
    register_plan,
    registered_version,
)
from controller.reconcile.stalled import rollout_note
from controller.rollback import rollback as run_rollback
from controller.runbook import incident_document
from controller.runtime import Runtime, router_factory, utcnow
from controller.store import repository
from controller.store.db import session_factory
from controller.store.models import ACTIVE_STATES, FINAL_STATES, Incident, Rollout
from controller.telemetry import StoreCollector
from controller.url_policy import HostPolicy
from controller.views import event_view, rollout_detail, rollout_summary

log = structlog.get_logger(__name__)

RECENT = timedelta(hours=1)  # how long a handled alert's repeats are recognised


def _operation_status(exc: operations.OperationError) -> int:
    """The HTTP status of a refused operation: no such rollout, refused by the state
    of things, a server it needs unreachable (retry), or bad input."""
    if str(exc).startswith("id: no "):
        return 404
    if isinstance(exc, operations.OperationConflict):
        return 409
    if isinstance(exc, operations.OperationUnavailable):
        return 503
    return 422


def create_app(
    settings: Settings,
    enqueue_rollback: Callable[[str], None],
    enqueue_start: Callable[[str], None] = lambda rollout_id: None,
    send_outbox: Callable[[int, str, str], object] | None = None,
) -> FastAPI:
    sessions = session_factory(settings.database_url)
    router_for = router_factory(settings)
    # For the one thing the API does itself when the broker is down: a rollback's
    # traffic shift. What the rollback promises (runbook, notification) stays in the
    # outbox for the workers when the broker is back.
    rollback_runtime = Runtime.from_settings(settings)
    rollback_runtime.send_outbox = send_outbox or _leave_for_reconcile

    def hand_over_rollback(rollout_id: str) -> str:
        """The rollback queue's worker does it; if the broker cannot take the message,
        the API shifts the traffic itself (the router is reachable from here) and
        records it, so that a Redis outage never delays a rollback."""
        try:
            enqueue_rollback(rollout_id)
            return "rollback queue"
        except Exception as exc:  # broker down or refusing: do not wait for it
            log.error("enqueue_failed_rolling_back_here", rollout_id=rollout_id, error=str(exc))
        result = run_rollback(rollback_runtime, rollout_id)
        return f"the API itself (broker unavailable): {result.sentence()}"

    url_policy = HostPolicy.from_setting(settings.allowed_url_hosts)
    reconcile_interval = timedelta(seconds=settings.reconcile_interval_seconds)
    tokens = TokenBook.from_setting(
        settings.api_tokens.get_secret_value() if settings.api_tokens else None
    )
    alert_token = (
        settings.alertmanager_token.get_secret_value() if settings.alertmanager_token else None
    )
    prometheus = PrometheusProvider(
        settings.prometheus_url, timeout_seconds=1.0, retry=RetryPolicy(attempts=1)
    )

    app = FastAPI(
        dependencies=[Depends(known_query_parameters_only)],
        title="canary-controller",
        version="1",
        docs_url=None,  # served by add_docs from installed files, no CDN
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
    )
    add_docs(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.api_max_body_bytes)

    def db() -> Any:
        with sessions() as session:
            yield session

    Db = Annotated[Session, Depends(db)]

    def role(minimum: Role) -> Callable[[Request], Principal]:
        def check(
            request: Request,
            # Declares the bearer scheme in the spec; the header is read below so a
            # missing token gets this API's own 401.
            _scheme: Annotated[HTTPAuthorizationCredentials | None, Security(API_TOKEN)],
        ) -> Principal:
            principal = tokens.identify(bearer(request.headers.get("authorization")))
            if principal is None:
                raise HTTPException(
                    status.HTTP_401_UNAUTHORIZED,
                    "missing or invalid token",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if principal.role < minimum:
                raise HTTPException(
                    status.HTTP_403_FORBIDDEN,
                    f"{principal.name} is {principal.role.name.lower()}; "
                    f"this needs {minimum.name.lower()}",
                )
            return principal

        return check

    def alert_auth(
        request: Request,
        _scheme: Annotated[HTTPAuthorizationCredentials | None, Security(ALERTMANAGER_TOKEN)],
    ) -> None:
        """Alertmanager's own bearer token, checked before the body is looked at."""
        presented = bearer(request.headers.get("authorization"))
        if alert_token is None or presented is None or not _same(presented, alert_token):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing or invalid token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def alert_payload(
        request: Request, _auth: Annotated[None, Depends(alert_auth)]
    ) -> AlertmanagerPayload:
        """The webhook body, parsed only after the token passed: an unauthenticated
        caller gets 401 whatever it sends, and never makes the API parse its JSON."""
        try:
            return AlertmanagerPayload.model_validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
            ) from None

    Viewer = Annotated[Principal, Depends(role(Role.VIEWER))]
    Operator = Annotated[Principal, Depends(role(Role.OPERATOR))]
    Admin = Annotated[Principal, Depends(role(Role.ADMIN))]
    # After the caller's role (declared after it): a caller without a token gets 401
    # and never makes the API read its body.
    NoBody = Annotated[None, Depends(no_body)]

    @app.exception_handler(DataError)
    async def _unstorable(_request: Request, exc: DataError) -> JSONResponse:
        """A value the database refuses (out of its range, a character it cannot
        hold) that the request's checks let through: bad input, not an outage, so
        never the 503 a caller would retry for ever."""
        log.warning("unstorable_input", error=" ".join(str(exc.orig).split())[:200])
        return JSONResponse(
            {"detail": [{"loc": ["body"], "msg": "a value the store cannot hold"}]},
            status_code=422,
        )

    @app.exception_handler(SQLAlchemyError)
    async def _store_unavailable(_request: Request, exc: SQLAlchemyError) -> JSONResponse:
        """The store is the state of record: without it nothing is accepted, and the
        caller is told to retry (Alertmanager does on a 5xx, never on a 202)."""
        log.error("store_unavailable", error=type(exc).__name__)
        return JSONResponse(
            {"detail": "the store is unavailable; nothing was recorded, retry"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(operations.OperationError)
    async def _operation_error(_request: Request, exc: operations.OperationError) -> JSONResponse:
        code = _operation_status(exc)
        field, _, message = str(exc).partition(": ")
        headers = {"Retry-After": "5"} if code == 503 else None
        return JSONResponse(
            {"detail": [{"loc": [field], "msg": message}]}, status_code=code, headers=headers
        )

    @app.exception_handler(PlanError)
    async def _plan_error(_request: Request, exc: PlanError) -> JSONResponse:
        return JSONResponse(
            {
                "detail": [
                    {"loc": _plan_loc(p.path), "line": p.line, "msg": p.message}
                    for p in exc.problems
                ]
            },
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """FastAPI answers a body its JSON parser gave up on (nested thousands deep, a
        number of thousands of digits) with a bare 400; say which part was wrong."""
        if exc.status_code == 400:
            return JSONResponse(
                {
                    "detail": [
                        {
                            "loc": ["body"],
                            "msg": "not valid JSON: nested too deeply, a number too large, "
                            "or not JSON at all",
                        }
                    ]
                },
                status_code=422,
            )
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"detail": [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]},
            status_code=422,
        )

    def get_rollout(session: Session, rollout_id: str) -> Rollout:
        rollout = repository.get_rollout(session, rollout_id)
        if rollout is None:
            raise HTTPException(404, f"no rollout {rollout_id!r}")
        return rollout

    def outcome(result: operations.OperationOutcome, accepted_code: int = 202) -> JSONResponse:
        return JSONResponse(
            {
                "rollout_id": result.rollout_id,
                "accepted": result.accepted,
                "message": result.message,
            },
            status_code=accepted_code if result.accepted else 409,
        )

    registry = CollectorRegistry()
    registry.register(StoreCollector(sessions))
    metrics_token = settings.metrics_token.get_secret_value() if settings.metrics_token else None

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    def metrics(request: Request) -> Response:
        """The controller's own metrics, computed from the store (Prometheus format)."""
        if metrics_token is not None:
            presented = bearer(request.headers.get("authorization"))
            if presented is None or not _same(presented, metrics_token):
                raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or invalid token")
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        responses={503: {"model": Readiness, "description": "A dependency is down"}},
    )
    def readyz() -> JSONResponse:
        """Database, Redis and Prometheus all reachable."""
        checks: dict[str, str] = {}
        try:
            with sessions() as session:
                session.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # report, never raise: this is a probe
            checks["database"] = f"error: {type(exc).__name__}"
        try:
            redis.Redis.from_url(settings.broker_url, socket_timeout=1).ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"error: {type(exc).__name__}"
        checks["prometheus"] = "ok" if prometheus.healthy() else "error: not ready"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.post("/api/v1/rollouts", status_code=201, tags=["rollouts"], responses=ACT)
    def start(body: StartRollout, session: Db, who: Operator) -> dict[str, Any]:
        """Start a rollout from a named plan or inline plan YAML."""
        origin = "inline plan_yaml"
        if body.plan is not None:
            found = find_plan(session, body.plan, settings.plans_dir, body.plan_version)
            plan, origin = found.plan, found.origin
        else:
            # A plan is where approvals, holds and criteria live: whoever writes one
            # decides the release process, so only an admin may bring one inline.
            if who.role < Role.ADMIN:
                raise HTTPException(
                    status.HTTP_403_FORBIDDEN,
                    "plan_yaml: an inline plan needs admin; operators start rollouts from a "
                    "plan an admin registered (plan: NAME)",
                )
            plan = parse_plan(body.plan_yaml or "", source="plan_yaml")
        if body.force is not None and who.role < Role.ADMIN:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                "force: starting from a router or stable version other than the store "
                "expects needs admin",
            )
        rollout = operations.start_rollout(
            session,
            plan,
            service=body.service,
            version=body.version,
            stable=body.stable,
            created_by=who.name,
            now=utcnow(),
            router_for=router_for,
            variables=body.variables,
            force_reason=body.force,
            url_policy=url_policy,
            plan_origin=origin,
        )
        _best_effort(enqueue_start, rollout.id)
        # Said at once, not after the rollout has sat pending for an hour.
        stalled = rollout_note(session, rollout, utcnow(), reconcile_interval)
        return {**rollout_summary(rollout), "stalled": stalled}

    @app.post("/api/v1/plans", status_code=201, tags=["plans"], responses=ACT)
    def register(body: RegisterPlan, session: Db, who: Admin) -> JSONResponse:
        """Register a plan (admin): validated, stored as the name's next version with
        who registered it. The same text as the latest version registers nothing (200)."""
        row, new = register_plan(
            session, body.name, body.plan_yaml, registered_by=who.name, now=utcnow(), note=body.note
        )
        return JSONResponse(plan_view(row), status_code=201 if new else 200)

    @app.get("/api/v1/plans", tags=["plans"], responses=READ)
    def plans(session: Db, _who: Viewer) -> list[dict[str, Any]]:
        """The latest version of every registered plan."""
        return list_plans(session)

    @app.get("/api/v1/plans/{name}", tags=["plans"], responses=READ_ONE)
    def plan_source(
        name: PlanName, session: Db, _who: Viewer, version: PlanVersion = None
    ) -> dict[str, Any]:
        """One registered plan (its latest version, or ``version``) with its YAML,
        secrets masked (``masked`` says whether any was)."""
        try:
            row = registered_version(session, name, version)
        except operations.OperationError as exc:
            raise HTTPException(404, str(exc).removeprefix("plan: ")) from None
        return plan_source_view(row)

    @app.get("/api/v1/rollouts", tags=["rollouts"], responses=READ)
    def list_rollouts(
        session: Db,
        _who: Viewer,
        active: bool = False,
        service: ServiceFilter = None,
        limit: ListLimit = 50,
    ) -> list[dict[str, Any]]:
        rows = repository.list_rollouts(
            session, active_only=active, service=service, limit=max(1, min(limit, 500))
        )
        return [rollout_summary(r) for r in rows]

    @app.get("/api/v1/rollouts/{rollout_id}", tags=["rollouts"], responses=READ_ONE)
    def get_one(rollout_id: RolloutId, session: Db, _who: Viewer) -> dict[str, Any]:
        return rollout_detail(
            session, get_rollout(session, rollout_id), reconcile_interval=reconcile_interval
        )

    @app.get("/api/v1/rollouts/{rollout_id}/events", tags=["rollouts"], responses=READ_ONE)
    def events(rollout_id: RolloutId, session: Db, _who: Viewer) -> list[dict[str, Any]]:
        get_rollout(session, rollout_id)
        return [event_view(e) for e in repository.events_for(session, rollout_id)]

    @app.post("/api/v1/rollouts/{rollout_id}/pause", tags=["rollouts"], responses=ACTED)
    def pause(rollout_id: RolloutId, body: Reason, session: Db, who: Operator) -> JSONResponse:
        paused = operations.pause_rollout(
            session, rollout_id, reason=body.reason, actor=who.name, now=utcnow()
        )
        return outcome(paused, 200)

    @app.post("/api/v1/rollouts/{rollout_id}/resume", tags=["rollouts"], responses=ACTED)
    def resume(rollout_id: RolloutId, session: Db, who: Operator, _: NoBody) -> JSONResponse:
        return outcome(
            operations.resume_rollout(session, rollout_id, actor=who.name, now=utcnow()), 200
        )

    @app.post(
        "/api/v1/rollouts/{rollout_id}/abort",
        status_code=202,
        tags=["rollouts"],
        responses=HANDED_OVER,
    )
    def abort(rollout_id: RolloutId, body: Reason, session: Db, who: Operator) -> JSONResponse:
        result = operations.abort_rollout(
            session, rollout_id, reason=body.reason or "abort", actor=who.name, now=utcnow()
        )
        if result.accepted:
            hand_over_rollback(rollout_id)
        return outcome(result)

    @app.post(
        "/api/v1/rollouts/{rollout_id}/rollback",
        status_code=202,
        tags=["rollouts"],
        responses=HANDED_OVER,
    )
    def rollback(rollout_id: RolloutId, body: Reason, session: Db, who: Operator) -> JSONResponse:
        result = operations.rollback_rollout(
            session, rollout_id, reason=body.reason, actor=who.name, now=utcnow()
        )
        if result.accepted:
            hand_over_rollback(rollout_id)
        return outcome(result)

    @app.post("/api/v1/rollouts/{rollout_id}/resolve", tags=["rollouts"], responses=ACTED)
    def resolve(rollout_id: RolloutId, body: Resolve, session: Db, who: Operator) -> JSONResponse:
        """End a rollout stuck in rollback_failed once traffic was fixed by hand: the
        controller reads the router (and the stable slot's version) back first; 409
        with what it read if that is not traffic on stable. ``force`` (admin) ends it
        anyway as aborted, recorded as NOT confirmed."""
        if body.force and who.role < Role.ADMIN:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                "force: ending a rollback without traffic confirmed on stable needs admin",
            )
        resolved = operations.resolve_rollout(
            session,
            rollout_id,
            reason=body.reason,
            actor=who.name,
            now=utcnow(),
            router_for=router_for,
            force=body.force,
        )
        return outcome(resolved, 200)

    @app.post("/api/v1/rollouts/{rollout_id}/approve", tags=["rollouts"], responses=ACTED)
    def approve(rollout_id: RolloutId, body: Approval, session: Db, who: Operator) -> JSONResponse:
        """Approve the gate the rollout waits at; the caller's token name is the approver."""
        return outcome(
            operations.approve_rollout(
                session, rollout_id, name=who.name, role=body.role, gate=body.stage, now=utcnow()
            ),
            200,
        )

    @app.post("/api/v1/rollouts/{rollout_id}/recheck", tags=["rollouts"], responses=ACTED)
    def recheck(rollout_id: RolloutId, session: Db, who: Operator, _: NoBody) -> JSONResponse:
        return outcome(
            operations.recheck_rollout(session, rollout_id, actor=who.name, now=utcnow()), 200
        )

    @app.post("/api/v1/services/{service}/reconcile-done", tags=["services"], responses=ACTED)
    def reconcile_done(
        service: ServiceName, body: Note, session: Db, who: Operator
    ) -> JSONResponse:
        """Record that a failed-writes rollback's data was reconciled (release checklist
        §3.3); the service's next rollout waits for this."""
        return outcome(
            operations.record_reconciliation(
                session, service, note=body.note, actor=who.name, now=utcnow()
            ),
            200,
        )

    @app.post("/api/v1/rollouts/{rollout_id}/promote", tags=["rollouts"], responses=ACTED)
    def promote(rollout_id: RolloutId, body: Reason, session: Db, who: Operator) -> JSONResponse:
        """Skip the rest of the current hold (the criteria must still pass)."""
        return outcome(
            operations.promote_rollout(
                session, rollout_id, actor=who.name, reason=body.reason, now=utcnow()
            ),
            200,
        )

    @app.get("/api/v1/rollouts/{rollout_id}/incident", tags=["incidents"], responses=READ_ONE)
    def rollout_incident(rollout_id: RolloutId, session: Db, _who: Viewer) -> dict[str, Any]:
        rollout = get_rollout(session, rollout_id)
        incident = session.scalars(
            select(Incident).where(Incident.rollout_id == rollout_id)
        ).first()
        if incident is None:
            raise HTTPException(404, f"rollout {rollout_id} has no incident")
        return incident_document(incident, rollout)

    @app.get("/api/v1/incidents/{incident_id}", tags=["incidents"], responses=READ_ONE)
    def incident(incident_id: IncidentId, session: Db, _who: Viewer) -> dict[str, Any]:
        found = session.get(Incident, incident_id)
        if found is None:
            raise HTTPException(404, f"no incident {incident_id!r}")
        return incident_document(found, get_rollout(session, found.rollout_id))

    @app.post(
        "/api/v1/alerts/alertmanager",
        status_code=202,
        tags=["alerts"],
        responses=WEBHOOK,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": inline_schema(AlertmanagerPayload)}},
            }
        },
    )
    def alertmanager(
        payload: Annotated[AlertmanagerPayload, Depends(alert_payload)], session: Db
    ) -> JSONResponse:
        """Alertmanager webhook (version 4): a matching firing alert rolls back at once."""
        received = time.monotonic()
        active = list(
            session.scalars(
                select(Rollout).where(Rollout.state.in_([str(s) for s in ACTIVE_STATES]))
            )
        )
        recent = list(
            session.scalars(
                select(Rollout).where(
                    Rollout.state.in_([str(s) for s in FINAL_STATES]),
                    Rollout.finished_at > utcnow() - RECENT,
                )
            )
        )
        results = []
        now = utcnow()
        for alert in payload.alerts:
            for match in match_alert(alert, active, recent):
                entry = match.as_dict()
                if match.action == "rollback" and match.rollout_id:
                    accepted = repository.request_rollback(
                        session,
                        match.rollout_id,
                        now=now,
                        actor="alertmanager",
                        reason=f"alert {match.alertname} fired",
                        tripped=None,
                        trigger={
                            "kind": "alert",
                            "alertname": match.alertname,
                            "labels": match.labels,
                            "fingerprint": match.fingerprint,
                            "starts_at": alert.startsAt.isoformat() if alert.startsAt else None,
                        },
                    )
                    if accepted:
                        entry["handed_to"] = hand_over_rollback(match.rollout_id)
                        entry["enqueued_ms"] = round((time.monotonic() - received) * 1000, 2)
                        hit = next((r for r in active if r.id == match.rollout_id), None)
                        log.warning(
                            "alert_rollback",
                            rollout_id=match.rollout_id,
                            service=hit.service if hit else None,
                            weight=hit.weight if hit else None,
                            alertname=match.alertname,
                        )
                    else:
                        entry.update(action="ignored", reason="already handled")
                results.append(entry)
        rolled = [r for r in results if r["action"] == "rollback"]
        return JSONResponse(
            {"matched": rolled, "ignored": [r for r in results if r["action"] != "rollback"]},
            status_code=202,
        )

    return app


def known_query_parameters_only(request: Request) -> None:
    """A query parameter the endpoint does not take is refused like an unknown body
    field: ``?actve=true`` silently listing every rollout is a typo nobody sees."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    taken = _query_parameters(route.dependant)
    unknown = sorted(set(request.query_params) - taken)
    if unknown:
        raise RequestValidationError(
            [
                {"loc": ("query", name), "msg": "not a parameter of this endpoint"}
                for name in unknown
            ]
        )


async def no_body(request: Request) -> None:
    """For an action that takes no body (resume, recheck): nothing, ``{}`` or
    ``null`` is accepted, as clients send by default; any other body is refused with
    a 422 and the action is not taken. Such a body is a client sending what it
    believes is read (a reason, a role) or not JSON at all, and acting while
    ignoring it would record an action nobody meant as sent."""
    body = await request.body()
    if not body.strip():
        return
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        problem = "this endpoint takes no body, and this one is not even JSON: send none"
    else:
        if value is None or value == {}:
            return
        problem = "this endpoint takes no body: send none (or {})"
    raise RequestValidationError([{"loc": ("body",), "msg": problem}])


def _query_parameters(dependant: Dependant) -> set[str]:
    """The query parameters an endpoint takes, its dependencies' included."""
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_parameters(sub)
    return names


def _plan_loc(path: str) -> list[str]:
    """``stop_criteria[0].factor`` as an error location under ``plan``."""
    return ["plan", *filter(None, path.split("."))]


def _leave_for_reconcile(row_id: int, kind: str, rollout_id: str) -> None:
    """Without a broker an outbox row waits in the store; reconcile sends it later."""
    raise ConnectionError("no broker: left for reconcile")


def _best_effort(enqueue: Callable[[str], None], rollout_id: str) -> None:
    """Start at once if the broker answers; the reconcile loop starts it anyway."""
    try:
        enqueue(rollout_id)
    except Exception as exc:  # the database holds the rollout already
        log.warning("enqueue_failed", rollout_id=rollout_id, error=type(exc).__name__)


def _same(presented: str, expected: str) -> bool:
    return hmac.compare_digest(presented.encode(), expected.encode())


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema with its ``$defs`` inlined, for a request body FastAPI
    does not parse itself (so its schema is not among the spec's components)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return inline(schema)
