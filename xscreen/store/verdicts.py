"""Reviewers' verdicts: a detection confirmed or marked a false alarm, a missed object drawn as a box.

Every verdict row is kept. A later verdict on the same detection clears ``is_current`` on the earlier
one and points ``replaced_by`` at itself, so the history says who said what, when; the console, the
summary and the training export read the current verdicts only.
"""

from __future__ import annotations

import math
import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from xscreen.store import schema as t
from xscreen.store.bag import check_request_id
from xscreen.store.database import transaction, unavailable_on_error
from xscreen.store.errors import BagNotFound, StoreError, StoreInputError
from xscreen.store.queries import Verdict, _verdict

DETECTION_VERDICTS = ("confirm", "false_alarm")
MAX_REVIEWER_LENGTH = 128


def _check_reviewer(reviewer: object) -> str:
    if not isinstance(reviewer, str) or not 0 < len(reviewer) <= MAX_REVIEWER_LENGTH:
        raise StoreInputError(f"a reviewer key id must be 1-{MAX_REVIEWER_LENGTH} characters")
    return reviewer


def _stored_bag(conn: Connection, request_id: str):
    b = t.bags.c
    row = conn.execute(
        sa.select(b.id, b.n_views, b.view_sizes).where(b.request_id == request_id, b.state == "stored")
    ).first()
    if row is None:
        raise BagNotFound(f"no stored bag {request_id}")
    return row


def _read_verdict(conn: Connection, verdict_id: int) -> Verdict:
    v, d = t.verdicts.c, t.detections.c
    query = sa.select(*t.verdicts.c, d.idx).select_from(
        t.verdicts.outerjoin(t.detections, v.detection_id == d.id)
    )
    return _verdict(conn.execute(query.where(v.id == verdict_id)).one())


def _replace_current(conn: Connection, bag_id: int, detection, kind: str, reviewer: str) -> int:
    """The new current verdict on ``detection``; the earlier current one (if any) points to it."""
    v = t.verdicts.c
    earlier = conn.execute(
        sa.select(v.id).where(v.detection_id == detection.id, v.is_current.is_(True))
    ).scalars().all()  # fmt: skip
    if earlier:
        conn.execute(sa.update(t.verdicts).where(v.id.in_(earlier)).values(is_current=False))
    values = {
        "bag_id": bag_id, "detection_id": detection.id, "kind": kind, "view": detection.view,
        "class_name": detection.class_name, "reviewer": reviewer, "time_s": time.time(), "is_current": True,
    }  # fmt: skip
    new_id = conn.execute(sa.insert(t.verdicts).values(values).returning(v.id)).scalar_one()
    if earlier:
        conn.execute(sa.update(t.verdicts).where(v.id.in_(earlier)).values(replaced_by=new_id))
    return new_id


def _check_box(box, size: tuple[int, int]) -> tuple[float, float, float, float]:
    try:
        x1, y1, x2, y2 = (float(c) for c in box)
    except (TypeError, ValueError):
        raise StoreInputError("a box is four numbers x1, y1, x2, y2") from None
    width, height = size
    if not all(math.isfinite(c) for c in (x1, y1, x2, y2)):
        raise StoreInputError("a box's corners must be finite numbers")
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise StoreInputError(f"a box needs 0 <= x1 < x2 <= {width} and 0 <= y1 < y2 <= {height}")
    return x1, y1, x2, y2


