"""The job document: a job as `GET /v1/jobs/{id}` shows it, the upload and retry answers
return it and a webhook's `job` carries it. Its pydantic models give the OpenAPI document
(and so generated clients) every field and type."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from clearmark.workers.db import (
    JPEG_METRIC_FIELDS,
    METHOD_FIELD,
    METRIC_FIELDS,
    WITH_RESULT,
    Job,
    JobStatus,
    Priority,
)

# Times are ISO 8601 text as Python writes it ("+00:00", not pydantic's "Z").
Time = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]


class JobError(BaseModel):
    code: str = Field(description="e.g. corrupt_image, too_many_attempts (the README lists them)")
    message: str | None


class JobMetricsDocument(BaseModel):
    """What the pipeline measured; times in milliseconds per stage (`ms_total`: all of them)."""

    model_config = ConfigDict(extra="forbid")  # every metric is declared here

    width: int
    height: int
    mask_area_fraction: float
    detector_confidence: float
    residual_score: float
    ms_decode: float
    ms_detect: float
    ms_remove: float
    ms_gate: float | None = Field(description="null for jobs finished before it was recorded")
    ms_encode: float
    ms_residual: float | None = Field(description="null for jobs finished before it was recorded")
    ms_total: float
    jpeg_exact: bool | None = Field(description="JPEG results: the upload's coefficients were kept")
    jpeg_blocks_changed: int | None = Field(description="JPEG results: the MCUs that changed")
    method: str | None = Field(
        description="`template:<id>` when one of the tenant's catalogue mark templates cleaned the "
        "photo; null for the single-image pipeline",
    )


class JobLinks(BaseModel):
    self: str
    result: str | None = Field(description="The cleaned image, once the job has a result")
    mask: str | None = Field(description="The mask of what changed, once the job has a result")


class JobDocument(BaseModel):
    id: str
    status: JobStatus
    priority: Priority
    source_name: str | None = Field(description="The file's name as submitted (upload, submit, bulk), if any")
    source_sha256: str | None
    idempotency_key: str | None
    attempts: int
    pipeline_version: str | None
    created_at: Time
    updated_at: Time
    finished_at: Time | None
    error: JobError | None = Field(description="Why a failed job failed")
    review_reason: str | None = Field(description="Why the job needs review (needs_review only)")
    metrics: JobMetricsDocument | None = Field(description="Once the job has a result")
    links: JobLinks
    group: str | None = Field(description="The upload's `group`, if it named one")


class JobPage(BaseModel):
    jobs: list[JobDocument]
    next_cursor: str | None = Field(description="Pass it back as `cursor` for the next page")


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def job_document(job: Job, base_url: str = "") -> JobDocument:
    """The job's document (links are relative without a base URL)."""
    path = f"{base_url.rstrip('/')}/v1/jobs/{job.id}"
    done = JobStatus(job.status) in WITH_RESULT and job.result_uri
    m = job.metrics
    return JobDocument(
        id=job.id,
        status=JobStatus(job.status),
        priority=Priority(job.priority),
        source_name=job.source_name,
        source_sha256=job.source_sha256,
        idempotency_key=job.idempotency_key,
        attempts=job.attempts,
        pipeline_version=job.pipeline_version,
        created_at=job.created_at.isoformat(),
        updated_at=job.updated_at.isoformat(),
        finished_at=iso(job.finished_at),
        error=JobError(code=job.error_code, message=job.error_message) if job.error_code else None,
        review_reason=job.review_reason if job.status == JobStatus.needs_review.value else None,
        metrics=(
            JobMetricsDocument(
                **{name: getattr(m, name) for name in (*METRIC_FIELDS, *JPEG_METRIC_FIELDS, METHOD_FIELD)}
            )
            if m
            else None
        ),
        links=JobLinks(
            self=path,
            result=f"{path}/result" if done else None,
            mask=f"{path}/mask" if done and job.mask_uri else None,
        ),
        group=job.catalogue_group,
    )
