"""What a board reads of a store, through one of two readers with the same answers:
`SqlReader` on a database store (MLflow's tables through `runners.board.tables`, MLflow not
imported), `ClientReader` on a tracking server (`MlflowClient.search_runs`, page by page).
tests/unit/test_leaderboard.py holds them equal."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from runners.board.board import (
    READ_KEYS,
    Budget,
    SweepInfo,
    TrialRecord,
    budget,
    budgets,
    sweep_info_of,
)
from schemas.names import Phase, Tag, tag_filter

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # MLflow's database stores
TRIAL_TAGS = (Tag.STRATEGY, Tag.SWEEP_ID, Tag.TRIAL_ID, Tag.PHASE, Tag.CONFIRMS_TRIAL)
SWEEP_TAGS = (Tag.SWEEP_ID, Tag.STRATEGIES, Tag.OBJECTIVES, Tag.SELECTION, Tag.CONFIRM_SEEDS)
SWEEP_PARAMS = ("epochs", "confirm_max_configs")
PAGE = 5000


def is_database_uri(uri: str) -> bool:
    return uri.split(":", 1)[0].split("+", 1)[0].lower() in DATABASE_SCHEMES


class Reader(Protocol):
    def close(self) -> None: ...

    def sweeps(self, experiment_id: str, sweep_id: str | None = None) -> list[SweepInfo]: ...

    def trials(
        self,
        experiment_id: str,
        sweep_ids: Sequence[str] | None,
        keys: Iterable[str] = READ_KEYS,
        confirm_keys: Iterable[str] = READ_KEYS,
        *,
        phase: str | None = None,
        trial_ids: Sequence[str] | None = None,
    ) -> list[TrialRecord]: ...

    def budgets(
        self, experiment_id: str, sweep_ids: Sequence[str]
    ) -> dict[str, dict[str, Budget]]: ...

    def metrics_of(
        self, run_ids: Sequence[str], keys: Iterable[str]
    ) -> dict[str, dict[str, float]]: ...

    def params_of(self, run_ids: Sequence[str]) -> dict[str, dict[str, str]]: ...


def _record(
    run_id: str, status: str, start: Any, tags: dict[str, str], metrics: dict[str, float]
) -> TrialRecord:
    return TrialRecord(
        run_id=run_id,
        status=status,
        start_time=int(start or 0),
        sweep_id=tags.get(Tag.SWEEP_ID, ""),
        strategy=tags.get(Tag.STRATEGY, ""),
        trial_id=tags.get(Tag.TRIAL_ID, run_id),
        phase=tags.get(Tag.PHASE, Phase.SEARCH),
        confirms_trial=tags.get(Tag.CONFIRMS_TRIAL),
        metrics=dict(sorted(metrics.items())),
    )


def _newest_first(infos: Iterable[SweepInfo]) -> list[SweepInfo]:
    return sorted(infos, key=lambda s: (-s.start_time, s.sweep_id))


class SqlReader:
    """A database store's MLflow tables (`runners.board.tables`)."""

    def __init__(self, uri: str) -> None:
        from runners.board.tables import Tables

        self.tables = Tables(uri)

    def close(self) -> None:
        self.tables.close()

    def sweeps(self, experiment_id: str, sweep_id: str | None = None) -> list[SweepInfo]:
        runs = self.tables.runs(
            [experiment_id],
            kind="sweep",
            sweep_ids=None if sweep_id is None else [sweep_id],
            tag_keys=SWEEP_TAGS,
            param_keys=SWEEP_PARAMS,
        )
        return _newest_first(
            sweep_info_of(r.run_id, r.status, r.start_time, r.tags, r.params) for r in runs
        )

    def trials(
        self,
        experiment_id: str,
        sweep_ids: Sequence[str] | None,
        keys: Iterable[str] = READ_KEYS,
        confirm_keys: Iterable[str] = READ_KEYS,
        *,
        phase: str | None = None,
        trial_ids: Sequence[str] | None = None,
    ) -> list[TrialRecord]:
        runs = self.tables.runs(
            [experiment_id],
            kind="trial",
            sweep_ids=sweep_ids,
            phase=phase,
            trial_ids=trial_ids,
            tag_keys=TRIAL_TAGS,
            metric_keys=keys,
            confirm_metric_keys=confirm_keys,
        )
        return [_record(r.run_id, r.status, r.start_time, r.tags, r.metrics) for r in runs]

    def budgets(self, experiment_id: str, sweep_ids: Sequence[str]) -> dict[str, dict[str, Budget]]:
        out: dict[str, dict[str, Budget]] = {s: {} for s in sweep_ids}
        for (sweep, strategy), (n, e, sec) in self.tables.search_budgets(
            experiment_id, sweep_ids
        ).items():
            out.setdefault(sweep, {})[strategy] = budget(n, e, sec)
        return out

    def metrics_of(
        self, run_ids: Sequence[str], keys: Iterable[str]
    ) -> dict[str, dict[str, float]]:
        return self.tables.metrics_of(run_ids, keys)

    def params_of(self, run_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        return self.tables.params_of(run_ids)


class ClientReader:
    """A store through `MlflowClient` (a tracking server; any store in tests)."""

    def __init__(self, client: MlflowClient) -> None:
        self.client = client

    def close(self) -> None:
        return None

    def _search(self, experiment_id: str, flt: str) -> list[Any]:
        out: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs(
                [experiment_id], filter_string=flt, max_results=PAGE, page_token=token
            )
            out += list(page)
            token = page.token
            if not token:
                return out

    def sweeps(self, experiment_id: str, sweep_id: str | None = None) -> list[SweepInfo]:
        flt = tag_filter(Tag.KIND, "sweep")
        if sweep_id is not None:
            flt += f" and {tag_filter(Tag.SWEEP_ID, sweep_id)}"
        return _newest_first(
            sweep_info_of(
                r.info.run_id, r.info.status, r.info.start_time, r.data.tags, r.data.params
            )
            for r in self._search(experiment_id, flt)
        )

    def trials(
        self,
        experiment_id: str,
        sweep_ids: Sequence[str] | None,
        keys: Iterable[str] = READ_KEYS,
        confirm_keys: Iterable[str] = READ_KEYS,
        *,
        phase: str | None = None,
        trial_ids: Sequence[str] | None = None,
    ) -> list[TrialRecord]:
        found = self._trials(experiment_id, sweep_ids, keys, confirm_keys)
        return [
            t
            for t in found
            if (phase is None or t.phase == phase)
            and (trial_ids is None or t.trial_id in trial_ids)
        ]

    def budgets(self, experiment_id: str, sweep_ids: Sequence[str]) -> dict[str, dict[str, Budget]]:
        found = self._trials(experiment_id, sweep_ids, ("epochs_run", "train_seconds"), ())
        return {s: budgets(t for t in found if t.sweep_id == s) for s in sweep_ids}

    def _trials(
        self,
        experiment_id: str,
        sweep_ids: Sequence[str] | None,
        keys: Iterable[str],
        confirm_keys: Iterable[str],
    ) -> list[TrialRecord]:
        base = tag_filter(Tag.KIND, "trial")
        filters = (
            [base]
            if sweep_ids is None
            else [f"{base} and {tag_filter(Tag.SWEEP_ID, s)}" for s in sweep_ids]
        )
        keys, confirm_keys = set(keys), set(confirm_keys)
        out = []
        for flt in filters:
            for run in self._search(experiment_id, flt):
                tags, m = run.data.tags, run.data.metrics
                wanted = keys | confirm_keys if tags.get(Tag.PHASE) == Phase.CONFIRM else keys
                out.append(
                    _record(
                        run.info.run_id,
                        run.info.status,
                        run.info.start_time,
                        tags,
                        {k: float(v) for k, v in m.items() if k in wanted},
                    )
                )
        return out

    def metrics_of(
        self, run_ids: Sequence[str], keys: Iterable[str]
    ) -> dict[str, dict[str, float]]:
        keys = set(keys)
        return {
            i: {k: float(v) for k, v in self.client.get_run(i).data.metrics.items() if k in keys}
            for i in run_ids
        }

    def params_of(self, run_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        return {i: dict(self.client.get_run(i).data.params) for i in run_ids}


def with_metrics(
    trials: list[TrialRecord], extra: dict[str, dict[str, float]]
) -> list[TrialRecord]:
    """`trials` with the metrics of `extra` (by run id) added."""
    return [
        dataclasses.replace(t, metrics=dict(sorted({**t.metrics, **extra[t.run_id]}.items())))
        if t.run_id in extra
        else t
        for t in trials
    ]


__all__ = [
    "ClientReader",
    "Reader",
    "SqlReader",
    "is_database_uri",
    "with_metrics",
]
