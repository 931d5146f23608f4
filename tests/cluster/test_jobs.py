"""The SMS channel's periodic work as leased jobs on one node: the embedded SQLite store (and
PostgreSQL) runs the same jobs as a cluster of one, started and stopped with the channel."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from callcenter import jobs
from callcenter.app import build_services
from callcenter.cases.lifecycle import CaseStatus
from callcenter.db import migrate
from callcenter.db.tables import ClusterLeaseRow, OutboxRow
from callcenter.db.tables_sms import SupervisorTaskRow
from callcenter.service.sms_channel import SmsRuntime
from callcenter.service.tasks import TaskKind
from tests.cluster.conftest import eventually, node_settings
from tests.sms_intake.conftest import GRID_BUJI, ROSTER, SHIFT_LEADER
from tests.voice_calls.conftest import make_case


async def test_one_node_runs_the_sms_jobs_under_leases_and_hands_them_back(database_url: str,
                                                                           tmp_path: Path) -> None:
    roster = tmp_path / "roster.toml"
    roster.write_text(ROSTER, encoding="utf-8")
    base = node_settings(database_url, tmp_path, "only")
    settings = base.model_copy(update={
        "sms": base.sms.model_copy(update={"roster_file": str(roster), "task_escalation_minutes": 0.01}),
        "jobs": base.jobs.model_copy(update={"task_escalation_seconds": 0.1})})
    migrate.upgrade(database_url)
    services = build_services(settings)
    cluster, sms = services.cluster, services.sms
    assert cluster is not None and sms is not None
    runtime = SmsRuntime(sms, settings, cluster=cluster)  # smpp.host empty: the console gateway
    await cluster.start()
    try:
        await runtime.start()
        assert sms.outbox.leased_sweeps
        case = await make_case(services, "13812345679", CaseStatus.DRAFT)
        task = await sms.tasks.create(case_number=case.number, kind=TaskKind.CHECK, actor="platform:p",
                                      grid=GRID_BUJI)

        async def escalated() -> bool:
            async with services.sessions() as session:
                row = await session.scalar(select(SupervisorTaskRow).where(SupervisorTaskRow.code == task.code))
            return row is not None and row.escalated_at is not None
        await eventually(escalated, timeout=15)
        async with services.sessions() as session:
            leader = (await session.scalars(select(OutboxRow).where(OutboxRow.recipient == SHIFT_LEADER))).all()
            leases = dict((await session.execute(select(ClusterLeaseRow.name, ClusterLeaseRow.holder))).all())
        assert [m.template for m in leader] == ["task_escalation"]
        assert {name: leases.get(name) for name in (jobs.TASK_ESCALATION, jobs.OUTBOX_IN_DOUBT, jobs.OUTBOX_SWEEP,
                                                    jobs.RATE_WINDOWS_PRUNE)} == dict.fromkeys(
            (jobs.TASK_ESCALATION, jobs.OUTBOX_IN_DOUBT, jobs.OUTBOX_SWEEP, jobs.RATE_WINDOWS_PRUNE), "only")
        metrics = {m["name"]: m for m in (await services.metrics.snapshot())["metrics"]}
        held = {s["labels"]["job"]: s["value"] for s in metrics["cluster_job_held"]["samples"]}
        assert held[jobs.TASK_ESCALATION] == 1.0
        await runtime.stop()
        assert {job.name for job in cluster.jobs} == {"cluster-housekeeping"}, "the channel's jobs left with it"
    finally:
        await runtime.stop()
        await cluster.stop()
        await services.close()
