"""Moderation of items: an item upsert that carries text is scored as it is ingested, and the
score, the label and the decision become item attributes in the logged event.

What is scored is ``[safety] text_fields`` of the upsert: ``text`` is its text field, any other name
a string attribute; the values found are joined. ``score_records`` writes, into each scored record's
``attributes``:

- ``unsafe_score``: the model's unsafe score, P(hate) + P(offensive) (the higher of it and the
  client's own score, when the client sent one);
- ``unsafe_label``: hate, offensive or neither; ``unsafe_decision``: block, review or allow (the score
  against the thresholds); ``unsafe_model``: the registered version that scored it;
- ``client_unsafe_score``: the client's own ``unsafe_score`` (or ``unsafe``), kept so that a rescore
  by a later model still takes it into account.

The feed state reads ``unsafe_decision`` (see :func:`safety_code`); an item with text and no decision
was not scored (no model, or a model that failed) and is held back while a safety model is
registered. Because the score is in the logged upsert, the offline path reads the same attributes
as serving (an ``attribute`` feature on ``unsafe_score`` has no skew).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from recstack.config import ComputeConfig, Engine
from recstack.errors import RecstackError
from recstack.safety.model import SafetyModel

log = logging.getLogger(__name__)

ALLOW, REVIEW, BLOCK = 0, 1, 2
UNSCORED = 4  # flag: the item has text that no model scored
DECISIONS = {"allow": ALLOW, "review": REVIEW, "block": BLOCK}
SCORE_KEYS = ("unsafe_score", "unsafe_label", "unsafe_decision", "unsafe_model", "client_unsafe_score")


FORGEABLE = ("unsafe_label", "unsafe_decision", "unsafe_model")  # only a model writes these


def strip_decisions(records: Iterable[Any]) -> None:
    """Drop the moderation attributes a client must not set from item records (a client that sent
    ``unsafe_model`` and ``unsafe_decision = "allow"`` would otherwise pass for scored); its own
    ``unsafe_score`` stays, as the client's score."""
    for record in records:
        if isinstance(record, dict) and record.get("kind") == "item":
            attributes = record.get("attributes")
            if isinstance(attributes, dict) and any(k in attributes for k in FORGEABLE):
                record["attributes"] = {k: v for k, v in attributes.items() if k not in FORGEABLE}


def item_text(text: str | None, attributes: Mapping[str, Any], fields: Sequence[str]) -> str | None:
    """The text of an upsert that moderation reads (None when it has none)."""
    parts = []
    for name in fields:
        value = text if name == "text" else attributes.get(name)
        if isinstance(value, str) and value.strip():
            parts.append(value.strip())
    return " ".join(parts) if parts else None


def client_score(attributes: Mapping[str, Any]) -> float | None:
    """The client's own unsafe score: ``client_unsafe_score`` once a model scored the item, else
    ``unsafe_score`` or ``unsafe`` (a bool counts as 0 or 1); None when it sent none."""
    keys = ("client_unsafe_score",) if "unsafe_model" in attributes else ("unsafe_score", "unsafe")
    for key in keys:
        value = attributes.get(key)
        if isinstance(value, bool | int | float):
            return float(value)
    return None


def safety_code(
    text: str | None, attributes: Mapping[str, Any], fields: Sequence[str], client_threshold: float
) -> tuple[int, float]:
    """(code, unsafe score) of an item upsert for the feed state: the model's decision when it has
    one; else the client's score against ``client_threshold`` (block or allow), with the UNSCORED flag
    when it has text."""
    decision = attributes.get("unsafe_decision")
    score = attributes.get("unsafe_score")
    if isinstance(decision, str) and decision in DECISIONS and "unsafe_model" in attributes:
        return DECISIONS[decision], float(score) if isinstance(score, int | float) else 1.0
    own = client_score(attributes)
    code = BLOCK if own is not None and own >= client_threshold else ALLOW
    if item_text(text, attributes, fields) is not None:
        code |= UNSCORED
    return code, own if own is not None else 0.0


