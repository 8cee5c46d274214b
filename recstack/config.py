"""Typed settings. One TOML file (``recstack.toml``) validated at load; unknown keys are an error.

Precedence, lowest first: the defaults below, the TOML file, then environment overrides
``RECSTACK_<SECTION>__<KEY>=value`` (double underscore between section and key), plus the two
conventional service URLs ``REDIS_URL`` and ``DATABASE_URL``.
"""

from __future__ import annotations

import json
import os
import tomllib
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from recstack.errors import ConfigError
from recstack.features.definitions import DEFAULT_FEATURES, FEATURE_TYPES, FeatureDef, check_unique
from recstack.schema import ENGAGEMENT_KINDS, TimeWindow

_FEATURE_ADAPTER: TypeAdapter[Any] = TypeAdapter(FeatureDef)


class Section(BaseModel):
    """Base of every config section: frozen, and unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(Section):
    state_dir: Path = Field(
        Path(".recstack"), description="Where the event log, checkpoints and MLflow live."
    )
    data_dir: Path = Field(Path("../shared/data"), description="Folder holding the real data sets.")


class EventLogBackend(StrEnum):
    parquet = "parquet"
    redis = "redis"


class EventLogConfig(Section):
    backend: EventLogBackend = Field(EventLogBackend.parquet, description="parquet (embedded) or redis.")
    path: Path | None = Field(None, description="Parquet log folder; default <state_dir>/events.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Used when backend = redis.")
    stream: str = Field("recstack:events", description="Redis stream key (the live bus).")
    dedupe_days_cached: int = Field(
        8, ge=1, description="Day partitions whose event ids stay in memory for idempotent ingest."
    )
    attribution_window_s: float = Field(
        3600.0, gt=0, description="An engagement joins an impression shown at most this long before it."
    )
    earliest: datetime = Field(
        datetime(1970, 1, 1, tzinfo=UTC),
        description="An event (or an item's created_at) timed before this is rejected at append.",
    )
    max_ahead_s: float = Field(
        86_400.0,
        ge=0,
        description="An event (or an item's created_at) timed more than this many seconds past the "
        "server's clock is rejected at append.",
    )

    @field_validator("earliest")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    def window(self) -> TimeWindow:
        return TimeWindow(self.earliest, self.max_ahead_s)


class ImportFormat(StrEnum):
    auto = "auto"
    csv = "csv"
    tsv = "tsv"
    jsonl = "jsonl"
    parquet = "parquet"
    movielens = "movielens"


class TimeUnit(StrEnum):
    s = "s"
    ms = "ms"
    us = "us"
    iso = "iso"


class MappingConfig(Section):
    """How `recstack import` reads a team's files (each key is also a flag of the command)."""

    format: ImportFormat = Field(
        ImportFormat.auto,
        description="csv, tsv (a header row, or `columns`), jsonl, parquet, movielens (u.data, u.item, "
        "u.user, ratings.dat, movies.dat, users.dat), or auto: by the file's name.",
    )
    columns: list[str] | None = Field(
        None, description="Column names of a CSV/TSV file without a header row (it is then all data)."
    )
    user: str = Field("user_id", description="Interactions: the column holding the user id.")
    item: str = Field("item_id", description="Interactions: the column holding the item id.")
    timestamp: str = Field("timestamp", description="Interactions: the column holding the time.")
    time_unit: TimeUnit = Field(
        TimeUnit.s, description="How times are written: s, ms or us since the epoch, or iso (ISO-8601)."
    )
    rating: str | None = Field(
        "rating",
        description="Interactions: the column whose value maps to engagements (a rating, a 0/1 label); "
        "unset: every row is an engagement of each kind in `engagements`.",
    )
    engagements: dict[str, float] = Field(
        {"click": 4.0, "like": 5.0},
        description="Engagement kind -> the least value of `rating` that makes a row that engagement.",
    )
    kind: str | None = Field(
        None,
        description="Interactions: a column naming each row's engagement kind (impression or view: "
        "shown only), instead of `rating`.",
    )
    impressions: bool = Field(
        True, description="Each interaction row is also an impression (the rankers' negatives)."
    )
    surface: str = Field("feed", description="The surface the imported impressions were shown on.")
    item_id: str = Field("item_id", description="Items: the column holding the item id.")
    query: str = Field(
        "query",
        description="Queries (`--queries`): the column holding the search text; the user and time "
        "columns are `user` (optional in a query row) and `timestamp`.",
    )
    text: list[str] = Field([], description='Items: columns joined as the item\'s text (e.g. ["title"]).')
    creator: str | None = Field(None, description="Items: the column holding the creator id.")
    created_at: str | None = Field(
        None, description="Items: the column holding the creation time (in `time_unit`)."
    )
    item_attributes: list[str] | None = Field(
        None, description="Items: the attribute columns; unset: every other column."
    )
    user_id: str = Field("user_id", description="Users: the column holding the user id.")
    user_attributes: list[str] | None = Field(
        None, description="Users: the attribute columns; unset: every other column."
    )
    catalog_time: datetime | None = Field(
        None,
        description="When item and user rows are upserted; unset: one second before the import's "
        "earliest interaction (1970-01-02 when it has none).",
    )
    batch: int = Field(50_000, ge=1, description="Events per append.")

    @field_validator("engagements")
    @classmethod
    def _kinds(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(ENGAGEMENT_KINDS))
        if unknown:
            raise ValueError(
                f"unknown engagement kind(s) {', '.join(unknown)}; kinds: {', '.join(ENGAGEMENT_KINDS)}"
            )
        return value


class Optimizer(StrEnum):
    adam = "adam"
    adamw = "adamw"
    sgd = "sgd"
    adagrad = "adagrad"


class Schedule(StrEnum):
    constant = "constant"
    cosine = "cosine"
    linear_warmup = "linear_warmup"
    plateau = "plateau"


class HoldoutKind(StrEnum):
    tail = "tail"
    served = "served"


