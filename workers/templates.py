"""A tenant's catalogue mark templates (`pipeline.catalogue`): the row in `mark_templates`,
alpha and a*W as one NPZ in storage (`templates/<tenant id>/<template id>.npz`).

Templates never change once written, so a worker keeps the ones it has read
(`tenant_templates`); a deleted one drops out with its row.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from clearmark.pipeline.catalogue import Template
from clearmark.settings import Settings
from clearmark.workers.db import MarkTemplate, Tenant, new_id, session_scope
from clearmark.workers.jobs import ensure_tenant
from clearmark.workers.storage import delete_uri, get_storage, read_uri


def to_npz(t: Template) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, alpha=t.alpha.astype(np.float32), premult=t.premult.astype(np.float32))
    return buf.getvalue()


def save(session: Session, tenant_name: str, t: Template, sources: list[str]) -> MarkTemplate:
    """Store `t` for the tenant (created if new): its arrays in storage, then its row."""
    tenant = ensure_tenant(session, tenant_name)
    template_id = new_id()
    uri = get_storage().put(f"templates/{tenant.id}/{template_id}.npz", to_npz(t))
    x0, y0, x1, y1 = t.box
    row = MarkTemplate(
        id=template_id,
        tenant_id=tenant.id,
        data_uri=uri,
        rule=t.rule,
        frame_height=t.frame[0],
        frame_width=t.frame[1],
        box_x0=x0,
        box_y0=y0,
        box_x1=x1,
        box_y1=y1,
        images=t.images,
        quality=t.quality,
        sources=sources,
    )
    session.add(row)
    session.flush()
    return row


@lru_cache(maxsize=64)
def _arrays(data_uri: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(io.BytesIO(read_uri(data_uri))) as z:
        return z["alpha"], z["premult"]


def load(row: MarkTemplate) -> Template:
    alpha, premult = _arrays(row.data_uri)
    return Template(
        alpha,
        premult,
        (row.box_x0, row.box_y0, row.box_x1, row.box_y1),
        (row.frame_height, row.frame_width),
        row.rule,
        row.images,
        row.quality,
    )


def listed(session: Session, tenant_name: str | None = None) -> list[tuple[MarkTemplate, str]]:
    """(template, tenant name), newest first; one tenant's with `tenant_name`."""
    query = select(MarkTemplate, Tenant.name).join(Tenant, Tenant.id == MarkTemplate.tenant_id)
    if tenant_name is not None:
        query = query.where(Tenant.name == tenant_name)
    rows = session.execute(query.order_by(MarkTemplate.created_at.desc())).all()
    return [(t, name) for t, name in rows]


def delete(session: Session, template_id: str) -> bool:
    row = session.get(MarkTemplate, template_id)
    if row is None:
        return False
    session.delete(row)
    session.flush()
    delete_uri(row.data_uri)
    return True


def tenant_templates(settings: Settings, tenant_id: str) -> list[tuple[str, Template]]:
    """(id, template) of every template of the tenant, newest first (empty for most)."""
    with session_scope(settings.database_url) as session:
        rows = session.scalars(
            select(MarkTemplate)
            .where(MarkTemplate.tenant_id == tenant_id)
            .order_by(MarkTemplate.created_at.desc())
        ).all()
        return [(row.id, load(row)) for row in rows]
