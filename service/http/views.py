"""A sweep's row as the API and the page show it: a `SweepView` with its links. (The core
knows nothing of the API's models; these were `Service.view` and `Service.links`.)"""

from __future__ import annotations

from service.core import Service
from service.db import SweepRow
from service.http.api import Links, SweepView


def links(service: Service, row: SweepRow) -> Links:
    ui = service.settings.mlflow_ui_url
    exp = f"{ui}/#/experiments/{row.experiment_id}" if ui and row.experiment_id else None
    run = f"{exp}/runs/{row.parent_run_id}" if exp and row.parent_run_id else None
    return Links(
        experiment=exp,
        parent_run=run,
        leaderboard=f"/leaderboard?sweep={row.id}",
        page=f"/board/{row.id}",
        logs=f"/sweeps/{row.id}/logs",
    )


def sweep_view(service: Service, row: SweepRow) -> SweepView:
    return SweepView(
        id=row.id,
        name=row.name,
        status=row.status.value,
        benchmark=row.benchmark,
        submitted_by=row.submitted_by,
        ray_job_id=row.ray_job_id,
        experiment_id=row.experiment_id,
        parent_run_id=row.parent_run_id,
        cancel_requested=row.cancel_requested,
        cancelled_by=row.cancelled_by,
        error=row.error,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        links=links(service, row),
    )


__all__ = ["links", "sweep_view"]