class TrainConfig(Section):
    seed: int = Field(2026, description="Seeds Python, NumPy and PyTorch.")
    holdout: HoldoutKind = Field(
        HoldoutKind.tail,
        description="Feed: the holdout the gate reads: tail (the last 10% of the window's impressions by "
        "time) or served (the last 10% of the impressions the API served; training reads what came "
        "before them).",
    )
    mixed_ctr_factor: float = Field(
        2.0,
        gt=1,
        description="Feed: warn when the window mixes served impressions and others (imported, "
        "backfilled) whose click rates differ by more than this factor.",
    )
    epochs: int = Field(20, ge=1, description="Maximum epochs.")
    batch_size: int = Field(2048, ge=1, description="Rows per training batch.")
    optimizer: Optimizer = Field(Optimizer.adam, description="adam, adamw, sgd or adagrad.")
    lr: float = Field(1e-3, gt=0, description="Learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty applied by the optimizer.")
    schedule: Schedule = Field(
        Schedule.constant,
        description="constant, cosine, linear_warmup, or plateau (LR x0.1 after a validation without gain).",
    )
    warmup_steps: int = Field(0, ge=0, description="Steps of linear warm-up (linear_warmup only).")
    grad_clip: float | None = Field(None, gt=0, description="Clip the gradient norm to this; none = off.")
    patience: int = Field(3, ge=1, description="Stop after this many validations without improvement.")
    validate_every: int = Field(1, ge=1, description="Validate every N epochs.")
    num_threads: int | None = Field(
        None,
        ge=1,
        description="Threads for torch and LightGBM; unset: the cores free (this process's cores minus the "
        "1-minute load average, at least 1). Set it (or RECSTACK_TRAIN__NUM_THREADS) when other work "
        "shares the machine.",
    )
    backend: str = Field("gloo", description="torch.distributed backend (gloo on CPU).")
    checkpoint_dir: Path | None = Field(None, description="Default <state_dir>/checkpoints/<run name>.")
    progress: bool = Field(True, description="Show a progress bar.")


class TrackingConfig(Section):
    enabled: bool = Field(True, description="Log params and metrics to MLflow.")
    uri: str | None = Field(None, description="MLflow tracking URI; default sqlite:///<state_dir>/mlflow.db.")
    experiment: str = Field("recstack", description="MLflow experiment name.")


class MFConfig(Section):
    dim: int = Field(64, ge=1, description="Embedding size of the matrix-factorization model.")
    l2: float = Field(1e-5, ge=0, description="L2 penalty on the embeddings used in a batch (BPR).")


class OnlineBackend(StrEnum):
    auto = "auto"
    memory = "memory"
    sqlite = "sqlite"
    redis = "redis"


class OnlineConfig(Section):
    backend: OnlineBackend = Field(
        OnlineBackend.auto,
        description="Where the worker keeps the online state the API reads (the [[features]] values, "
        "seen items, histories, trending, exploration counts), as snapshots: auto (redis with the "
        "Redis bus, else sqlite), memory (nothing survives a restart: the worker rebuilds the state "
        "from the log), sqlite or redis (needed for API processes apart from the worker).",
    )
    sqlite_path: Path | None = Field(None, description="SQLite file; default <state_dir>/online.sqlite.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Used when backend = redis.")
    prefix: str = Field("recstack:f:", description="Key prefix in Redis.")
    cache_size: int = Field(200_000, ge=1, description="Entity records kept decoded in memory.")
    flush_every: int = Field(20_000, ge=1, description="Write changed records to the store after this many.")


class IndexKind(StrEnum):
    flat = "flat"
    hnsw = "hnsw"
    ivf = "ivf"


class SourceKind(StrEnum):
    two_tower = "two_tower"
    item_to_item = "item_to_item"
    item_cf = "item_cf"
    ease = "ease"
    mf = "mf"
    popularity = "popularity"
    trending = "trending"
    fresh = "fresh"


class RetrievalConfig(Section):
    sources: dict[SourceKind, int] = Field(
        {
            SourceKind.two_tower: 200,
            SourceKind.item_to_item: 100,
            SourceKind.trending: 50,
            SourceKind.fresh: 50,
        },
        description="Candidate sources in merge order, each with its quota (0 turns one off): "
        "two_tower (user tower searched in the ANN index), item_to_item (neighbours of the user's recent "
        "items in the item tower's space), item_cf (co-engagement neighbours of the recent items), ease "
        "(EASE^R weights of the recent items), mf (MF-BPR user vector searched over its item vectors), "
        "popularity (most engaged items of the training window), trending (live, time-decayed), fresh "
        "(new items). recstack train builds what the quotas name.",
    )
    index: IndexKind = Field(IndexKind.hnsw, description="ANN index over the item tower: flat, hnsw or ivf.")
    ef_search: int = Field(
        80, ge=1, description="HNSW search beam (recall@100 0.994 at 1M items, see README)."
    )
    recent: int = Field(
        10, ge=1, description="Recent engagements that seed item-to-item and fresh candidates."
    )
    trending_half_life_s: float = Field(
        21_600.0, gt=0, description="Trending counts halve every this many s."
    )
    trending_weights: dict[str, float] = Field(
        {"click": 1.0, "like": 2.0, "comment": 2.0, "share": 3.0},
        description="Engagement kinds counted by trending, with their weights.",
    )
    fresh_window_s: float = Field(259_200.0, gt=0, description="Items created within this many s are fresh.")
    neighbours: int = Field(200, ge=1, description="Neighbours kept per item by item_cf and ease.")
    ease_l2: float = Field(500.0, gt=0, description="EASE^R's L2 penalty (lambda).")
    ease_max_items: int = Field(
        20_000,
        ge=1,
        description="EASE^R inverts an items x items matrix (8 bytes an entry): training refuses more items.",
    )

    @field_validator("sources")
    @classmethod
    def _some_quota(cls, value: dict[SourceKind, int]) -> dict[SourceKind, int]:
        if any(q < 0 for q in value.values()) or not any(value.values()):
            raise ValueError("quotas must be >= 0 and at least one source must have a quota")
        return value

    @field_validator("trending_weights")
    @classmethod
    def _engagement_kinds(cls, value: dict[str, float]) -> dict[str, float]:
        kinds = {"click", "like", "share", "comment", "hide", "report", "dwell"}
        if unknown := sorted(set(value) - kinds):
            raise ValueError(f"{unknown} are not engagement kinds; use some of {sorted(kinds)}")
        return value


class TwoTowerConfig(Section):
    dim: int = Field(64, ge=1, description="Output dimension of both towers (and of the ANN index).")
    hidden: list[int] = Field([128], description="Hidden layer sizes of the user tower's MLP.")
    history: int = Field(50, ge=1, description="Engaged items pooled in the user tower.")
    user_id: bool = Field(True, description="Give the user tower a user-id embedding (false: history only).")
    temperature: float = Field(0.05, gt=0, description="Softmax temperature (initial value if learned).")
    learn_temperature: bool = Field(False, description="Learn the temperature with the model.")
    log_q: bool = Field(True, description="Correct in-batch negatives by the items' sampling probability.")
    random_negatives: int = Field(0, ge=0, description="Uniform extra negatives per batch (mixed negatives).")
    cosine: bool = Field(True, description="L2-normalize tower outputs (cosine) or not (dot product).")


