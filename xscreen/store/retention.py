"""Room for a new bag, made before it is written: the oldest bags evicted past the count, byte and age limits.

Every step here runs in the store's locked write transaction (``database.transaction(locked=True)``), so
replicas sharing one index and one folder take turns. A bag's row (with its size) exists before its files
are written and its files are deleted before its row, so the bytes counted in the index are never fewer
than those on disk, and the index never counts more than the byte limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from xscreen.store import schema as t
from xscreen.store.bag import EncodedBag
from xscreen.store.config import StoreConfig
from xscreen.store.files import BagFolders


class DuplicateBag(Exception):
    """A bag with this request id is already in the index."""


@dataclass(frozen=True)
class Usage:
    bags: int  # stored and being written
    bytes: int


def usage(conn: Connection) -> Usage:
    count, total = conn.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(t.bags.c.bytes), 0))
    ).one()
    return Usage(int(count), int(total))


def _candidates(conn: Connection, now: float, config: StoreConfig) -> Iterator[tuple[sa.Row, bool]]:
    """(row, abandoned) of eviction candidates, first to go first: writes abandoned by a replica that died
    (reserved over ``stale_write_s`` ago), then stored bags oldest first."""
    b = t.bags.c
    columns = (b.id, b.request_id, b.bytes, b.time_s)
    stale = sa.and_(b.state == "writing", b.reserved_s < now - config.stale_write_s)
    for row in conn.execute(sa.select(*columns).where(stale)):
        yield row, True
    last = (float("-inf"), 0)
    while True:  # pages of 256, by (time_s, id)
        after = sa.or_(b.time_s > last[0], sa.and_(b.time_s == last[0], b.id > last[1]))
        query = sa.select(*columns).where(b.state == "stored", after).order_by(b.time_s, b.id).limit(256)
        page = conn.execute(query).all()
        if not page:
            return
        for row in page:
            yield row, False
        last = (page[-1].time_s, page[-1].id)


def delete_rows(conn: Connection, bag_ids: list[int]) -> None:
    """A bag's rows: verdicts, detections, classes, then the bag (SQLite's cascades need not be on)."""
    for start in range(0, len(bag_ids), 500):
        ids = bag_ids[start : start + 500]
        for table in (t.verdicts, t.detections, t.bag_classes):
            conn.execute(sa.delete(table).where(table.c.bag_id.in_(ids)))
        conn.execute(sa.delete(t.bags).where(t.bags.c.id.in_(ids)))


@dataclass(frozen=True)
class Eviction:
    evicted: int
    usage: Usage  # after the eviction, with the incoming bag counted
    fits: bool  # the incoming bag is within every limit
    error: OSError | None  # a bag's files could not be deleted: eviction stopped there


def evict(conn: Connection, folders: BagFolders, config: StoreConfig, incoming: int, now: float) -> Eviction:
    """Evict what the limits demand with a bag of ``incoming`` bytes to come (none if 0): abandoned writes,
    bags past the age limit, then the oldest bags until the count and the bytes fit. Each victim's files
    are deleted before its rows."""
    current = usage(conn)
    count, total = current.bags + (1 if incoming else 0), current.bytes + incoming
    victims: list[int] = []
    error = None
    for row, abandoned in _candidates(conn, now, config):
        over = count > config.max_bags or total > config.max_bytes
        if not (abandoned or over or row.time_s < now - config.max_age_s):
            break
        try:
            folders.remove(row.request_id)
        except OSError as exc:
            error = exc
            break
        victims.append(row.id)
        count, total = count - 1, total - row.bytes
    delete_rows(conn, victims)
    fits = count <= config.max_bags and total <= config.max_bytes
    return Eviction(len(victims), Usage(count, total), fits, error)


def check_not_taken(conn: Connection, request_id: str) -> None:
    """DuplicateBag if a bag (stored or being written) has this request id."""
    if conn.execute(sa.select(t.bags.c.id).where(t.bags.c.request_id == request_id)).first() is not None:
        raise DuplicateBag(request_id)


def reserve(conn: Connection, encoded: EncodedBag, size: int, now: float) -> int:
    """The new bag's rows (state "writing", invisible to queries) with its classes and detections; its id."""
    bag = encoded.bag
    values = {
        "request_id": bag.request_id,
        "state": "writing",
        "time_s": encoded.time_s,
        "reserved_s": now,
        "source": bag.source,
        "alarm": bool(bag.alarm),
        "top_score": bag.top_score,
        "n_views": len(encoded.view_sizes),
        "view_sizes": [list(s) for s in encoded.view_sizes],
        "bytes": size,
        "model_name": bag.model.name,
        "model_version": bag.model.version,
        "model_sha256": bag.model.sha256,
        "answer": encoded.answer_json,
    }
    bag_id = conn.execute(sa.insert(t.bags).values(values).returning(t.bags.c.id)).scalar_one()
    classes = [{"bag_id": bag_id, "class_name": c} for c in sorted(set(bag.classes))]
    if classes:
        conn.execute(sa.insert(t.bag_classes), classes)
    rows = [
        {"bag_id": bag_id, "view": d.view, "idx": d.index, "class_name": d.class_name, "score": d.score,
         "x1": d.box[0], "y1": d.box[1], "x2": d.box[2], "y2": d.box[3]}
        for d in encoded.detections
    ]  # fmt: skip
    if rows:
        conn.execute(sa.insert(t.detections), rows)
    return bag_id


def publish(conn: Connection, bag_id: int) -> bool:
    """Make a written bag visible with the next seq; False if its reservation is gone (taken as abandoned
    and evicted, or purged, meanwhile)."""
    seq = conn.execute(
        sa.update(t.counters).where(t.counters.c.name == "seq").values(value=t.counters.c.value + 1)
        .returning(t.counters.c.value)
    ).scalar_one()  # fmt: skip
    done = conn.execute(
        sa.update(t.bags)
        .where(t.bags.c.id == bag_id, t.bags.c.state == "writing")
        .values(state="stored", seq=seq)
    )
    return done.rowcount == 1
