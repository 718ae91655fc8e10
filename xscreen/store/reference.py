"""The reference score distribution of the console's drift flag: the detection scores of the first stored
bags of one model (docs/console.md "Drift").

The model card records no score distribution (only its operating point), so the reference is what the
site itself saw first with the model: the earliest ``n_bags`` bags in the store answered by weights of
that SHA-256. Retention evicts the oldest bags, so the reference moves forward once they go.
"""

from __future__ import annotations

import sqlalchemy as sa

from xscreen.store import schema as t
from xscreen.store.database import transaction, unavailable_on_error
from xscreen.store.errors import StoreInputError
from xscreen.store.store import ScanStore


def latest_model_sha256(store: ScanStore) -> str | None:
    """The SHA-256 of the weights that answered the newest stored bag (None with no bag)."""
    b = t.bags.c
    store._ensure_ready()
    with unavailable_on_error(), transaction(store.engine) as conn:
        return conn.execute(
            sa.select(b.model_sha256).where(b.state == "stored").order_by(b.seq.desc()).limit(1)
        ).scalar()


def reference_scores(store: ScanStore, model_sha256: str, n_bags: int) -> tuple[int, list[float]]:
    """(bags used, their detections' scores ascending) of the first ``n_bags`` stored bags of a model."""
    if not 1 <= n_bags <= 100_000:
        raise StoreInputError("the reference takes 1-100000 bags")
    b, d = t.bags.c, t.detections.c
    first = (
        sa.select(b.id)
        .where(b.state == "stored", b.model_sha256 == model_sha256)
        .order_by(b.seq)
        .limit(n_bags)
        .subquery()
    )
    store._ensure_ready()
    with unavailable_on_error(), transaction(store.engine) as conn:
        used = conn.execute(sa.select(sa.func.count()).select_from(first)).scalar_one()
        scores = conn.execute(
            sa.select(d.score).where(d.bag_id.in_(sa.select(first.c.id))).order_by(d.score)
        ).scalars().all()  # fmt: skip
    return int(used), [float(s) for s in scores]
