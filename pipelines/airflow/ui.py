"""The Models pages inside the Airflow UI: a FastAPI app the Airflow API server mounts at /pipelines
(pipelines/airflow/plugin.py, registered by its entry point), shown through the UI's external views.

Plugin apps get no protection from Airflow, so every route here asks Airflow's own auth manager: the
caller's Airflow token (the UI's `_token` cookie, or a Bearer header) must name a user allowed to
read the model's DAGs. Links are relative, so the pages work behind a proxy's path prefix.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import mimetypes
import os
import time
from dataclasses import dataclass
from html import escape
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote, urlsplit

from airflow.api_fastapi.core_api.security import get_user
from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import Engine

from pipelines.core.errors import SpecError
from pipelines.core.spec import ModelSpec, load_spec, spec_paths
from pipelines.storage.lake import Lake, LocalLake
from pipelines.storage.settings import Settings

if TYPE_CHECKING:  # the pages' data module is imported on the first request that needs it
    from pipelines.views.model_page import AliasHolder, DriftWindow, ModelPage

SETTINGS_TTL_S = 60  # storage comes from Airflow connections: re-read them this often
MLFLOW_UI_ENV = "PIPELINES_MLFLOW_UI_URL"


@dataclass
class Storage:
    settings: Settings
    engine: Engine
    read_at: float


_storage: Storage | None = None


def storage() -> Storage:
    """The tables and lake the tasks use (Airflow connections, else the embedded defaults)."""
    global _storage
    if _storage is None or time.monotonic() - _storage.read_at > SETTINGS_TTL_S:
        from pipelines.airflow.connections import cli_settings
        from pipelines.storage.database import make_engine

        settings = cli_settings()
        if _storage is not None and _storage.settings.tables_url == settings.tables_url:
            engine = _storage.engine
        else:
            engine = make_engine(settings.tables_url, read_only=True)
        _storage = Storage(settings, engine, time.monotonic())
    return _storage


def specs(settings: Settings) -> tuple[list[ModelSpec], list[str]]:
    found, errors = [], []
    for path in spec_paths(settings.specs_dir):
        try:
            found.append(load_spec(path))
        except SpecError as exc:
            errors.append(str(exc))
    return found, errors


# --- access: Airflow's auth manager decides -----------------------------------------------------


# Airflow's own dependency: the user of a Bearer token or of the UI's `_token` cookie; 401 without
# one, 403 with a bad one.
User = Annotated[Any, Depends(get_user)]


def may(user: Any, dag_id: str, method: str = "GET", entity: str | None = None) -> bool:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    return bool(
        get_auth_manager().is_authorized_dag(
            method=method,  # type: ignore[arg-type]
            access_entity=DagAccessEntity[entity] if entity else None,
            details=DagDetails(id=dag_id),
            user=user,
        )
    )


def model_dag(model: str) -> str:
    return f"{model}__score"  # a model's pages answer to whoever may read its score DAG


def readable_spec(settings: Settings, user: Any, model: str) -> ModelSpec:
    for spec in specs(settings)[0]:
        if spec.name == model:
            if not may(user, model_dag(model)):
                raise HTTPException(403, f"you may not read the DAGs of model {model}")
            return spec
    raise HTTPException(404, f"no model named {model} in {settings.specs_dir}")


# --- lake and Data Docs: only what is under them, never anything else ---------------------------


def safe_key(key: str) -> str:
    if "\\" in key or "\0" in key or any(part in {"", ".", ".."} for part in key.split("/")):
        raise HTTPException(404, "not an artifact of the lake")
    return key


def lake_key(lake: Lake, uri: str | None) -> str | None:
    """The lake key of a URI the tasks recorded; None when it is not in this lake."""
    root = lake.uri.rstrip("/") + "/"
    return uri[len(root) :] if uri and uri.startswith(root) else None


def within(root: Path, relative: str) -> Path:
    """The file `relative` names under `root`, its links followed: one that leaves `root` is not found."""
    path = (root / safe_key(relative)).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_file():
        raise HTTPException(404, "not found")
    return path


# --- state-changing requests: from this site only -----------------------------------------------

FORM_TOKEN = "form_token"


def form_token(request: Request) -> str | None:
    """The token the page's forms carry for this browser session: a digest of its Airflow session
    cookie, which another site can neither read nor compute. (No server key: every API server
    process, however many, gives the same token.)"""
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    session = request.cookies.get(COOKIE_NAME_JWT_TOKEN)
    if not session:
        return None
    return hashlib.sha256(b"pipelines-form:" + session.encode()).hexdigest()


def same_site(request: Request, sent_token: str | None) -> None:
    """A POST a browser sent on its own (with the session cookie) must prove it came from this site:
    its Origin, else its Referer, names this site, and it carries this session's form token. A
    request with an Authorization header is an API client's: no browser adds that header cross-site."""
    if request.headers.get("authorization"):
        return
    here = f"{request.url.scheme}://{request.url.netloc}"
    origin = request.headers.get("origin")
    if origin is None and request.headers.get("referer"):
        referer = urlsplit(request.headers["referer"])
        origin = f"{referer.scheme}://{referer.netloc}"
    if origin != here:
        seen = "neither Origin nor Referer" if origin is None else f"it came from {origin}"
        raise HTTPException(403, f"cross-site request refused: {seen}, not {here}")
    expected = form_token(request)
    if expected is None or not hmac.compare_digest(expected, sent_token or ""):
        raise HTTPException(403, "the form's token is missing or stale: reload the page and submit it again")