class Norm(StrEnum):
    none = "none"
    batch = "batch"
    layer = "layer"


class RankerKind(StrEnum):
    lr = "lr"
    gbdt = "gbdt"
    dcn_v2 = "dcn_v2"
    shared_bottom = "shared_bottom"
    mmoe = "mmoe"
    ple = "ple"


NEURAL_RANKERS = (RankerKind.dcn_v2, RankerKind.shared_bottom, RankerKind.mmoe, RankerKind.ple)


class LightRankerKind(StrEnum):
    none = "none"
    lr = "lr"
    gbdt = "gbdt"
    shared_bottom = "shared_bottom"


class CalibrationKind(StrEnum):
    none = "none"
    platt = "platt"
    isotonic = "isotonic"


class Structure(StrEnum):
    stacked = "stacked"
    parallel = "parallel"


class Activation(StrEnum):
    relu = "relu"
    gelu = "gelu"
    silu = "silu"
    prelu = "prelu"


class PositionCorrection(StrEnum):
    none = "none"
    feature = "feature"
    tower = "tower"
    ips = "ips"


class RankingConfig(Section):
    """The feed's rankers: the heavy one (one head per task), the light first stage distilled from
    it, calibration of the heads and position handling. ``recstack train`` trains exactly this."""

    model: RankerKind = Field(
        RankerKind.mmoe, description="Heavy ranker: lr, gbdt, dcn_v2, shared_bottom, mmoe or ple."
    )
    tasks: dict[str, float] = Field(
        {"click": 1.0, "like": 1.0, "share": 1.0, "hide": 1.0},
        description="Task heads (engagement kinds: click, like, share, comment, hide, report) with "
        "their loss weights; a task with one class in the training window is left out with a warning.",
    )
    light: LightRankerKind = Field(
        LightRankerKind.shared_bottom,
        description="Light first-stage ranker, distilled from the heavy one: none, lr, gbdt or "
        "shared_bottom (a small neural net).",
    )
    light_top_k: int = Field(
        3, ge=1, description="The light ranker learns which candidates the heavy one puts in its top k."
    )
    calibration: CalibrationKind = Field(
        CalibrationKind.platt,
        description="Calibration of each head, fitted on validation: none, platt or isotonic.",
    )
    embedding_dim: int = Field(16, ge=1, description="Embedding size of each categorical field.")
    structure: Structure = Field(
        Structure.parallel, description="DCN-v2 cross and deep: stacked or parallel."
    )
    cross_layers: int = Field(3, ge=0, description="DCN-v2 cross layers.")
    hidden: list[int] = Field([400, 400, 400], description="Deep block (DCN-v2) or shared bottom sizes.")
    experts: int = Field(4, ge=1, description="MMoE experts; PLE shared experts per level.")
    task_experts: int = Field(1, ge=1, description="PLE experts per task per level.")
    levels: int = Field(2, ge=1, description="PLE extraction levels.")
    expert_hidden: list[int] = Field([128, 64], description="Each expert's deep block (MMoE, PLE).")
    tower_hidden: list[int] = Field([32], description="Per-task tower of the multi-task models.")
    norm: Norm = Field(Norm.none, description="none, batch (BatchNorm) or layer (LayerNorm) in deep blocks.")
    activation: Activation = Field(Activation.relu, description="relu, gelu, silu or prelu in deep blocks.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout after each hidden layer.")
    embedding_l2: float = Field(0.0, ge=0, description="L2 penalty on the embedding rows a batch uses.")
    embedding_l1: float = Field(0.0, ge=0, description="L1 penalty on the embedding rows a batch uses.")
    position: PositionCorrection = Field(
        PositionCorrection.none,
        description="Position bias: none, feature (position as a feature, the top slot's at serving), "
        "tower (a shallow tower dropped at serving; neural rankers) or ips (clicks weighted by the "
        "inverse of their position's examination propensity, estimated from the log).",
    )
    max_position: int = Field(50, ge=1, description="Positions past this share one bias (tower).")
    ips_max_weight: float = Field(
        10.0, ge=1, description="IPS weights are clipped to this (a rarely examined slot's clicks)."
    )
    lr_c: float = Field(1.0, gt=0, description="Logistic regression: inverse L2 strength.")
    lr_crosses: bool = Field(True, description="Logistic regression: hashed pairwise crosses of fields.")
    gbdt_leaves: int = Field(31, ge=2, description="GBDT: leaves per tree.")
    gbdt_rounds: int = Field(300, ge=1, description="GBDT: boosting rounds at most (early stopping).")
    gbdt_learning_rate: float = Field(0.05, gt=0, description="GBDT: shrinkage.")

    @field_validator("tasks")
    @classmethod
    def _task_kinds(cls, value: dict[str, float]) -> dict[str, float]:
        kinds = [k for k in ENGAGEMENT_KINDS if k != "dwell"]
        if not value or (unknown := sorted(set(value) - set(kinds))):
            raise ValueError(f"tasks {sorted(value) if not value else unknown} invalid; use some of {kinds}")
        return value

    @model_validator(mode="after")
    def _position_fits_model(self) -> RankingConfig:
        if self.position is PositionCorrection.tower and self.model not in NEURAL_RANKERS:
            raise ValueError(
                f"position = 'tower' needs a neural ranker ({', '.join(NEURAL_RANKERS)}); "
                f"{self.model.value} takes position as a feature or as ips weights"
            )
        return self


class Allocator(StrEnum):
    thompson = "thompson"
    ucb1 = "ucb1"
    greedy = "greedy"
    epsilon_greedy = "epsilon_greedy"
    uniform = "uniform"


class Diversity(StrEnum):
    none = "none"
    mmr = "mmr"
    dpp = "dpp"


