"""Settings: one typed place, read from ``SELFHEAL_*`` environment variables (pydantic-settings).

Every setting, its default and unit is listed in README.md ("Settings"). Secrets (Kafka SASL
password, ClickHouse password, tenant HMAC key) are ``SecretStr`` and never logged; each can also
be read from a file (``SELFHEAL_<NAME>_FILE``), the usual way to mount secrets in containers.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from streams.errors import ConfigError

#: Repository root in an editable install (state dir default lives under it).
ROOT = Path(__file__).resolve().parents[2]

#: the worker's producer ``max_request_size`` and the dead-letter topic's ``max.message.bytes``, bytes
KAFKA_MAX_REQUEST_BYTES = 2 * 1024 * 1024

LAYERS = ("tenant", "tenant_cohort", "tenant_workflow", "tenant_cohort_workflow", "release")


class Settings(BaseSettings):
    """All selfheal settings. Environment: ``SELFHEAL_<FIELD>`` (case-insensitive).

    Raises:
        ConfigError: on an invalid combination (e.g. unknown layer names).
    """

    model_config = SettingsConfigDict(env_prefix="SELFHEAL_", extra="ignore")

    # --- Kafka ---------------------------------------------------------------------------
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="host:port[,host:port]")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    topic_prefix: str = Field("", description="prepended to every topic and the app id (test isolation)")
    partitions: int = Field(6, ge=1, description="partitions of the source topics")
    replication: int = Field(1, ge=1)

    # --- worker (faust) --------------------------------------------------------------------
    app_id: str = "selfheal"
    state_dir: Path = ROOT / ".local"
    take_max_messages: int = Field(64, ge=1, description="Kafka messages per processing batch")
    take_within_s: float = Field(0.5, gt=0, description="max wait to fill a batch, s")
    commit_interval_s: float = Field(1.0, gt=0, description=(
        "how often processed offsets are committed, s (a crash redelivers at most this much)"))
    checkpoint_interval_s: float = Field(5.0, ge=0, description=(
        "how often changed slice state is written to its changelog, after which the batches processed "
        "meanwhile become committable, s (0: after every batch; a crash redelivers at most this much more)"))
    web_port: int = Field(6066, description="faust web server port (/metrics, read API /v1/...)")
    web_enabled: bool = False
    web_bind: str = Field("127.0.0.1", description="interface the web server binds (0.0.0.0 in containers)")
    web_host: str | None = Field(None, description=(
        "host name other workers reach this worker's web server at (read API routing to the owning worker); "
        "unset = the machine's host name"))
    api_tokens_path: Path | None = Field(None, description=(
        "JSON file tenant -> list of bearer tokens of the read API (streams.readapi); unset = API answers 503"))
    faust_loglevel: Literal["crit", "error", "warn", "info", "debug"] = Field(
        "warn", description="faust's own log level")
    broker_session_timeout_s: float = Field(10.0, description="consumer group session timeout, s")
    max_message_bytes: int = Field(1_048_576, description="larger messages are dead-lettered, bytes")
    max_event_age_s: int = Field(30 * 86400, description="older event_time is dead-lettered, s")
    max_clock_skew_s: int = Field(300, description="event_time further in the future is dead-lettered, s")

    # --- dead letters and poison records (issue 18) --------------------------------------
    dead_letter_payload: bool = Field(True, description=(
        "keep the original payload in dead-letter envelopes on the topic (false: left out; the envelope keeps "
        "its SHA-256 and size)"))
    dead_letter_max_payload_bytes: int = Field(1_048_576, ge=0, le=KAFKA_MAX_REQUEST_BYTES - 65_536, description=(
        "larger payloads are left out of the dead-letter envelope (SHA-256 and size kept), bytes; below the "
        "producer's max request size so an envelope always fits"))
    dead_letter_retention_s: int = Field(30 * 86400, gt=0, description=(
        "retention of the dead-letter topic, s (set when ensure_topics creates it)"))
    poison_max_attempts: int = Field(2, ge=1, description=(
        "times a record may fail processing on its own at the same offset before it is quarantined to the "
        "dead-letter topic (processing_error) and its partition moves on"))

    # --- ClickHouse ----------------------------------------------------------------------
    clickhouse_url: str | None = Field(None, description="http(s)://host:8123 of a real server; unset = embedded chDB")
    clickhouse_path: Path | None = Field(None, description="chDB data dir (default <state_dir>/clickhouse)")
    # the database name is the one identifier formatted into SQL ({db}): a plain identifier only
    clickhouse_database: str = Field("selfheal", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    clickhouse_user: str = "default"
    clickhouse_password: SecretStr | None = None
    sink_retry_s: float = Field(300.0, gt=0, description=(
        "how long a failing ClickHouse write is retried (exponential backoff, batch held, consumption "
        "paused) before the worker exits with code 70, s"))
    changelog_ack_timeout_s: float = Field(300.0, gt=0, description=(
        "how long a batch waits for the broker to acknowledge its changelog (state) messages "
        "before the worker exits with code 70 without committing it, s"))
    stats_interval_s: float = Field(10.0, gt=0, description="worker stats log line interval, s")
    recovery_reseek_after_s: float = Field(15.0, gt=0, description=(
        "a table recovery that received nothing for this long from a changelog partition already "
        "fetched past its high watermark seeks that partition back, s"))
    stall_report_s: float = Field(30.0, gt=0, description=(
        "a rebalance or table recovery lasting this long logs what the worker waits on "
        "(task frames, Kafka fetch state), again every 60 s while it lasts, s"))
    shutdown_timeout_s: float = Field(30.0, gt=0, description=(
        "SIGTERM/SIGINT: the worker drains and commits, and exits by force after this long, s "
        "(unacknowledged batches are redelivered)"))

    # fault-injection test hooks (SELFHEAL_FAULT_*) are not settings: streams.worker.faults

    # --- detection -----------------------------------------------------------------------
    layers: tuple[str, ...] = Field(LAYERS, description="baseline layers that are on")
    warmup_traces: int = Field(300, ge=10, description="traces before a slice's baseline is trusted")
    baseline_half_life_traces: float = Field(20_000, gt=0, description="EW half-life of baselines, traces")
    cusum_threshold: float = Field(18.0, gt=0, description="CUSUM decision interval h, nats")
    rate_shift: float = Field(1.5, gt=1, description="rate ratio the small-effect Bernoulli CUSUMs are tuned for")
    rate_shift_large: float = Field(3.0, gt=1, description="rate ratio the large-effect Bernoulli CUSUMs are tuned for")
    mean_shift_sigma: float = Field(1.0, gt=0, description="mean shift the Gaussian CUSUMs are tuned for, sigma")
    resolve_after_traces: int = Field(2_000, ge=1, description="quiet traces before an incident resolves")
    incident_update_interval_s: float = Field(60.0, ge=0, description="min time between updates of one incident, s")
    snapshot_interval_s: float = Field(60.0, gt=0, description="baseline snapshots to ClickHouse every, s")
    evidence_traces: int = Field(20, ge=1, le=64, description="evidence trace ids per incident")
    trace_index_size: int = Field(2_000_000, ge=1000, description="recent traces kept for feedback joins")
    feedback_grace_s: float = Field(30.0, ge=0, description="how long feedback for an unseen trace waits, s")
    feedback_maturity_s: float = Field(300.0, gt=0, description=(
        "feedback delay assumed for correction-rate detection until a tenant's delay distribution is learned "
        "(a trace bucket counts once this old), s; label-delay bucket width = maturity / 8; later feedback is "
        "still counted"))

    # --- canary scorecards and rollout verdicts (streams.processors.canary) ----------------
    canary_alpha: float = Field(0.05, gt=0, lt=1, description=(
        "bound on a scorecard's false rollback rate (all metrics together, under continuous monitoring) "
        "and level of promotions"))
    canary_high_risk_alpha: float = Field(0.01, gt=0, lt=1, description="level of promotions in high-risk workflows")
    canary_high_risk_workflows: Annotated[tuple[str, ...], NoDecode] = Field(
        ("*medication*", "*triage*", "patient_*"),
        description="glob patterns (comma-separated) of high-risk workflows: own scorecards, stricter promotion")
    canary_min_samples: int = Field(500, ge=1, description=(
        "candidate traces every metric needs per stage before a promotion"))
    canary_high_risk_min_samples: int = Field(2_000, ge=1, description="the same for high-risk workflows")
    canary_margin: float = Field(1.5, gt=1, le=8, description=(
        "non-inferiority margin: largest tolerated candidate/control ratio of a success metric's harmful-event rate"))
    canary_mixture_scale: float = Field(0.5, gt=0, le=2, description=(
        "sd of the mixing distribution over the log rate ratio (mSPRT tau); tunes power to effect sizes near it"))
    canary_verdict_interval_s: float = Field(600.0, ge=0, description=(
        "event time between verdict events of a scorecard whose verdict did not change, s"))
    canary_bucket_s: float = Field(75.0, gt=0, le=3600, description=(
        "width of the event-time buckets that stratify a rollout's comparison, s (a stratum is bucket x "
        "workflow; strata without traces of both arms carry no information)"))
    # --- feedback aggregation (docs/feedback.md) ------------------------------------------
    feedback_near_dup_threshold: float = Field(91.0, ge=0, le=100, description=(
        "rapidfuzz token-set ratio (0-100) from which two corrections of one tenant, trace and category are "
        "near-duplicates (chosen on tests/data/near_duplicate_pairs.json)"))
    feedback_max_corrections_per_trace: int = Field(32, ge=1, description=(
        "unique corrections kept per trace; a further distinct one is dead-lettered (feedback_limit)"))
    feedback_max_submissions_per_trace: int = Field(256, ge=1, description=(
        "distinct feedback ids kept per trace; a further one is dead-lettered (feedback_limit)"))
    feedback_tenant_min_sessions: int = Field(3, ge=1, description=(
        "distinct sessions of one tenant a correction pattern must recur in to become tenant-scoped"))
    feedback_segment_min_tenants: int = Field(3, ge=2, description=(
        "k: distinct tenants of one cohort a pattern must be seen in to become segment-scoped; also the "
        "distinct tenants (across cohorts) a global candidate needs"))
    feedback_global_min_cohorts: int = Field(2, ge=2, description=(
        "distinct cohorts a pattern seen in >= k tenants must span to become a global candidate"))
    feedback_patterns_refresh_s: float = Field(2.0, gt=0, description=(
        "how often the worker recomputes the feedback patterns (scope ladder) written since the last refresh, s"))

    # --- OTLP ingress (selfheal otlp; docs/otlp.md) ----------------------------------------
    otlp_host: str = Field("127.0.0.1", description="address the OTLP/HTTP receiver binds")
    otlp_port: int = Field(4318, ge=0, le=65535, description="OTLP/HTTP receiver port (0: any free port)")
    otlp_kafka_topic: str = Field("otlp_spans", description=(
        "topic the OpenTelemetry Collector's Kafka exporter writes (otlp_proto encoding), after topic_prefix"))
    otlp_group_id: str = Field("selfheal-otlp", description=(
        "consumer group of the OTLP Kafka source, after topic_prefix"))
    otlp_settle_s: float = Field(5.0, gt=0, description=(
        "a run is mapped once no span of its OTel trace arrived for this long, s"))
    otlp_root_wait_s: float = Field(60.0, gt=0, description=(
        "spans whose agent root span has not arrived after this long are dead-lettered (otlp_no_root), s"))
    otlp_max_pending_spans: int = Field(200_000, ge=1, description="spans held for assembly at most (memory bound)")
    otlp_max_request_bytes: int = Field(16 * 1024 * 1024, ge=1024, description=(
        "largest OTLP/HTTP request body after decompression, bytes (413 beyond)"))
    otlp_attribute_map: str = Field("", description=(
        "field=attribute pairs (comma-separated) read when no selfheal.* attribute gives tenant_id, cohort, "
        "workflow, intent, agent_id, session_id or release_id; replaces that field's default fallbacks"))

    # --- privacy -------------------------------------------------------------------------
    tenant_hmac_key: SecretStr = Field(SecretStr("selfheal-dev-key-change-me"),
                                       description="key for tenant-keyed HMAC of identifiers")
    redact: bool = True
    tenant_auth: bool = Field(False, description=(
        "verify each trace/feedback message's HMAC signature against its tenant's keys; unsigned or wrongly "
        "signed messages are dead-lettered as tenant_auth (docs/security.md)"))
    tenant_keys_file: Path | None = Field(None, description=(
        "JSON file {tenant: {key_id: base64 key}} (at most 2 keys per tenant): the worker verifies with it, "
        "the SDK signs with its tenant's last key when it is set"))

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: dict) -> dict:
        # SELFHEAL_<NAME>_FILE=/run/secrets/x reads the secret from a file.
        for name in ("kafka_sasl_password", "clickhouse_password", "tenant_hmac_key"):
            path = os.environ.get(f"SELFHEAL_{name.upper()}_FILE")
            if path and name not in data:
                try:
                    data[name] = Path(path).read_text().strip()
                except OSError as exc:
                    raise ConfigError(f"SELFHEAL_{name.upper()}_FILE={path}: {exc.strerror}") from exc
        return data

    @field_validator("layers", mode="before")
    @classmethod
    def _split_layers(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        unknown = set(value) - set(LAYERS)  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"unknown layers {sorted(unknown)}; known: {', '.join(LAYERS)}")
        return value

    @field_validator("canary_high_risk_workflows", mode="before")
    @classmethod
    def _split_patterns(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        return value

    # --- derived -------------------------------------------------------------------------
    def topic(self, name: str) -> str:
        """Full topic name: ``topic_prefix`` + one of ``traces``, ``feedback``, ``incidents``,
        ``deadletter``, ``verdicts``.

        Raises:
            ConfigError: unknown topic name.
        """
        try:
            return self.topic_prefix + TOPICS[name]
        except KeyError:
            raise ConfigError(f"unknown topic {name!r}; known: {', '.join(TOPICS)}") from None

    @property
    def full_app_id(self) -> str:
        """faust app id (consumer group and changelog topic prefix)."""
        return self.topic_prefix + self.app_id

    @property
    def clickhouse_dir(self) -> Path:
        """chDB data directory used when ``clickhouse_url`` is unset."""
        return self.clickhouse_path or (self.state_dir / "clickhouse")

    def kafka_config(self) -> dict[str, str]:
        """librdkafka (confluent-kafka) client configuration: bootstrap and security only."""
        conf = {"bootstrap.servers": self.kafka_bootstrap, "security.protocol": self.kafka_security_protocol}
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
            conf["sasl.username"] = self.kafka_sasl_username or ""
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else ""
        return conf


#: Logical topic name → Kafka topic (before ``topic_prefix``).
TOPICS = {
    "traces": "agent.traces.v1",
    "feedback": "agent.feedback.v1",
    "incidents": "agent.incidents.v1",
    "deadletter": "agent.deadletter.v1",
    "verdicts": "agent.rollout-verdicts.v1",
    "actions": "agent.incident-actions.v1",
    "signals": "agent.platform-signals.v1",
}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings from the environment (cached; tests build their own ``Settings``)."""
    return Settings()