def artifact_response(name: str, payload: bytes) -> Response:
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    headers = {"X-Content-Type-Options": "nosniff"}
    if media_type == "text/html":
        # Evidently's reports run their own scripts: let them, in an opaque origin that cannot read
        # the user's Airflow session or call the API as them.
        headers["Content-Security-Policy"] = "sandbox allow-scripts allow-popups allow-downloads"
    elif not media_type.startswith(("image/", "application/json", "text/")):
        headers["Content-Disposition"] = f'attachment; filename="{quote(PurePosixPath(name).name)}"'
    return Response(payload, media_type=media_type, headers=headers)


# --- HTML ---------------------------------------------------------------------------------------

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.2rem;color:#1a202c;background:#fff}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.6rem;border-bottom:1px solid #e2e8f0}
table{border-collapse:collapse;font-size:.85rem}td,th{padding:.25rem .6rem;border-bottom:1px solid #edf2f7;text-align:left;vertical-align:top}
.ok{color:#276749}.bad{color:#c53030}.muted{color:#718096}.card{display:inline-block;border:1px solid #e2e8f0;border-radius:6px;padding:.6rem 1rem;margin:0 .6rem .6rem 0;vertical-align:top}
.big{font-size:1.3rem;font-weight:600}form{display:inline-block;margin-right:1rem}pre{font-size:.75rem;background:#f7fafc;padding:.5rem;overflow:auto}
"""
COLORS = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280", "#2c7a7b", "#975a16", "#4a5568"]


def page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        f'<!doctype html><html><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>{body}</body></html>"
    )


def link(href: str, text: str) -> str:
    # Airflow sandboxes the page's iframe (no popups, no top navigation): links open in it.
    return f'<a href="{escape(href)}">{escape(text)}</a>'


def uri_link(settings: Settings, root: str, uri: str | None, text: str) -> str:
    key = lake_key(settings.lake, uri)
    if key is None:
        return f'<span class="muted">{escape(uri or "none")}</span>'
    return link(f"{root}lake/{quote(key)}", text)


def mlflow_link(root: str, run_id: str | None, text: str) -> str:
    return link(f"{root}mlflow/{quote(run_id)}", text) if run_id else ""


def airflow_run_link(root: str, dag_id: str | None, run_id: str | None) -> str:
    if not dag_id or not run_id:
        return escape(run_id or "")
    return link(f"{root}../dags/{quote(dag_id)}/runs/{quote(run_id, safe='')}", run_id)


def line_chart(cohorts: list[str], series: dict[str, list[dict[str, Any]]], metric: str) -> str:
    """An inline SVG: the metric per cohort, one line per series."""
    values = [p["value"] for points in series.values() for p in points if p["value"] is not None]
    if not cohorts or not values:
        return '<p class="muted">no backtest yet: it needs matured predictions (labels that arrived)</p>'
    width, height, pad = 720, 260, 44
    low, high = min(values), max(values)
    low, high = (low - 0.05, high + 0.05) if high - low < 1e-9 else (low, high)

    def x(cohort: str) -> float:
        i = cohorts.index(cohort)
        return pad + (width - 2 * pad) * (i / max(len(cohorts) - 1, 1))

    def y(value: float) -> float:
        return float(height - pad - (height - 2 * pad) * (value - low) / (high - low))

    parts = [f'<svg class="chart" role="img" aria-label="backtest {escape(metric)}" width="{width}" height="{height}">']
    parts.append(f'<text x="4" y="14" font-size="11">{escape(metric)}</text>')
    for value in (low, high):
        parts.append(f'<text x="2" y="{y(value):.0f}" font-size="10">{value:.3f}</text>')
    for cohort in cohorts:
        parts.append(f'<text x="{x(cohort) - 28:.0f}" y="{height - 18}" font-size="10">{escape(cohort)}</text>')
    for i, (name, points) in enumerate(sorted(series.items())):
        color = COLORS[i % len(COLORS)]
        coords = [(x(p["cohort"]), y(p["value"]), p) for p in points if p["value"] is not None]
        dash = ' stroke-dasharray="5 3"' if name.endswith("replay") else ""
        path = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy, _ in coords)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{path}"/>')
        for cx, cy, p in coords:
            tip = f"{name} {p['cohort']}: {metric}={p['value']:.4f} n={p['n']}"
            parts.append(
                f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3.5" fill="{color}"><title>{escape(tip)}</title></circle>'
            )
        parts.append(f'<text x="{width - 150}" y="{16 + 14 * i}" font-size="11" fill="{color}">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def drift_chart(settings: Settings, root: str, windows: list[DriftWindow]) -> str:
    """An inline SVG timeline: one bar per window, its height the share of drifted columns, red
    where the dataset drifted; each bar opens that window's Evidently report."""
    if not windows:
        return '<p class="muted">no drift report yet: the monitor DAG writes one per scored window</p>'
    width, height, pad = 720, 150, 24
    step = (width - 2 * pad) / len(windows)
    parts = [f'<svg class="chart" role="img" aria-label="drift timeline" width="{width}" height="{height}">']
    for i, w in enumerate(windows):
        bar = max((height - 2 * pad) * w["drift_share"], 2)
        color = "#c53030" if w["dataset_drift"] else "#68d391"
        tip = (
            f"{w['interval_start']} to {w['interval_end']}: {w['drift_share']:.2f} drifted "
            f"({', '.join(w['drifted_columns']) or 'none'})"
            + (f"; policy: {w['verdict']['reason']}" if w["verdict"] else "")
        )
        rect = (
            f'<rect x="{pad + i * step:.1f}" y="{height - pad - bar:.1f}" width="{max(step - 2, 1):.1f}" '
            f'height="{bar:.1f}" fill="{color}"><title>{escape(tip)}</title></rect>'
        )
        key = lake_key(settings.lake, w["report"])
        parts.append(f'<a href="{escape(root)}lake/{quote(key)}">{rect}</a>' if key else rect)
    parts.append(f'<text x="{pad}" y="{height - 6}" font-size="10">{escape(windows[0]["interval_start"][:16])}</text>')
    parts.append(
        f'<text x="{width - pad - 100}" y="{height - 6}" font-size="10">{escape(windows[-1]["interval_end"][:16])}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _version(served: AliasHolder) -> str:
    return "none" if served["version"] is None else f"v{served['version']}"


def model_html(settings: Settings, root: str, data: ModelPage, form_token: str | None) -> str:
    """A model's page; its action forms (rollback, dry run) only with a form token (a user who may trigger)."""
    model = data["model"]
    body = [
        f"<h1>Model {escape(model)} <span class='muted'>({escape(data['task'])}, owner {escape(data['owner'])})</span></h1>"
    ]
    if data["description"]:
        body.append(f"<p>{escape(data['description'])}</p>")
    for alias, served in data["serving"].items():
        moved = served["moved"]
        since = (
            f"since {escape(moved['at'])} by {escape(moved['actor'])}: {escape(moved['reason'])}"
            if moved
            else "no recorded move"
        )
        body.append(
            f'<div class="card" id="{alias}"><div class="muted">{alias}</div>'
            f'<div class="big">{_version(served)}</div><div class="muted">{since}</div></div>'
        )
    waiting = data["awaiting_approval"]
    if waiting:
        body.append(
            f'<p class="bad">Waiting for approval: promote v{escape(str(waiting["to_version"]))} '
            f"({escape(waiting['reason'])}). " + link(f"{root}../required_actions", "Open Required Actions") + "</p>"
        )
    if form_token is not None:
        token = f'<input type="hidden" name="{FORM_TOKEN}" value="{escape(form_token)}">'
        versions = sorted({e["to_version"] for e in data["history"] if e["to_version"]}, key=lambda v: int(v))
        options = "".join(f"<option>{escape(v)}</option>" for v in versions)
        body.append(
            f'<p><form method="post" action="{escape(quote(model))}/rollback">Roll back to '
            f'<select name="version">{options}</select> because <input name="reason" value="rolled back from the Models page" size="30"> '
            '<button type="submit">Roll back</button>{token}</form>'
            f'<form method="post" action="{escape(quote(model))}/dry-run"><button type="submit">Trigger a dry-run training</button>{token}</form></p>'
        )

    backtest = data["backtest"]
    body.append(f"<h2>Backtest: {escape(backtest['metric'])} per cohort and version</h2>")
    body.append(line_chart(backtest["cohorts"], backtest["series"], backtest["metric"]))
    body.append(
        '<p class="muted">solid: the predictions as logged; dashed: a challenger replayed on the same inputs</p>'
    )

    body.append("<h2>Drift per window</h2>")
    body.append(drift_chart(settings, root, data["drift"]))
    rows = []
    for w in data["drift"][::-1][:12]:
        verdict = w["verdict"]
        rows.append(
            f"<tr><td>{escape(w['interval_end'])}</td><td>v{escape(w['model_version'])}</td>"
            f"<td class='{'bad' if w['dataset_drift'] else 'ok'}'>{w['drift_share']:.2f}</td>"
            f"<td>{escape(', '.join(w['drifted_columns']) or 'none')}</td>"
            f"<td>{escape(('RETRAIN: ' if verdict and verdict['retrain'] else '') + (verdict['reason'] if verdict else ''))}</td>"
            f"<td>{uri_link(settings, root, w['report'], 'report')}</td></tr>"
        )
    if rows:
        body.append(
            "<table><tr><th>window end</th><th>version</th><th>drift share</th><th>drifted columns</th>"
            "<th>policy verdict</th><th></th></tr>" + "".join(rows) + "</table>"
        )

    body.append("<h2>Gate decisions</h2>")
    rows = []
    for d in data["gate_decisions"]:
        details = d["details"] or {}
        interval = details.get("interval") or {}
        span = f"{interval['point']:+.4f} [{interval['lower']:+.4f}, {interval['upper']:+.4f}]" if interval else "n/a"
        rows.append(
            f"<tr><td>{escape(d['at'])}</td><td>v{escape(str(d['to_version']))} vs "
            f"{escape('v' + str(d['from_version']) if d['from_version'] else 'none')}</td>"
            f"<td>{escape(str(details.get('action', '')))}</td><td>{escape(span)}</td><td>{escape(d['reason'])}</td>"
            f"<td>{airflow_run_link(root, details.get('dag_id'), d['dag_run_id'])}</td>"
            f"<td>{mlflow_link(root, details.get('challenger_run_id'), 'MLflow run')}</td></tr>"
        )
    body.append(
        "<table><tr><th>at</th><th>challenger</th><th>action</th><th>improvement (interval)</th><th>reason</th>"
        "<th>Airflow run</th><th></th></tr>" + "".join(rows) + "</table>"
        if rows
        else '<p class="muted">no gate decision yet</p>'
    )

    body.append("<h2>Alias history</h2><table><tr><th>at</th><th>event</th><th>change</th><th>by</th><th>why</th></tr>")
    for e in data["history"]:
        change = f"{e['alias'] or ''} v{e['from_version'] or '-'} → v{e['to_version'] or '-'}"
        body.append(
            f"<tr><td>{escape(e['at'])}</td><td>{escape(e['event'])}</td><td>{escape(change)}</td>"
            f"<td>{escape(e['actor'])}</td><td>{escape(e['reason'])}</td></tr>"
        )
    body.append("</table>")

    body.append("<h2>Validation per interval</h2>")
    rows = []
    for v in data["validations"][:24]:
        outcome = "passed" if v["success"] else "FAILED: " + "; ".join(v["failed_expectations"])
        quarantined = f" ({v['rows_quarantined']} quarantined)" if v["rows_quarantined"] else ""
        rows.append(
            f"<tr><td>{escape(v['interval_start'])}</td><td>{escape(v['dag_id'])}</td>"
            f"<td class='{'ok' if v['success'] else 'bad'}'>{escape(outcome + quarantined)}</td>"
            f"<td>{v['rows_checked'] if v['rows_checked'] is not None else ''}</td>"
            f"<td>{uri_link(settings, root, v['result'], 'result')}</td></tr>"
        )
    body.append(
        "<table><tr><th>interval</th><th>DAG</th><th>outcome</th><th>rows</th><th></th></tr>"
        + "".join(rows)
        + "</table><p>"
        + link(f"{root}datadocs/index.html", "Data Docs")
        + "</p>"
        if rows
        else '<p class="muted">no validation yet</p>'
    )

    body.append("<h2>Prediction volume (the two days up to the newest)</h2>")
    volume = data["volume"]
    if volume:
        peak = max(r["rows"] for r in volume)
        body.append("<table><tr><th>from</th><th>rows</th><th></th><th>run</th></tr>")
        for r in volume[-24:]:
            bar = f'<div style="background:#4299e1;height:.7rem;width:{200 * r["rows"] / peak:.0f}px"></div>'
            body.append(
                f"<tr><td>{escape(r['from'] or '')}</td><td>{r['rows']}</td><td>{bar}</td>"
                f"<td>{airflow_run_link(root, model_dag(model), r['dag_run_id'])}</td></tr>"
            )
        body.append("</table>")
    else:
        body.append('<p class="muted">no predictions logged yet</p>')
    return "".join(body)


# --- the app ------------------------------------------------------------------------------------

app = FastAPI(title="pipelines: models", docs_url=None, redoc_url=None, openapi_url=None)


@app.exception_handler(HTTPException)
async def _refused(request: Request, exc: HTTPException) -> Response:
    """A browser without an Airflow session is sent to Airflow's login; an API client gets the status."""
    if exc.status_code == 401 and "text/html" in request.headers.get("accept", ""):
        from airflow.api_fastapi.app import get_auth_manager

        login = get_auth_manager().get_url_login(next_url=str(request.url))
        return RedirectResponse(login, status_code=303)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)


@app.get("/models", response_class=HTMLResponse)
def models(user: User) -> HTMLResponse:
    from pipelines.views.model_page import events, serving

    s = storage()
    found, errors = specs(s.settings)
    rows = []
    for spec in found:
        if not may(user, model_dag(spec.name)):
            continue
        served = serving(s.settings, s.engine, spec.name, events(s.engine, spec.name, ("alias_moved",), 30))
        rows.append(
            f"<tr class='model'><td><a href=\"models/{escape(quote(spec.name))}\">{escape(spec.name)}</a></td>"
            f"<td>{escape(spec.task)}</td><td class='champion'>{_version(served['champion'])}</td>"
            f"<td>{_version(served['challenger'])}</td><td>{escape(spec.description)}</td></tr>"
        )
    body = "<h1>Models</h1><table><tr><th>model</th><th>task</th><th>champion</th><th>challenger</th><th></th></tr>"
    body += "".join(rows) + "</table>"
    body += "".join(f'<p class="bad">spec error: {escape(e)}</p>' for e in errors)
    return page("Models", body)


@app.get("/models/{model}", response_class=HTMLResponse)
def model(request: Request, model: str, user: User) -> HTMLResponse:
    from pipelines.views.model_page import model_page

    s = storage()
    spec = readable_spec(s.settings, user, model)
    data = model_page(s.settings, s.engine, spec)
    form = (form_token(request) or "") if may(user, f"{model}__rollback", "POST", "RUN") else None
    return page(
        f"Model {model}", '<p><a href="../models">All models</a></p>' + model_html(s.settings, "../", data, form)
    )


@app.get("/dags/{dag_id}")
def dag_tab(dag_id: str, user: User) -> Response:
    """The "Model" tab of a model's DAGs: that model's page."""
    model_name = dag_id.split("__")[0]
    readable_spec(storage().settings, user, model_name)
    return RedirectResponse(f"../models/{quote(model_name)}", status_code=303)


@app.get("/evidence/{dag_id}/{run_id}/{task_id}", response_class=HTMLResponse)
def evidence(dag_id: str, run_id: str, task_id: str, user: User) -> HTMLResponse:
    """What one task instance wrote: the "Evidence" tab of a task instance and its extra link."""
    from pipelines.views.model_page import task_evidence

    if not may(user, dag_id, "GET", "TASK_INSTANCE"):
        raise HTTPException(403, f"you may not read the task instances of {dag_id}")
    s = storage()
    root = "../../../"
    found = task_evidence(s.settings, s.engine, dag_id.split("__")[0], run_id, task_id)
    items = []
    for e in found:
        if e["kind"] == "mlflow_run":
            items.append(f"<li>{mlflow_link(root, e['uri'], e['title'])}</li>")
        elif e["kind"] == "data_docs":
            items.append(f"<li>{link(f'{root}datadocs/index.html', e['title'])}</li>")
        elif e["kind"] == "decision":
            items.append(f"<li>{escape(e['title'])}<pre>{escape(e['uri'])}</pre></li>")
        else:
            items.append(f"<li>{uri_link(s.settings, root, e['uri'], e['title'])}</li>")
    body = f"<h1>{escape(task_id)} of {escape(dag_id)}, run {escape(run_id)}</h1>"
    body += f"<ul>{''.join(items)}</ul>" if items else '<p class="muted">this task recorded no artifact</p>'
    return page(f"{task_id} evidence", body)


@app.get("/lake/{key:path}")
def lake_artifact(key: str, user: User) -> Response:
    """An object of the lake (local or S3), to a user who may read the model it belongs to."""
    s = storage()
    key = safe_key(key)
    model_name, _, rest = key.partition("/")
    readable_spec(s.settings, user, model_name)
    lake = s.settings.lake
    if isinstance(lake, LocalLake):
        # Checked on the file itself: a link in this model's folder to another model's is not followed.
        return artifact_response(key, within(lake.root / model_name, rest).read_bytes())
    try:
        return artifact_response(key, lake.get(key))
    except FileNotFoundError:
        raise HTTPException(404, "not in the lake") from None


@app.get("/datadocs/{path:path}")
def data_docs(path: str, user: User) -> Response:
    from pipelines.stages.validate import data_docs_dir

    if not any(may(user, model_dag(spec.name)) for spec in specs(storage().settings)[0]):
        raise HTTPException(403, "you may not read any model's DAGs")
    site = data_docs_dir(storage().settings.gx_root)
    if path in {"", "index.html"} and not (site / "index.html").exists():
        return page(
            "Data Docs", "<p>No Data Docs site yet: the nightly training builds it, or run `pipelines data-docs`.</p>"
        )
    target = within(site, path or "index.html")
    return artifact_response(target.name, target.read_bytes())


@app.get("/mlflow/{run_id}")
def mlflow_run(run_id: str, user: User) -> Response:
    """An MLflow run in the MLflow UI (`pipelines up` tells where it is), else its details here."""
    from mlflow.exceptions import MlflowException

    from pipelines.storage.registry import mlflow_client

    client = mlflow_client(storage().settings)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise HTTPException(404, f"no MLflow run {run_id}") from None
    # A model's runs live in its experiment, pipelines/<model>: readable by who may read the model.
    experiment = client.get_experiment(run.info.experiment_id).name
    if not experiment.startswith("pipelines/"):
        raise HTTPException(404, f"MLflow run {run_id} is not a pipelines model's run")
    readable_spec(storage().settings, user, experiment.removeprefix("pipelines/"))
    tags = run.data.tags
    ui = os.environ.get(MLFLOW_UI_ENV)
    if ui:
        return RedirectResponse(
            f"{ui.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}", status_code=303
        )
    body = f"<h1>MLflow run {escape(run_id)}</h1><p>Set {MLFLOW_UI_ENV} to link the MLflow UI.</p>"
    body += f"<pre>{escape(json.dumps({'metrics': run.data.metrics, 'tags': tags}, indent=2, default=str))}</pre>"
    return page(f"MLflow run {run_id}", body)


async def trigger(request: Request, user: Any, dag_id: str, conf: dict[str, Any]) -> Response:
    """A DAG run through Airflow's own REST API, as the calling user (their token, their rights)."""
    import httpx

    if not may(user, dag_id, "POST", "RUN"):  # Airflow would refuse it too; say so before asking
        raise HTTPException(403, f"you may not trigger runs of {dag_id}")
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    token = request.cookies.get(COOKIE_NAME_JWT_TOKEN) or request.headers.get("authorization", "").partition(" ")[2]
    base = f"{request.url.scheme}://{request.url.netloc}"
    async with httpx.AsyncClient(timeout=60) as client:
        answer = await client.post(
            f"{base}/api/v2/dags/{quote(dag_id)}/dagRuns",
            json={"logical_date": None, "conf": conf},
            headers={"Authorization": f"Bearer {token}"},
        )
    if answer.status_code >= 300:
        raise HTTPException(answer.status_code, f"Airflow refused the run of {dag_id}: {answer.text[:500]}")
    run_id = answer.json()["dag_run_id"]
    body = f'<h1>Triggered</h1><p id="triggered" data-dag="{escape(dag_id)}" data-run="{escape(run_id)}">'
    body += f"{escape(dag_id)}: run {airflow_run_link('../../', dag_id, run_id)}</p>"
    return page(f"Triggered {dag_id}", body + '<p><a href="../../models">All models</a></p>')


FormToken = Annotated[str | None, Form(alias=FORM_TOKEN)]


@app.post("/models/{model}/rollback")
async def rollback(
    request: Request,
    model: str,
    version: Annotated[str, Form()],
    reason: Annotated[str, Form()],
    user: User,
    token: FormToken = None,
) -> Response:
    same_site(request, token)
    readable_spec(storage().settings, user, model)
    return await trigger(request, user, f"{model}__rollback", {"version": version, "reason": reason})


@app.post("/models/{model}/dry-run")
async def dry_run(request: Request, model: str, user: User, token: FormToken = None) -> Response:
    same_site(request, token)
    readable_spec(storage().settings, user, model)
    return await trigger(request, user, f"{model}__train", {"dry_run": True})
