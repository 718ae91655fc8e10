"""What the console reads from the store: the live list, one bag with its verdicts, the shift summary."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from xscreen.store import schema as t
from xscreen.store.bag import ModelIdentity, check_request_id
from xscreen.store.database import transaction, unavailable_on_error
from xscreen.store.errors import BagNotFound, StoreInputError

MAX_PAGE = 500


def _time(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


@dataclass(frozen=True)
class BagSummary:
    """One row of the live list."""

    request_id: str
    seq: int  # the order bags became visible in; the live list's cursor
    time: datetime.datetime
    source: str
    alarm: bool
    classes: tuple[str, ...]
    top_score: float | None
    n_views: int
    model: ModelIdentity
    reviewed: bool  # it has at least one current verdict


@dataclass(frozen=True)
class BagPage:
    bags: list[BagSummary]  # newest first
    cursor: int  # pass as ``since`` to get only the bags that become visible after this call


@dataclass(frozen=True)
class Verdict:
    id: int
    kind: str  # confirm, false_alarm, missed, missed_removed
    view: int
    detection: int | None  # the detection's index within its view (confirm, false_alarm)
    class_name: str
    box: tuple[float, float, float, float] | None  # x1, y1, x2, y2: drawn boxes (missed)
    reviewer: str  # the reviewer's key id
    time: datetime.datetime
    current: bool  # False once a later verdict replaced it, or a drawn box was removed


@dataclass(frozen=True)
class DetectionInfo:
    view: int
    index: int  # within its view, as in the answer
    class_name: str
    score: float
    box: tuple[float, float, float, float]
    verdict: Verdict | None  # the current one


@dataclass(frozen=True)
class StoredBag:
    summary: BagSummary
    answer: dict
    view_sizes: list[tuple[int, int]]  # (width, height) per view
    detections: list[DetectionInfo]
    missed: list[Verdict]  # current drawn boxes
    history: list[Verdict]  # every verdict on the bag, oldest first


@dataclass(frozen=True)
class ClassCounts:
    detections: int = 0
    confirmed: int = 0
    false_alarms: int = 0
    missed: int = 0


@dataclass(frozen=True)
class ShiftSummary:
    start: datetime.datetime
    end: datetime.datetime
    bags: int
    alarms: int
    alarm_rate: float | None  # alarms / bags; None without bags
    reviewed_bags: int
    per_class: dict[str, ClassCounts] = field(default_factory=dict)
    scores: list[float] = field(default_factory=list)  # every detection's score, ascending


def _verdict(row) -> Verdict:
    box = None if row.x1 is None else (row.x1, row.y1, row.x2, row.y2)
    return Verdict(
        row.id,
        row.kind,
        row.view,
        row.idx,
        row.class_name,
        box,
        row.reviewer,
        _time(row.time_s),
        row.is_current,
    )


def _reviewed():
    v = t.verdicts.c
    return sa.exists().where(v.bag_id == t.bags.c.id, v.is_current.is_(True))


def _summaries(conn: Connection, rows) -> list[BagSummary]:
    ids = [row.id for row in rows]
    classes: dict[int, list[str]] = {i: [] for i in ids}
    if ids:
        c = t.bag_classes.c
        for bag_id, name in conn.execute(sa.select(c.bag_id, c.class_name).where(c.bag_id.in_(ids))):
            classes[bag_id].append(name)
    return [
        BagSummary(
            row.request_id, row.seq, _time(row.time_s), row.source, row.alarm, tuple(sorted(classes[row.id])),
            row.top_score, row.n_views, ModelIdentity(row.model_name, row.model_version, row.model_sha256),
            row.reviewed,
        )
        for row in rows
    ]  # fmt: skip


def _bag_columns(with_answer: bool = False):
    columns = [c for c in t.bags.c if with_answer or c.name != "answer"]
    return (*columns, _reviewed().label("reviewed"))


def purge_candidates(conn: Connection, before: float | None, request_ids: list[str] | None) -> list:
    b = t.bags.c
    query = sa.select(b.id, b.request_id)
    if request_ids is not None:
        query = query.where(b.request_id.in_(request_ids))
    elif before is not None:
        query = query.where(b.time_s < before)
    return conn.execute(query.order_by(b.time_s, b.id)).all()


class StoreQueries:
    """The read side of ``ScanStore`` (a mixin: it uses the store's engine and readiness check)."""

    def recent_bags(
        self,
        limit: int = 50,
        *,
        since: int | None = None,
        before: int | None = None,
        alarm_only: bool = False,
        class_name: str | None = None,
        unreviewed: bool = False,
    ) -> BagPage:
        """The newest stored bags first, up to ``limit`` (1-500). ``since``: only bags after that cursor
        (polling); ``before``: only bags before that seq (paging back). Filters: alarms only, bags
        with ``class_name`` among their classes, bags without any current verdict."""
        if not 1 <= limit <= MAX_PAGE:
            raise StoreInputError(f"limit must be 1-{MAX_PAGE}, got {limit}")
        b = t.bags.c
        query = sa.select(*_bag_columns()).where(b.state == "stored")
        if since is not None:
            query = query.where(b.seq > since)
        if before is not None:
            query = query.where(b.seq < before)
        if alarm_only:
            query = query.where(b.alarm.is_(True))
        if class_name is not None:
            c = t.bag_classes.c
            query = query.where(sa.exists().where(c.bag_id == b.id, c.class_name == class_name))
        if unreviewed:
            query = query.where(~_reviewed())
        self._ensure_ready()
        with unavailable_on_error(), transaction(self.engine) as conn:
            rows = conn.execute(query.order_by(b.seq.desc()).limit(limit)).all()
            cursor = conn.execute(
                sa.select(t.counters.c.value).where(t.counters.c.name == "seq")
            ).scalar_one()
            return BagPage(_summaries(conn, rows), int(cursor))

    def get_bag(self, request_id: str) -> StoredBag:
        """One stored bag with its answer, detections and verdicts (BagNotFound if not stored)."""
        check_request_id(request_id)
        self._ensure_ready()
        b = t.bags.c
        with unavailable_on_error(), transaction(self.engine) as conn:
            query = sa.select(*_bag_columns(True)).where(b.request_id == request_id, b.state == "stored")
            row = conn.execute(query).first()
            if row is None:
                raise BagNotFound(f"no stored bag {request_id}")
            return _stored_bag(conn, row, _summaries(conn, [row])[0])

    def shift_summary(self, start: datetime.datetime, end: datetime.datetime) -> ShiftSummary:
        """The figures of the bags whose time is in [start, end): alarms, reviews, verdicts per class."""
        if start.tzinfo is None or end.tzinfo is None or end <= start:
            raise StoreInputError("a shift is [start, end) with time zones and end after start")
        self._ensure_ready()
        with unavailable_on_error(), transaction(self.engine) as conn:
            return _shift_summary(conn, start, end)


def _stored_bag(conn: Connection, row, summary: BagSummary) -> StoredBag:
    d, v = t.detections.c, t.verdicts.c
    detection_rows = conn.execute(sa.select(t.detections).where(d.bag_id == row.id).order_by(d.view, d.idx))
    query = (
        sa.select(*t.verdicts.c, d.idx)
        .select_from(t.verdicts.outerjoin(t.detections, v.detection_id == d.id))
        .where(v.bag_id == row.id)
        .order_by(v.id)
    )
    history = [_verdict(r) for r in conn.execute(query)]
    current = {(x.view, x.detection): x for x in history if x.current and x.detection is not None}
    detections = [
        DetectionInfo(
            r.view, r.idx, r.class_name, r.score, (r.x1, r.y1, r.x2, r.y2), current.get((r.view, r.idx))
        )
        for r in detection_rows
    ]
    missed = [x for x in history if x.current and x.kind == "missed"]
    sizes = [(int(w), int(h)) for w, h in row.view_sizes]
    return StoredBag(summary, dict(row.answer), sizes, detections, missed, history)


def _shift_summary(conn: Connection, start: datetime.datetime, end: datetime.datetime) -> ShiftSummary:
    b, d, v = t.bags.c, t.detections.c, t.verdicts.c
    window = sa.and_(b.state == "stored", b.time_s >= start.timestamp(), b.time_s < end.timestamp())
    in_window = sa.select(b.id).where(window).scalar_subquery()
    bags, alarms = conn.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(sa.case((b.alarm.is_(True), 1), else_=0)), 0))
        .where(window)
    ).one()  # fmt: skip
    reviewed = conn.execute(
        sa.select(sa.func.count(sa.distinct(v.bag_id))).where(v.is_current.is_(True), v.bag_id.in_(in_window))
    ).scalar_one()
    counts: dict[str, dict[str, int]] = {}
    for name, n in conn.execute(
        sa.select(d.class_name, sa.func.count()).where(d.bag_id.in_(in_window)).group_by(d.class_name)
    ):
        counts.setdefault(name, {})["detections"] = n
    names = {"confirm": "confirmed", "false_alarm": "false_alarms", "missed": "missed"}
    for name, kind, n in conn.execute(
        sa.select(v.class_name, v.kind, sa.func.count())
        .where(v.is_current.is_(True), v.bag_id.in_(in_window))
        .group_by(v.class_name, v.kind)
    ):
        if kind in names:
            counts.setdefault(name, {})[names[kind]] = n
    scores = conn.execute(sa.select(d.score).where(d.bag_id.in_(in_window)).order_by(d.score)).scalars().all()
    return ShiftSummary(
        start, end, int(bags), int(alarms), alarms / bags if bags else None, int(reviewed),
        {name: ClassCounts(**c) for name, c in sorted(counts.items())}, [float(s) for s in scores],
    )  # fmt: skip