@dataclass
class ItemScorer:
    """Scores item records (dicts shaped like an ItemUpsert) with one model version."""

    model: SafetyModel
    version: str  # e.g. recstack-safety/3
    fields: Sequence[str]
    max_chars: int = 2_000
    block_at: float | None = None  # overrides of the model's thresholds ([safety] block_threshold)
    review_at: float | None = None

    def thresholds(self) -> tuple[float, float]:
        block = self.block_at if self.block_at is not None else self.model.block_at
        review = self.review_at if self.review_at is not None else self.model.review_at
        return block, min(review, block)

    def score_records(self, records: Iterable[dict[str, Any]]) -> int:
        """Score the records with text, in place (see the module docstring). Records that are not
        item upserts, or whose attributes are not an object, are left for validation to reject.
        Returns how many were scored; raises whatever the model raises (nothing is written then)."""
        todo: list[tuple[dict[str, Any], dict[str, Any], str]] = []
        for record in records:
            if not isinstance(record, dict) or record.get("kind") != "item":
                continue
            attributes = record.get("attributes") or {}
            text = record.get("text")
            if not isinstance(attributes, dict) or not (text is None or isinstance(text, str)):
                continue
            found = item_text(text, attributes, self.fields)
            if found is not None:
                todo.append((record, attributes, found))
        if not todo:
            return 0
        results = self.model.moderate([t for _, _, t in todo], self.max_chars)
        block, review = self.thresholds()
        for (record, attributes, _), result in zip(todo, results, strict=True):
            own = client_score(attributes)
            score = max(result.score, own) if own is not None else result.score
            decision = "block" if score >= block else "review" if score >= review else "allow"
            out = {k: v for k, v in attributes.items() if k not in SCORE_KEYS}
            if own is not None:
                out["client_unsafe_score"] = own
            out |= {
                "unsafe_score": round(score, 6),
                "unsafe_label": result.label,
                "unsafe_decision": decision,
                "unsafe_model": self.version,
            }
            record["attributes"] = out
            if decision != "allow":
                log.info(
                    "item %s: %s (unsafe score %.3f, %s) by %s",
                    record.get("item_id"),
                    decision,
                    score,
                    result.label,
                    self.version,
                )
        return len(todo)


def score_table(table: Any, scorer: ItemScorer) -> tuple[Any, int]:
    """The item upserts of an Arrow table of events (EVENT_SCHEMA) scored: (the table with its
    ``attributes`` column rewritten, how many were scored). Other rows are kept as they are."""
    import json

    import pyarrow as pa

    kinds = table.column("kind").to_pylist()
    if "item" not in kinds:
        return table, 0
    texts = table.column("text").to_pylist() if "text" in table.column_names else [None] * len(kinds)
    raw = (
        table.column("attributes").to_pylist() if "attributes" in table.column_names else [None] * len(kinds)
    )
    records: list[dict[str, Any]] = []
    rows: list[int] = []
    for n, (kind, text, attrs) in enumerate(zip(kinds, texts, raw, strict=True)):
        if kind != "item":
            continue
        try:
            attributes = json.loads(attrs) if attrs else {}
        except ValueError:  # validation rejects it with its line
            continue
        records.append({"kind": "item", "text": text, "attributes": attributes})
        rows.append(n)
    scored = scorer.score_records(records)
    if not scored:
        return table, 0
    for n, record in zip(rows, records, strict=True):
        raw[n] = json.dumps(record["attributes"], sort_keys=True, separators=(",", ":"))
    column = pa.array(raw, pa.string())
    if "attributes" in table.column_names:
        return table.set_column(table.column_names.index("attributes"), "attributes", column), scored
    return table.append_column("attributes", column), scored


def strip_table_decisions(table: Any) -> Any:
    """``strip_decisions`` over the ``attributes`` column of an Arrow table of events."""
    import json

    import pyarrow as pa

    if "attributes" not in table.column_names:
        return table
    raw = table.column("attributes").to_pylist()
    changed = False
    for n, attrs in enumerate(raw):
        if attrs and any(f'"{k}"' in attrs for k in FORGEABLE):
            try:
                decoded = json.loads(attrs)
            except ValueError:
                continue
            if isinstance(decoded, dict):
                kept = {k: v for k, v in decoded.items() if k not in FORGEABLE}
                raw[n] = json.dumps(kept, sort_keys=True, separators=(",", ":")) if kept else None
                changed = True
    if not changed:
        return table
    at = table.column_names.index("attributes")
    return table.set_column(at, "attributes", pa.array(raw, pa.string()))


def scorer_for(settings: Any, version: str, model: SafetyModel) -> ItemScorer:
    """The scorer of ``[safety]`` for a registered version of the classifier."""
    cfg = settings.safety
    return ItemScorer(
        model,
        f"{cfg.model_name}/{version}",
        cfg.text_fields,
        cfg.max_chars,
        cfg.block_threshold,
        cfg.review_threshold,
    )


class NoSafetyModel(RecstackError):
    """No classifier is registered (nothing to hold items back for under score_items = auto)."""


def champion_scorer(settings: Any) -> ItemScorer:
    """The scorer of the registered champion; RecstackError saying why there is none (no model
    registered, or it cannot be loaded)."""
    from recstack.registry import Registry

    cfg = settings.safety
    registry = Registry(settings, name=cfg.model_name)
    version = registry.alias("champion")
    if version is None:
        raise NoSafetyModel(f"no safety model is registered as {cfg.model_name} (recstack safety train)")
    return scorer_for(settings, version, SafetyModel.load(registry.fetch(version)))


