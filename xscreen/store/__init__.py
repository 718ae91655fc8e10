"""The opt-in scan store: answered bags' raw views, answers and model kept within limits, an index of them
in SQLite or PostgreSQL, and reviewers' verdicts (docs/operations.md "Scan store").

The names below load on first use (PEP 562): ``xscreen.store.errors`` (the failure reasons the service's
metrics name) imports neither SQLAlchemy nor numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "BagNotFound": "errors",
    "FAILURE_REASONS": "errors",
    "StoreConfigError": "errors",
    "StoreError": "errors",
    "StoreInputError": "errors",
    "StoreUnavailable": "errors",
    "StoreConfig": "config",
    "ModelIdentity": "bag",
    "NewBag": "bag",
    "View": "bag",
    "summarise_answer": "bag",
    "BagPage": "queries",
    "BagSummary": "queries",
    "ShiftSummary": "queries",
    "StoredBag": "queries",
    "Verdict": "queries",
    "PutResult": "store",
    "ScanStore": "store",
    "open_store": "store",
}

__all__ = [
    "BagNotFound",
    "BagPage",
    "BagSummary",
    "FAILURE_REASONS",
    "ModelIdentity",
    "NewBag",
    "PutResult",
    "ScanStore",
    "ShiftSummary",
    "StoreConfig",
    "StoreConfigError",
    "StoreError",
    "StoreInputError",
    "StoreUnavailable",
    "StoredBag",
    "Verdict",
    "View",
    "open_store",
    "summarise_answer",
]

if TYPE_CHECKING:
    from xscreen.store.bag import ModelIdentity, NewBag, View, summarise_answer
    from xscreen.store.config import StoreConfig
    from xscreen.store.errors import (
        FAILURE_REASONS,
        BagNotFound,
        StoreConfigError,
        StoreError,
        StoreInputError,
        StoreUnavailable,
    )
    from xscreen.store.queries import BagPage, BagSummary, ShiftSummary, StoredBag, Verdict
    from xscreen.store.store import PutResult, ScanStore, open_store


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"xscreen.store.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