class StoreVerdicts:
    """The verdict side of ``ScanStore`` (a mixin: it uses the store's engine, config and readiness)."""

    def set_detection_verdict(
        self, request_id: str, view: int, detection: int, verdict: str, reviewer: str
    ) -> Verdict:
        """Confirm a detection or mark it a false alarm (``verdict``: confirm / false_alarm); it replaces
        the detection's earlier verdict. ``detection`` is its index within ``view`` in the answer."""
        check_request_id(request_id)
        if verdict not in DETECTION_VERDICTS:
            raise StoreInputError(f"a detection's verdict is one of {', '.join(DETECTION_VERDICTS)}")
        _check_reviewer(reviewer)
        self._ensure_ready()
        d = t.detections.c
        for attempt in range(3):  # two reviewers at once: the unique index refuses one; it tries again
            try:
                with unavailable_on_error(), transaction(self.engine, write=True) as conn:
                    bag = _stored_bag(conn, request_id)
                    # the detection's row locked (PostgreSQL; SQLite's write lock is whole) to the commit:
                    # reviewers at once on one detection take turns, the later one replacing the earlier
                    where = (d.bag_id == bag.id, d.view == view, d.idx == detection)
                    found = conn.execute(sa.select(t.detections).where(*where).with_for_update()).first()
                    if found is None:
                        raise BagNotFound(f"bag {request_id} has no detection {detection} in view {view}")
                    new_id = _replace_current(conn, bag.id, found, verdict, reviewer)
                    return _read_verdict(conn, new_id)
            except sa.exc.IntegrityError:
                if attempt == 2:
                    raise StoreError(
                        "other reviewers keep changing this detection's verdict; try again"
                    ) from None
        raise AssertionError("unreachable")

    def add_missed_object(self, request_id: str, view: int, box, class_name: str, reviewer: str) -> Verdict:
        """A threat the model missed, drawn as ``box`` (x1, y1, x2, y2 in the view's pixels)."""
        check_request_id(request_id)
        _check_reviewer(reviewer)
        if class_name not in self.config.class_names:
            raise StoreInputError(
                f"unknown class {class_name!r}; one of: {', '.join(self.config.class_names)}"
            )
        self._ensure_ready()
        with unavailable_on_error(), transaction(self.engine, write=True) as conn:
            bag = _stored_bag(conn, request_id)
            if not isinstance(view, int) or not 0 <= view < bag.n_views:
                raise StoreInputError(f"bag {request_id} has views 0-{bag.n_views - 1}, not {view!r}")
            x1, y1, x2, y2 = _check_box(box, tuple(bag.view_sizes[view]))
            values = {
                "bag_id": bag.id, "kind": "missed", "view": view, "class_name": class_name,
                "x1": x1, "y1": y1, "x2": x2, "y2": y2, "reviewer": reviewer, "time_s": time.time(),
                "is_current": True,
            }  # fmt: skip
            new_id = conn.execute(
                sa.insert(t.verdicts).values(values).returning(t.verdicts.c.id)
            ).scalar_one()
            return _read_verdict(conn, new_id)

    def remove_missed_object(self, request_id: str, verdict_id: int, reviewer: str) -> Verdict:
        """Take back a drawn box: it stops being current, and a ``missed_removed`` row says who did it."""
        check_request_id(request_id)
        _check_reviewer(reviewer)
        self._ensure_ready()
        v = t.verdicts.c
        with unavailable_on_error(), transaction(self.engine, write=True) as conn:
            bag = _stored_bag(conn, request_id)
            row = conn.execute(
                sa.select(t.verdicts).where(
                    v.id == verdict_id, v.bag_id == bag.id, v.kind == "missed", v.is_current.is_(True)
                )
            ).first()
            if row is None:
                raise BagNotFound(f"bag {request_id} has no current drawn box {verdict_id}")
            values = {
                "bag_id": bag.id, "kind": "missed_removed", "view": row.view, "class_name": row.class_name,
                "x1": row.x1, "y1": row.y1, "x2": row.x2, "y2": row.y2, "reviewer": reviewer,
                "time_s": time.time(), "is_current": False,
            }  # fmt: skip
            new_id = conn.execute(sa.insert(t.verdicts).values(values).returning(v.id)).scalar_one()
            conn.execute(
                sa.update(t.verdicts).where(v.id == verdict_id).values(is_current=False, replaced_by=new_id)
            )
            return _read_verdict(conn, new_id)