class IngestScorer:
    """Scores the item upserts of event tables as a command appends them (``recstack import``):
    the champion is looked up at the first batch holding item text (never when there is none). When
    there is no model, or it fails, the batch passes unscored and ``problem`` says why (the feed
    holds such items back while a model is registered)."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.scorer: ItemScorer | None = None
        self.problem: str | None = None
        self.scored = 0
        self.unscored = 0
        self.registered = True  # False once the lookup found no model

    def held_back(self) -> bool:
        """Whether the items that passed unscored are held back from the feed."""
        from recstack.config import ScoreItems

        return self.registered or self.settings.safety.score_items is ScoreItems.required

    def __call__(self, table: Any) -> Any:
        from recstack.config import ScoreItems

        if "item" not in table.column("kind").to_pylist():
            return table
        table = strip_table_decisions(table)
        if self.settings.safety.score_items is ScoreItems.off:
            return table
        if self.scorer is None and self.problem is None:
            try:
                self.scorer = champion_scorer(self.settings)
            except NoSafetyModel as exc:
                self.problem, self.registered = str(exc), False
            except Exception as exc:  # RecstackError, CheckpointError, a registry that is down
                self.problem = str(exc)
        if self.scorer is not None:
            try:
                table, scored = score_table(table, self.scorer)
                self.scored += scored
                return table
            except Exception as exc:
                self.problem = f"scoring failed: {exc}"
                self.scorer = None
                log.error("item upserts pass unscored: %s", self.problem)
        import json

        fields = self.settings.safety.text_fields
        n = table.num_rows
        texts = table.column("text").to_pylist() if "text" in table.column_names else [None] * n
        raw = table.column("attributes").to_pylist() if "attributes" in table.column_names else [None] * n
        for kind, text, attrs in zip(table.column("kind").to_pylist(), texts, raw, strict=True):
            if kind == "item" and item_text(text, json.loads(attrs) if attrs else {}, fields) is not None:
                self.unscored += 1
        return table


def latest_upserts(table: Any) -> list[dict[str, Any]]:
    """The latest upsert of each item in an Arrow table of item events (by time, then log order),
    as records (``attributes`` decoded)."""
    import json

    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    latest: dict[str, int] = {}
    for n, (item, stamp) in enumerate(zip(columns["item_id"], columns["timestamp"], strict=True)):
        best = latest.get(item)
        if best is None or columns["timestamp"][best] <= stamp:
            latest[item] = n
    out = []
    for n in latest.values():
        record = {name: values[n] for name, values in columns.items()}
        raw = record.get("attributes")
        try:
            record["attributes"] = json.loads(raw) if raw else {}
        except ValueError:
            record["attributes"] = {}
        out.append(record)
    return out


@dataclass
class Rescored:
    considered: int  # items with text in the catalog
    scored: int  # of those, scored and appended again
    decisions: dict[str, int]  # the new decisions


def rescore_catalog(
    log_: Any,
    scorer: ItemScorer,
    everything: bool = False,
    batch: int = 256,
    progress: Any = None,
    now: Any = None,
    compute: ComputeConfig | None = None,
) -> Rescored:
    """Score every item of the log's catalog that has text and was not scored by ``scorer``'s
    version (``everything``: all of them again), and append each as a new upsert carrying the
    scores (the worker applies it like any upsert; the item keeps its creation time). Event ids
    derive from the item, the version and the content, so running it twice appends nothing new.
    ``progress(done, total)`` is called as items are scored. ``compute`` (``[compute]``): with
    engine = ray the texts are scored by a Ray Data job over the whole list first, then appended
    batch by batch as locally."""
    import hashlib
    import json
    from datetime import UTC, datetime

    from recstack.schema import Event, ItemUpsert, events_to_table

    stamp = now or datetime.now(UTC)
    records = latest_upserts(log_.table(kinds=["item"]))
    with_text = [r for r in records if item_text(r.get("text"), r["attributes"], scorer.fields) is not None]
    todo = [r for r in with_text if everything or r["attributes"].get("unsafe_model") != scorer.version]
    decisions: dict[str, int] = {}
    upserts = [
        {
            "kind": "item",
            "item_id": r["item_id"],
            "text": r.get("text"),
            "creator_id": r.get("creator_id"),
            "created_at": r.get("created_at") or r["timestamp"],
            "attributes": dict(r["attributes"]),
        }
        for r in todo
    ]
    on_ray = compute is not None and compute.engine == Engine.ray
    if compute is not None and on_ray:
        from recstack.scale.inference import safety_scores

        safety_scores(scorer, upserts, compute, batch)
    for start in range(0, len(upserts), batch):
        chunk = upserts[start : start + batch]
        if not on_ray:
            scorer.score_records(chunk)
        events: list[Event] = []
        for record in chunk:
            content = json.dumps([record["item_id"], record["text"], record["attributes"]], sort_keys=True)
            digest = hashlib.sha1(content.encode()).hexdigest()[:16]
            record |= {"event_id": f"item-rescore-{digest}", "timestamp": stamp}
            decision = str(record["attributes"]["unsafe_decision"])
            decisions[decision] = decisions.get(decision, 0) + 1
            events.append(ItemUpsert.model_validate(record))
        log_.append_table(events_to_table(events))
        if progress is not None:
            progress(start + len(chunk), len(todo))
    return Rescored(len(with_text), len(todo), decisions)