class ServingConfig(Section):
    host: str = Field("127.0.0.1", description="Address `recstack serve` binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port `recstack serve` binds.")
    processes: int = Field(
        1,
        ge=1,
        description="API processes `recstack serve` forks after loading (one per core; more than one "
        "needs the Redis bus and a separate `recstack worker`).",
    )
    api_keys: list[str] = Field(
        ["recstack-local"],
        description="Accepted X-API-Key values (set your own; the default is for local use only).",
    )
    default_n: int = Field(20, ge=1, description="Items returned when a request names no n.")
    max_n: int = Field(200, ge=1, description="Largest n a request may ask for (larger is a 422).")
    light_keep: int = Field(100, ge=1, description="Candidates the light ranker passes to the heavy one.")
    value_weights: dict[str, float] = Field(
        {"click": 1.0, "like": 2.0, "share": 4.0, "hide": -6.0},
        description="Value model: sum of weight x calibrated P(action) over the heavy ranker's heads.",
    )
    diversity: Diversity = Field(Diversity.mmr, description="Re-rank for diversity: none, mmr or dpp.")
    diversity_lambda: float = Field(
        0.8, ge=0, le=1, description="MMR: weight of value against similarity to items already placed."
    )
    creator_gap: int = Field(3, ge=0, description="No two items of one creator within this many slots.")
    explore_slots: int = Field(
        2, ge=0, description="Slots per response for fresh items (see explore_allocator)."
    )
    explore_allocator: Allocator = Field(
        Allocator.thompson,
        description="How exploration picks fresh items from their impression and click counts: thompson "
        "(Beta posteriors with an empirical-Bayes prior fitted to the catalog), ucb1, greedy, "
        "epsilon_greedy or uniform.",
    )
    explore_epsilon: float = Field(0.1, ge=0, le=1, description="epsilon_greedy: share of random picks.")
    explore_propensity_draws: int = Field(
        4,
        ge=0,
        description="Each exploration pick's probability of being picked is logged with the impression "
        "(propensity, for off-policy evaluation): exact for greedy, ucb1, epsilon_greedy and uniform; "
        "for thompson estimated from this many joint posterior draws, each giving the exact chance that "
        "the pick's own draw beats the others' (Rao-Blackwellized: 4 draws are more precise than 64 "
        "counted; see docs/experiments.md). 0: not logged. Ranked slots are deterministic (propensity 1).",
    )
    rank: bool = Field(
        True,
        description="False: serve the candidate sources' merged order without the rankers, the value "
        "model and the re-rank (a baseline arm, e.g. popularity).",
    )
    unsafe_threshold: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Items upserted with an unsafe_score of their own (or unsafe = true) and no safety "
        "model's decision are filtered out when it reaches this ([safety] sets the thresholds of the "
        "model's scores).",
    )
    seen_limit: int = Field(5_000, ge=0, description="Items remembered per user as already seen.")
    history: int = Field(50, ge=1, description="Recent engagements kept per user (the user tower's input).")
    impression_flush_s: float = Field(
        0.5, gt=0, description="Served impressions are buffered and written to the log this often."
    )
    reload_s: float = Field(
        5.0, gt=0, description="How often the API checks the registry for a new champion (0 = never)."
    )
    state_sync_s: float = Field(
        0.5,
        gt=0,
        description="How often a separate worker snapshots its state (a delta: what changed) and each "
        "API process applies it; with impression_flush_s, how soon a list shown by one process is "
        "excluded by the others.",
    )
    state_full_s: float = Field(
        60.0,
        ge=0,
        description="How often the worker writes its whole state; the snapshots in between hold only "
        "what changed (users whose lists moved, counters that moved), which API processes apply in "
        "place. It also writes a whole one when the catalog changed. 0: every snapshot whole.",
    )
    checkpoint_s: float = Field(
        30.0,
        gt=0,
        description="How often the worker inside the API's process (embedded default) snapshots the "
        "state: only a restart reads it, and a snapshot's cost grows with the state (every user's "
        "seen items), so it runs less often than state_sync_s; deliveries since are acknowledged "
        "then (a restart reads them again, applied once).",
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="Largest request body any route accepts (413 above it, before it is parsed).",
    )
    access_log: bool = Field(
        True, description="`recstack serve` logs one line per request (method, path, status) on stdout."
    )
    checkpoint_full_s: float = Field(
        3600.0,
        ge=0,
        description="How often the worker inside the API's process writes its whole state; the "
        "checkpoints between are deltas (a restart applies them in order). A whole one copies the "
        "state on the serving thread (about 0.2 s at 1M items), so it is rare. It also writes a whole "
        "one when the catalog changed. 0: every checkpoint whole.",
    )


class SafetyModelKind(StrEnum):
    tfidf_lr = "tfidf_lr"
    minilm_lr = "minilm_lr"
    minilm_mlp = "minilm_mlp"
    minilm_ft = "minilm_ft"


class ScoreItems(StrEnum):
    auto = "auto"
    required = "required"
    off = "off"


class SafetyConfig(Section):
    """The unsafe-text classifier (`recstack safety train`, `POST /v1/moderate`)."""

    model: SafetyModelKind = Field(
        SafetyModelKind.tfidf_lr,
        description="tfidf_lr (word and character TF-IDF into logistic regression), minilm_lr "
        "(all-MiniLM-L6-v2 embeddings into logistic regression), minilm_mlp (the same embeddings "
        "into a small MLP) or minilm_ft (the encoder fine-tuned end to end, served as ONNX; about ten "
        "minutes an epoch on 2 cores).",
    )
    data: Path | None = Field(
        None,
        description="Folder of the labelled tweets (labeled_data.csv); default "
        "data_dir/davidson_hate_offensive.",
    )
    seed: int = Field(2026, description="Seeds the stratified 80/10/10 split and the model.")
    max_train_rows: int | None = Field(
        None, ge=100, description="Train on at most this many rows of the training split (unset: all)."
    )
    lr_c: float = Field(4.0, gt=0, description="Inverse regularization of the logistic regression.")
    epochs: int = Field(2, ge=1, le=20, description="minilm_ft: passes over the training rows.")
    block_precision: float = Field(
        0.95,
        gt=0,
        le=1,
        description="The unsafe score above which text is blocked is the lowest reaching this precision "
        "on validation.",
    )
    review_precision: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Likewise for the lower threshold above which text goes to review.",
    )
    prevalence: float | None = Field(
        0.05,
        gt=0,
        lt=1,
        description="The share of unsafe text expected where the model is used: both precisions are the "
        "ones expected at this share (the validation rows reweighted by class), because 83% of the "
        "Davidson tweets are unsafe and a catalog holds far less; at the tweets' own share a "
        "precision target blocks most harmless text. Unset: the validation rows' share.",
    )
    max_chars: int = Field(2_000, ge=1, description="Longer text is truncated (the answer says so).")
    model_name: str = Field("recstack-safety", description="Registered model holding the classifier.")
    gate_metric: str = Field("macro_f1", description="Validation metric the promotion gate compares.")
    score_items: ScoreItems = Field(
        ScoreItems.auto,
        description="Score item upserts that carry text as they are ingested (POST /v1/items and "
        "/v1/events, recstack import): auto when a safety model is registered (with none, items are "
        "served unscored and /health says so), required (items with text and no score are held back "
        "even with no model), off. With auto or required, an item with text that could not be scored "
        "(a damaged model) is never served until `recstack safety rescore` scores it.",
    )
    text_fields: list[str] = Field(
        ["text", "title", "description"],
        description="What of an item upsert is scored: 'text' is its text field, any other name a string "
        "attribute; the values found are joined.",
    )
    block_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Items whose unsafe score reaches this are never served (unset: the model's, chosen "
        "on validation for block_precision).",
    )
    review_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Items scoring between this and the block threshold are down-ranked and marked for "
        "review (unset: the model's, chosen for review_precision).",
    )
    review_penalty: float = Field(
        0.5,
        ge=0,
        le=1,
        description="The value model lowers an item in review by this x its unsafe score x |value|.",
    )
    creator_penalty: float = Field(
        0.5,
        ge=0,
        le=1,
        description="And any item by this x its creator's unsafe rate x |value| (the share of the "
        "creator's items in review or blocked, over items + creator_prior_items).",
    )
    creator_prior_items: float = Field(
        2.0, ge=0, description="Smooths the creator unsafe rate: one bad item of one is not a pattern."
    )


