"""The demo's Flask app: the page (/), its assets (/static/...) and the JSON API (/api/...).

Every request passes esrt.demo.guard first; uploads go to an esrt.demo.jobs.JobRunner.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Flask, Response, jsonify, request, send_file
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from esrt import __version__
from esrt.demo.guard import refusal
from esrt.demo.jobs import DemoConfig, DemoError, JobRunner
from esrt.runtime import PRECISIONS

if TYPE_CHECKING:
    from esrt.model import ESRT

STATIC = Path(__file__).parent / "static"
CONTENT_SECURITY_POLICY = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'"
TRUE = ("1", "true", "on", "yes")


def create_app(
    models: Mapping[int, ESRT],
    config: DemoConfig | None = None,
    workdir: str | Path | None = None,
) -> Flask:
    """The Flask app of the demo, serving models ({scale: eval-mode ESRT}); files live in a folder under workdir.

    Its JobRunner is app.extensions["esrt_demo"]; call its close().
    """
    config = config or DemoConfig()
    runner = JobRunner(models, config, workdir)
    app = Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = config.max_upload_bytes
    app.extensions["esrt_demo"] = runner
    _add_checks(app, config)

    @app.get("/")
    def index() -> Response:
        return app.send_static_file("index.html")

    @app.get("/api/config")
    def api_config() -> Response:
        return jsonify(
            version=__version__,
            scales=runner.scales(),
            precisions=list(PRECISIONS),
            max_upload_bytes=config.max_upload_bytes,
            max_pixels=config.max_pixels,
            device=devices(models),
        )

    _add_job_routes(app, runner)
    return app


def _add_job_routes(app: Flask, runner: JobRunner) -> None:
    """/api/jobs: POST an upload (form fields image, scale, precision, tta, exact); GET its status and files."""

    @app.post("/api/jobs")
    def api_submit() -> tuple[Response, int]:
        upload = request.files.get("image")
        if upload is None or not upload.filename:
            raise DemoError("no image in the request (form field 'image')")
        try:
            scale = int(request.form.get("scale", runner.scales()[-1]))
        except ValueError:
            raise DemoError("scale must be an integer") from None
        precision = request.form.get("precision", "fp32")
        tta, exact = (request.form.get(key, "false").lower() in TRUE for key in ("tta", "exact"))
        job = runner.submit(upload.stream, Path(upload.filename).name, scale, precision, tta, exact)
        return jsonify(runner.status(job)), 202

    @app.get("/api/jobs/<job_id>")
    def api_status(job_id: str) -> Response:
        return jsonify(runner.status(runner.get(job_id)))

    @app.get("/api/jobs/<job_id>/input")
    def api_input(job_id: str) -> Response:
        job = runner.get(job_id)
        if job.state not in ("running", "done") or not (job.folder / "input.png").is_file():
            raise DemoError("the input preview is not ready yet", 409)
        return send_file(job.folder / "input.png", mimetype="image/png")

    @app.get("/api/jobs/<job_id>/result")
    def api_result(job_id: str) -> Response:
        job = runner.get(job_id)
        if job.state != "done":
            raise DemoError(f"the result is not ready (job is {job.state})", 409)
        download = request.args.get("download") == "1"
        return send_file(
            job.folder / "result.png", mimetype="image/png", as_attachment=download, download_name=job.download_name
        )


def _add_checks(app: Flask, config: DemoConfig) -> None:
    """The Host/Origin check before every request, the security headers after, and errors as one-line JSON."""

    @app.before_request
    def _guard() -> tuple[Response, int] | None:
        reason = refusal(request.environ, config.allowed_hosts)
        return None if reason is None else (jsonify(error=reason), 403)

    @app.after_request
    def _headers(response: Response) -> Response:
        # Everything comes from this server: the page works offline and loads nothing from elsewhere.
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        if request.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(DemoError)
    def _refused(exc: DemoError) -> tuple[Response, int]:
        return jsonify(error=str(exc)), exc.status

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge) -> tuple[Response, int]:
        return jsonify(error=f"the file is larger than the limit of {config.max_upload_mb:g} MB"), 413

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> tuple[Response, int]:
        return jsonify(error=exc.description or exc.name), exc.code or 500


def devices(models: Mapping[int, ESRT]) -> str:
    """The torch devices the models run on, e.g. "cpu"."""
    return ", ".join(sorted({str(next(m.parameters()).device) for m in models.values()}))
