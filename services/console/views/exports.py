"""Export the current Usage view (CSV or XLSX): started by a form, followed on a progress page, downloaded."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.datastructures import ImmutableMultiDict
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response

from meterwire.reporting.v1 import reporting_service_pb2 as pb
from services.console.context import Console, Viewer
from services.console.exports import FORMATS, ExportJob, ExportShape
from services.console.query import ViewQuery
from services.console.views.usage import selection_of
from services.errors import InvalidArgumentError
from services.reporting.filters import groupings
from services.usage_terms.query import GRANULARITIES

SHAPES = ("grouped", "events")
MEDIA_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}


async def export_start(console: Console, request: Request, viewer: Viewer) -> Response:
    form: dict[str, str] = request.state.form
    file_format, shape_name = form.get("format", "csv"), form.get("shape", "grouped")
    if file_format not in FORMATS:
        raise InvalidArgumentError("format", f"{file_format!r} is not one of {', '.join(FORMATS)}")
    if shape_name not in SHAPES:
        raise InvalidArgumentError("shape", f"{shape_name!r} is not one of {', '.join(SHAPES)}")
    query = ViewQuery.from_params(ImmutableMultiDict(parse_qsl(form.get("view", ""), keep_blank_values=False)))
    selection = selection_of(query, viewer)  # scoped as on the page: another environment is refused here too
    if shape_name == "grouped":
        shape = ExportShape(
            groupings([query.group_by()], field="by"),
            (query.by,),
            GRANULARITIES[query.granularity_name()],
            query.zone,
        )
    else:
        shape = ExportShape((), (), pb.GRANULARITY_UNSPECIFIED, query.zone)
    job = await console.exports.start(
        owner=viewer.session.session_id, selection=selection, shape=shape, file_format=file_format
    )
    return RedirectResponse(f"/exports/{job.job_id}", status_code=303)


def _job(console: Console, request: Request, viewer: Viewer) -> ExportJob:
    return console.exports.get(request.path_params["job_id"], owner=viewer.session.session_id)


async def export_page(console: Console, request: Request, viewer: Viewer) -> Response:
    job = _job(console, request, viewer)
    return console.render(request, "export.html", viewer, title="Export", job=job)


async def export_status(console: Console, request: Request, viewer: Viewer) -> Response:
    job = _job(console, request, viewer)
    return JSONResponse(
        {
            "rows": job.rows,
            "progress": round(job.progress, 4),
            "done": job.done,
            "error": job.error,
            "file": f"/exports/{job.job_id}/file" if job.done and not job.error else "",
        }
    )


async def export_download(console: Console, request: Request, viewer: Viewer) -> Response:
    job = _job(console, request, viewer)
    if not job.done or job.error:
        raise InvalidArgumentError("export", job.error or "not finished yet; wait for the progress bar")
    return FileResponse(job.path, media_type=MEDIA_TYPES[job.file_format], filename=job.filename)