class AutocompleteConfig(Section):
    """Search autocomplete (`GET /v1/autocomplete`) over the query events of the log."""

    half_life_s: float = Field(
        7 * 86_400.0, gt=0, description="A query's count halves in this time (the trend's memory)."
    )
    max_n: int = Field(10, ge=1, le=100, description="Most completions a request may ask for.")
    default_n: int = Field(5, ge=1, description="Completions returned when a request names no n.")
    scan: int = Field(
        64,
        ge=1,
        description="Prefixes with more completions than this have their top max_n precomputed; the "
        "others are enumerated in the trie at each lookup.",
    )
    stop_words: list[str] = Field(
        ["a", "an", "and", "of", "or", "the", "to"],
        description="A query made only of these is neither counted nor suggested.",
    )
    block_list: list[str] = Field(
        [],
        description="Words never suggested: a completion holding one (after normalization) is dropped, "
        "with or without a safety model.",
    )
    personal_weight: float = Field(
        1.0,
        ge=0,
        description="A user's own past queries: score x (1 + this x the times the user searched it "
        "among their last `history`).",
    )
    history: int = Field(
        50, ge=0, description="Recent queries (and engaged topics) kept per user for the personal boosts."
    )
    topic_weight: float = Field(
        4.0,
        ge=0,
        description="The user's engaged topics: score x (1 + this x the share of the user's last `history` "
        "clicks, likes and shares in the topics that the query's results were engaged in); 0 turns it off "
        "(and what it keeps: every item's topic, the last searches' request ids).",
    )
    topic_attribute: str = Field(
        "topic", description="The item attribute (of its upsert) that names its topic, for topic_weight."
    )
    late_s: float = Field(
        600.0,
        ge=0,
        description="When the API starts on a resumed worker state it counts the log's history; the ids "
        "of its last late_s are remembered so that the worker's redeliveries count once.",
    )
    rebuild_s: float = Field(
        60.0, gt=0, description="How often what arrived is folded into the static index (off the requests)."
    )
    publish_full_s: float = Field(
        300.0,
        gt=0,
        description="Separate topology (the Redis bus): how often the worker writes all its counts to the "
        "state store (between, each checkpoint writes the queries it applied); the API processes start "
        "from the last such snapshot.",
    )
    max_chars: int = Field(100, ge=1, le=1_000, description="Longest prefix (a longer one is a 422).")
    typo_below: int = Field(
        3,
        ge=0,
        description="A prefix with fewer completions than this is also completed as its one-edit "
        "variants (deletion, substitution, insertion, transposition) that the index knows.",
    )
    cache_size: int = Field(
        10_000, ge=0, description="Prefixes whose answers are cached (anonymous requests)."
    )


# [serving] and [retrieval] keys an experiment's arm may set: the ones read per request
ARM_SERVING_KEYS = (
    "value_weights",
    "diversity",
    "diversity_lambda",
    "creator_gap",
    "explore_slots",
    "explore_allocator",
    "light_keep",
    "rank",
)
ARM_RETRIEVAL_KEYS = ("sources", "ef_search", "recent")


def _only(value: dict[str, Any], allowed: tuple[str, ...], where: str) -> dict[str, Any]:
    """``value`` if it sets only ``allowed`` keys, else ValueError naming the others."""
    if unknown := sorted(set(value) - set(allowed)):
        raise ValueError(f"{unknown} cannot differ {where}; it may set {list(allowed)}")
    return value


class ArmDef(Section):
    """One arm of an experiment: a served configuration."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", description="Arm name.")
    weight: float = Field(
        1.0, gt=0, description="Share of the experiment's users, relative to the other arms."
    )
    model: str | None = Field(
        None,
        description="Registered feed-model version (a number) or alias (champion, challenger) this arm "
        "serves; unset: the champion.",
    )
    serving: dict[str, Any] = Field(
        {}, description=f"[serving] keys this arm overrides: some of {', '.join(ARM_SERVING_KEYS)}."
    )
    retrieval: dict[str, Any] = Field(
        {}, description=f"[retrieval] keys this arm overrides: some of {', '.join(ARM_RETRIEVAL_KEYS)}."
    )

    def settings_keys(self) -> set[str]:
        """The settings this arm sets, as ``section.key`` (``model`` for the model)."""
        out = {f"serving.{k}" for k in self.serving} | {f"retrieval.{k}" for k in self.retrieval}
        return out | ({"model"} if self.model is not None else set())

    @field_validator("serving")
    @classmethod
    def _serving_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _only(value, ARM_SERVING_KEYS, "per arm")

    @field_validator("retrieval")
    @classmethod
    def _retrieval_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _only(value, ARM_RETRIEVAL_KEYS, "per arm")


class Guardrail(Section):
    """A metric a ship decision must not harm."""

    metric: str = Field(description="A per-user metric (see [experiments] metrics).")
    max_drop: float = Field(
        0.0,
        ge=0,
        description="Largest relative harm tolerated: the guardrail passes when the confidence "
        "interval's worst end is within this share of the control's mean.",
    )


class Design(StrEnum):
    ab = "ab"
    interleave = "interleave"


class ExperimentDef(Section):
    """An experiment: its layer's share of users, split between the arms by a salted hash (ab), or
    each shown the two arms' lists interleaved (interleave)."""

    name: str = Field(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", description="Experiment name."
    )
    layer: str = Field(
        "default",
        min_length=1,
        description="Experiments in one layer are mutually exclusive (a user is in at most one); "
        "layers are orthogonal and must not set the same keys.",
    )
    fraction: float = Field(1.0, gt=0, le=1, description="Share of the layer's users in this experiment.")
    design: Design = Field(
        Design.ab,
        description="ab: users split between the arms by weight; interleave: every user in the experiment "
        "sees the team-draft interleaving of the two arms' lists, and a click credits the arm that "
        "placed the item (exactly two arms; weights unused).",
    )
    salt: str | None = Field(None, description="Salt of the arm split (default: the name).")
    enabled: bool = Field(True, description="False: no one is assigned (its users get the base config).")
    control: str | None = Field(
        None, description="The arm the others are compared with (default: the first)."
    )
    metric: str = Field("ctr", description="Primary per-user metric of the ship decision.")
    guardrails: list[Guardrail] = Field(
        [], description="Metrics that block a ship decision when harmed beyond their max_drop."
    )
    arms: list[ArmDef] = Field(description="At least two arms.")

    @field_validator("arms")
    @classmethod
    def _arms(cls, value: list[ArmDef]) -> list[ArmDef]:
        if len(value) < 2:
            raise ValueError("an experiment needs at least two arms")
        names = [a.name for a in value]
        if len(set(names)) < len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        return value

    @model_validator(mode="after")
    def _interleave_two(self) -> ExperimentDef:
        if self.design is Design.interleave and len(self.arms) != 2:
            raise ValueError(f"an interleaving experiment compares exactly two arms, got {len(self.arms)}")
        return self

    @model_validator(mode="after")
    def _control_is_an_arm(self) -> ExperimentDef:
        if self.control is not None and self.control not in [a.name for a in self.arms]:
            raise ValueError(f"control {self.control!r} is not an arm ({[a.name for a in self.arms]})")
        return self

    def control_arm(self) -> str:
        return self.control or self.arms[0].name


class ExperimentsConfig(Section):
    """A/B tests and the long-term holdout. Assignment hashes the user id with a salt (blake2b), so
    it is the same in every process and after restarts; the assignment is logged on every impression
    (``experiment_arm``), and ``recstack experiment report NAME`` analyses it from the log."""

    salt: str = Field("recstack", description="Salt of the holdout and of each layer's split.")
    holdout: float = Field(
        0.0, ge=0, lt=1, description="Share of all users kept out of every experiment (long-term holdout)."
    )
    holdout_model: str | None = Field(
        None, description="Model version or alias the holdout is served (unset: the champion)."
    )
    holdout_serving: dict[str, Any] = Field({}, description="[serving] keys the holdout is served with.")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="Significance level of the analysis (two-sided).")
    power: float = Field(0.8, gt=0, lt=1, description="Power for the minimum detectable effect.")
    srm_alpha: float = Field(
        0.001, gt=0, lt=0.5, description="A sample-ratio mismatch is flagged below this chi-squared p-value."
    )
    pre_days: float = Field(
        14.0, ge=0, description="Days before an experiment's first impression read for CUPED's covariate."
    )
    tests: list[ExperimentDef] = Field([], description="The experiments, one [[experiments.tests]] each.")

    @field_validator("holdout_serving")
    @classmethod
    def _holdout_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _only(value, ARM_SERVING_KEYS, "for the holdout")

    @model_validator(mode="after")
    def _layers_fit(self) -> ExperimentsConfig:
        names = [t.name for t in self.tests]
        if len(set(names)) < len(names):
            raise ValueError(f"experiment names must be unique, got {names}")
        interleaved = [t.name for t in self.tests if t.design is Design.interleave and t.enabled]
        if len(interleaved) > 1:
            raise ValueError(f"at most one interleaving experiment can run at a time, got {interleaved}")
        layers: dict[str, list[ExperimentDef]] = {}
        for t in self.tests:
            layers.setdefault(t.layer, []).append(t)
        for layer, tests in layers.items():
            total = sum(t.fraction for t in tests)
            if total > 1 + 1e-9:
                raise ValueError(
                    f"layer {layer!r}: fractions of {[t.name for t in tests]} add up to {total:g} > 1 "
                    "(experiments in one layer share its users; put overlapping ones in other layers)"
                )
        owner: dict[str, str] = {}
        for layer, tests in layers.items():
            for key in {key for t in tests for a in t.arms for key in a.settings_keys()}:
                if owner.setdefault(key, layer) != layer:
                    raise ValueError(
                        f"layers {owner[key]!r} and {layer!r} both set {key}: a user in both would be "
                        "served two values (put the experiments in one layer)"
                    )
        return self


class ReferenceKind(StrEnum):
    previous = "previous"
    serving = "serving"
    training = "training"


class RetrainFrom(StrEnum):
    champion = "champion"
    scratch = "scratch"


class Engine(StrEnum):
    local = "local"
    ray = "ray"


class ComputeConfig(Section):
    """Where the heavy batch jobs run: feature materialization and training-set building, the
    training of the two-tower and the neural rankers, and batch inference (item vectors into the
    index, offline candidates, the catalog's safety scores)."""

    engine: Engine = Field(
        Engine.local,
        description="local (this process: DuckDB, one PyTorch process) or ray (Ray Data jobs and Ray "
        "Train's TorchTrainer; needs the scale extra: pip install 'recstack[scale]').",
    )
    address: str | None = Field(
        None,
        description="The Ray cluster to join: host:port of its head (6379), ray://host:10001 for Ray "
        "Client, or auto; none: start a local Ray on this machine with cpus CPUs.",
    )
    cpus: int | None = Field(
        None, ge=1, description="CPUs of the local Ray started when address is none; unset: all cores."
    )
    workers: int = Field(2, ge=1, description="Ray Train workers (one training process each).")
    cpus_per_worker: int = Field(1, ge=1, description="CPUs (and torch threads) of each training worker.")
    use_gpu: bool = Field(False, description="Ray Train: one GPU per worker, NCCL instead of gloo.")
    partitions: int | None = Field(
        None,
        ge=1,
        description="Ray Data partitions of the join and feature jobs (by entity hash, then time); unset: "
        "twice the cluster's CPUs.",
    )
    batch_rows: int = Field(8192, ge=1, description="Rows per batch of the batch-inference jobs.")
    max_failures: int = Field(
        1,
        ge=0,
        description="Ray Train: restarts of the worker group after a worker dies (the fit starts again "
        "from its seed); then the training fails and nothing is registered.",
    )
    task_retries: int = Field(
        3, ge=0, description="Ray Data: retries of a task whose worker died before the job fails."
    )
    connect_timeout_s: float = Field(
        10.0, gt=0, description="Seconds to wait for the cluster's address to answer before failing."
    )


class MonitoringConfig(Section):
    """``recstack monitor``: drift, calibration, skew and online metrics per window of the serving
    log against the reference saved with the served bundle (docs/monitoring.md)."""

    enabled: bool = Field(
        True, description="Run the checks on a schedule in the worker (and the embedded API's worker)."
    )
    every_s: float = Field(3600.0, gt=0, description="Seconds between scheduled checks.")
    reference: ReferenceKind = Field(
        ReferenceKind.previous,
        description="What drift and calibration are measured against: previous, the last window the "
        "version served (a sudden change); serving, the first one (any change since it started); "
        "training, the bundle's own reference (its validation and holdout rows). Until a version has "
        "served a window, the training reference.",
    )
    settle_windows: int = Field(
        3,
        ge=0,
        description="A version's first this many windows settle: its drift and calibration are "
        "reported, never a breach (the features it reads still move with its own feedback loop).",
    )
    window_s: float = Field(
        86_400.0, gt=0, description="Each check reads the serving log of the last this many s."
    )
    min_rows: int = Field(
        500,
        ge=1,
        description="A check with fewer values is reported as too small, never a breach (drift counts "
        "requests, one impression each; calibration and online rates count settled impressions).",
    )
    bins: int = Field(10, ge=2, le=100, description="Quantile bins of the reference (PSI).")
    sample: int = Field(2_000, ge=50, description="Reference values kept per feature (the KS test).")
    skip: list[str] | None = Field(
        None,
        description="Features not drift-checked; default: the calendar ones (context fields hour and "
        "weekday: a window shorter than the reference's span holds another mix of them by design).",
    )
    psi: float = Field(
        0.25,
        gt=0,
        description="A feature or prediction drifts when its PSI, less the PSI two samples of these sizes "
        "reach with no change ((cells - 1)(1/n1 + 1/n2)), exceeds this...",
    )
    ks: float = Field(0.25, gt=0, le=1, description="... or (numeric) the KS statistic D exceeds this ...")
    cramers_v: float = Field(
        0.25,
        gt=0,
        le=1,
        description="... or (categorical) Cramér's V of the chi-squared test, bias-corrected for the "
        "window's size (Bergsma), exceeds this ...",
    )
    p_value: float = Field(
        1e-3,
        gt=0,
        lt=1,
        description="... with a KS or chi-squared p-value below this over the window's number of "
        "drift tests (Bonferroni; effect and significance must both hold).",
    )
    ece: float = Field(
        0.05, gt=0, lt=1, description="Calibration breaches when a head's ECE exceeds this ..."
    )
    calibration_ratio: float = Field(
        0.25,
        gt=0,
        description="... or observed / predicted rate (calibration in the large) is off 1 by more "
        "than this ...",
    )
    min_positives: int = Field(
        30,
        ge=1,
        description="Calibration is judged only with this many positives observed or expected (a rate "
        "from a handful says nothing).",
    )
    calibration_z: float = Field(
        4.0, gt=0, description="... and that gap is this many standard errors from 0 (both must hold)."
    )
    skew_sample: int = Field(
        2_000, ge=0, description="Served impressions per check whose features are recomputed offline."
    )
    skew_share: float = Field(
        0.01, ge=0, lt=1, description="A feature is skewed when more than this share of its values differ."
    )
    skew_tolerance: float = Field(
        1e-6, ge=0, description="Relative difference below which a logged and an offline value agree."
    )
    ctr_drop: float = Field(
        0.15,
        gt=0,
        lt=1,
        description="Online CTR breaches when it falls this far below the reference's (day over day on "
        "the simulator's stable world it moved under 5%).",
    )
    hides_rise: float = Field(
        1.0,
        gt=0,
        description="Hides + reports per request breach when they rise this far above the reference's.",
    )
    latency_p99_ms: float = Field(
        200.0, gt=0, description="A request's p99 serving time (sum of stages) above this breaches."
    )
    degraded_share: float = Field(
        0.01, ge=0, lt=1, description="Share of requests with a degraded stage above this breaches."
    )
    act: bool = Field(
        True,
        description="Act on breaches: drift (features, predictions, online CTR) retrains incrementally "
        "through the promotion gate, calibration alone refits calibration.",
    )
    retrain_from: RetrainFrom = Field(
        RetrainFrom.champion,
        description="A drift-triggered round warm-starts from the champion (champion) or trains anew "
        "on the log since the shift (scratch).",
    )
    recovery_rounds: int = Field(
        4,
        ge=0,
        description="After a drift retrain is promoted, this many more rounds, one per check, on the "
        "log since the shift (it grows every window).",
    )
    cooldown_s: float = Field(
        86_400.0, ge=0, description="No action within this many s of the last (retraining needs new data)."
    )
    table: Path | None = Field(
        None, description="SQLite monitoring table; default <state_dir>/monitoring.sqlite."
    )
    metrics_port: int = Field(
        0, ge=0, le=65535, description="`recstack worker` serves its monitoring gauges on this port (0: off)."
    )


class RegistryConfig(Section):
    model_name: str = Field("recstack-feed", description="Registered model holding the feed bundle.")
    uri: str | None = Field(
        None,
        description="MLflow registry URI; default: DATABASE_URL when set, else the tracking URI (SQLite).",
    )
    gate_metric: str = Field("auc_click", description="Holdout metric the promotion gate compares.")
    gate_margin: float = Field(
        0.0, description="A challenger must beat the champion's gate metric by at least this."
    )
    incremental_every_s: float = Field(
        3600.0, gt=0, description="`recstack train --incremental --every` period."
    )


class EvalConfig(Section):
    ks: list[int] = Field([10, 20], description="Cut-offs for Recall/NDCG/MRR/Hit@K.")
    monitor: str = Field("ndcg@10", description="Validation metric for early stopping (higher is better).")


class Settings(Section):
    """All of recstack's settings; ``recstack.toml`` mirrors this structure key for key."""

    paths: PathsConfig = PathsConfig()
    event_log: EventLogConfig = EventLogConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()
    mf: MFConfig = MFConfig()
    two_tower: TwoTowerConfig = TwoTowerConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    ranking: RankingConfig = RankingConfig()
    eval: EvalConfig = EvalConfig()
    online: OnlineConfig = OnlineConfig()
    serving: ServingConfig = ServingConfig()
    registry: RegistryConfig = RegistryConfig()
    mapping: MappingConfig = MappingConfig()
    safety: SafetyConfig = SafetyConfig()
    autocomplete: AutocompleteConfig = AutocompleteConfig()
    experiments: ExperimentsConfig = ExperimentsConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    compute: ComputeConfig = ComputeConfig()
    features: list[FeatureDef] = Field(
        default_factory=lambda: [_FEATURE_ADAPTER.validate_python(d) for d in DEFAULT_FEATURES],
        description="Feature definitions, one [[features]] table each.",
    )

    @field_validator("features")
    @classmethod
    def _unique_features(cls, value: list[Any]) -> list[Any]:
        return check_unique(value)

    @model_validator(mode="after")
    def _monitoring_skips_features(self) -> Settings:
        names = {f.name for f in self.features}
        unknown = [n for n in self.monitoring.skip or [] if n not in names]
        if unknown:
            raise ValueError(
                f"[monitoring] skip names {unknown}, which are not [[features]]; features: {sorted(names)}"
            )
        return self

    def event_log_path(self) -> Path:
        return self.event_log.path or self.paths.state_dir / "events"

    def tracking_uri(self) -> str:
        return self.tracking.uri or f"sqlite:///{(self.paths.state_dir / 'mlflow.db').resolve()}"

    def registry_uri(self) -> str:
        return self.registry.uri or self.tracking_uri()

    def monitoring_table(self) -> Path:
        return self.monitoring.table or self.paths.state_dir / "monitoring.sqlite"

    def drift_skipped(self) -> set[str]:
        """The features the drift checks leave out (``[monitoring] skip``, default the calendar ones)."""
        if self.monitoring.skip is not None:
            return set(self.monitoring.skip)
        return {
            f.name
            for f in self.features
            if getattr(f, "type", "") == "context" and getattr(f, "field", "") in ("hour", "weekday")
        }


ENV_PREFIX = "RECSTACK_"


def _check_keys(data: dict[str, Any], model: type[BaseModel], where: str) -> None:
    """Reject unknown keys, naming the valid ones (pydantic's own message does not list them)."""
    fields = model.model_fields
    for key, value in data.items():
        if key not in fields:
            valid = ", ".join(sorted(fields))
            place = f"[{where}]" if where else "the top level"
            raise ConfigError(f"unknown key '{key}' in {place}; valid keys: {valid}")
        annotation = fields[key].annotation
        if key == "features" and model is Settings:
            _check_feature_keys(value)
            continue
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if not isinstance(value, dict):
                raise ConfigError(f"'{key}' must be a table ([{key}]), got {value!r}")
            _check_keys(value, annotation, key if not where else f"{where}.{key}")


def _check_feature_keys(value: Any) -> None:
    if not isinstance(value, list):
        raise ConfigError("'features' must be an array of tables ([[features]])")
    for index, table in enumerate(value):
        if not isinstance(table, dict):
            raise ConfigError(f"features[{index}] must be a table")
        kind = table.get("type")
        if kind not in FEATURE_TYPES:
            raise ConfigError(
                f"features[{index}]: type {kind!r} unknown; valid types: {', '.join(FEATURE_TYPES)}"
            )
        fields = FEATURE_TYPES[kind].model_fields
        for key in table:
            if key not in fields:
                raise ConfigError(
                    f"unknown key '{key}' in features[{index}] ({kind}); valid keys: "
                    f"{', '.join(sorted(fields))}"
                )


def _parse_env_value(raw: str) -> Any:
    """Environment values are JSON where they parse as JSON (numbers, booleans, lists), else strings."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def env_overrides(environ: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Collect ``RECSTACK_SECTION__KEY`` overrides and the conventional ``REDIS_URL`` and
    ``DATABASE_URL`` (the registry's backend store)."""
    out: dict[str, dict[str, Any]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        out.setdefault(section, {})[key] = _parse_env_value(raw)
    if "REDIS_URL" in environ:
        out.setdefault("event_log", {}).setdefault("redis_url", environ["REDIS_URL"])
    if environ.get("DATABASE_URL"):
        out.setdefault("registry", {}).setdefault("uri", environ["DATABASE_URL"])
    return out


def load_settings(path: Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Load settings from ``path`` (if given and present) and the environment.

    Raises ConfigError with the key and reason for unknown keys, wrong types or bad TOML.
    """
    data: dict[str, Any] = {}
    if path is not None:
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    for section, values in env_overrides(dict(os.environ if environ is None else environ)).items():
        current = data.setdefault(section, {})
        if not isinstance(current, dict):
            raise ConfigError(f"'{section}' must be a table, got {current!r}")
        current.update(values)
    _check_keys(data, Settings, "")
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err.get('input')!r})"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc


def default_config_path() -> Path | None:
    """``./recstack.toml`` if present, else None (embedded defaults)."""
    candidate = Path("recstack.toml")
    return candidate if candidate.exists() else None


def _toml_key(key: Any) -> str:
    text = key.value if isinstance(key, StrEnum) else str(key)
    return text if text.replace("_", "").replace("-", "").isalnum() else json.dumps(text)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


def sections() -> list[tuple[str, type[Section]]]:
    """(name, model) of every table of ``recstack.toml`` but ``[[features]]``, in file order."""
    out = []
    for name, field in Settings.model_fields.items():
        model = field.annotation
        if name != "features":
            assert isinstance(model, type) and issubclass(model, Section)
            out.append((name, model))
    return out


def annotated_default() -> str:
    """The default ``recstack.toml``: every key with its comment and default; unset keys commented."""
    lines = [
        "# recstack.toml: every setting with its default. Unknown keys are an error.",
        "# Environment overrides: RECSTACK_<SECTION>__<KEY>=value (e.g. RECSTACK_TRAIN__EPOCHS=5);",
        "# REDIS_URL sets [event_log] redis_url; DATABASE_URL sets [registry] uri.",
        "",
    ]
    for section, model in sections():
        lines.append(f"[{section}]")
        defaults = model()
        for key, sub in model.model_fields.items():
            value = getattr(defaults, key)
            lines.append(f"# {sub.description}")
            if value is None:
                lines.append(f"# {key} =  (unset by default)")
            else:
                lines.append(f"{key} = {_toml_value(value.value if isinstance(value, StrEnum) else value)}")
        lines.append("")
    lines.append("# Feature definitions: one [[features]] table each, resolved by `type`:")
    for kind, feature_model in FEATURE_TYPES.items():
        doc = " ".join((feature_model.__doc__ or "").split())
        lines.append(f"#   {kind}: {doc}")
    lines.append("# Durations look like 30s, 15m, 1h, 7d; windowed features count events in whole buckets.")
    for feature in Settings().features:
        lines.append("[[features]]")
        for key, value in feature.model_dump(mode="json", exclude_defaults=False).items():
            if value is None:
                continue
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines).rstrip("\n")
