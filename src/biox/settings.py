"""One settings object for the whole system, read from ``BIOX_*`` environment variables.

Every process (worker, CLI, demo, test) reads the same variables, so a deployment is
configured in one place: the environment of its service manager or container.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from biox.config import example
from biox.trust.tls import ClientTLS


def _state_home() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")


#: the hosts a development broker may listen on (``dev_shared_broker``)
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class Settings(BaseSettings):
    #: secrets from files: with BIOX_SECRETS_DIR=/run/secrets, the file
    #: /run/secrets/biox_database_url holds BIOX_DATABASE_URL (containers' secrets)
    model_config = SettingsConfigDict(
        env_prefix="BIOX_", extra="ignore", secrets_dir=os.environ.get("BIOX_SECRETS_DIR")
    )

    amqp_url: str | None = Field(
        default=None,
        description="Broker URL; the nodes of one cluster comma-separated, each tried in "
        "turn and the next after a lost connection. Unset: the demo and tests start a local "
        "RabbitMQ.",
    )
    data_dir: Path = Field(
        default_factory=lambda: _state_home() / "biox",
        description="Databases, galleries, broker state. Default: $XDG_STATE_HOME/biox "
        "(~/.local/state/biox), wherever biox is run from.",
    )
    database_url: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy URL; '{participant}' is replaced by the participant code so each "
            "participant keeps its own database. Unset: SQLite under data_dir."
        ),
    )
    registry: Path = Field(
        default_factory=lambda: example("participants.toml"),
        description="Who takes part and what each pair agreed. Default: the example shipped "
        "with biox (deploy/participants.toml in a clone; `biox init` copies it).",
    )
    keys_dir: Path | None = Field(
        default=None,
        description=(
            "Signing and sealing keys: <keys_dir>/<code>/ holds a participant's private "
            "keys, <keys_dir>/trust.toml everyone's public keys. Unset: <data_dir>/keys."
        ),
    )
    tls_ca: Path | None = Field(default=None, description="CA that signed the broker's cert.")
    tls_cert: Path | None = Field(
        default=None,
        description="This process's client certificate; its common name is its broker user.",
    )
    tls_key: Path | None = Field(default=None, description="The client certificate's key.")
    max_message_bytes: int = Field(
        default=2 * 1024 * 1024,
        description="Largest message a broker accepts and a worker reads (docs/security.md).",
    )
    max_header_bytes: int = Field(
        default=16 * 1024,
        description="Largest headers (names and values together) a worker reads: the "
        'broker\'s message size limit counts the body only (docs/security.md, "Quotas").',
    )
    worker_buffer_bytes: int = Field(
        default=256 * 1024 * 1024,
        description="What a worker's unacknowledged deliveries may hold at most: the "
        "prefetch is lowered to fit this many messages of the largest size.",
    )
    dev_shared_broker: bool = Field(
        default=False,
        description=(
            "Development only: every participant on one broker under one user (guest, plain "
            "AMQP). The broker then cannot tell participants apart, so a sender is proven "
            "by its signature alone. Never set between participants."
        ),
    )
    policy: Path = Field(
        default_factory=lambda: example("policy.toml"),
        description="Each participant's release, enrolment, retention and retrieval rules.",
    )
    staff: Path = Field(
        default_factory=lambda: example("staff.toml"),
        description="Each participant's people and their duties (§16; docs/security.md, "
        '"People and roles").',
    )
    operator: str | None = Field(
        default=None,
        description="Your name as staff, where no certificate says it (a plain broker).",
    )
    agreement: Path = Field(
        default_factory=lambda: example("agreement.toml"),
        description="The measures both participants review (§27) and the checks they run (§28).",
    )

    # matching
    index: Literal["auto", "flat", "ivf"] = "auto"
    exact_max: int = Field(default=50_000, description="Largest gallery searched exhaustively.")
    ivf_nprobe: int = Field(default=0, description="IVF lists searched; 0 = about 12 % of them.")
    candidates: int = Field(default=10, description="Candidates per modality from the index.")
    threshold_high: float = Field(
        default=0.55, description="Fused score at or above: match (without a calibration)."
    )
    threshold_low: float = Field(
        default=0.30, description="Fused score below: no match (without a calibration)."
    )
    calibration: Path | None = Field(
        default=None,
        description="The file `biox calibrate` writes (log-LR maps and thresholds by gallery "
        "size); default <data dir>/<participant>/calibration.json when it exists. Without "
        "one, the mean rule and the two thresholds above decide.",
    )
    max_candidates_released: int = 3
    gallery_sync_s: float = Field(
        default=2.0, description="How often a matcher picks up query data others enrolled."
    )

    shards: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "Gallery shards: above 1 the query worker scatters each query to this many shard "
            "workers, each holding the records with record_id % shards == its index, and "
            'gathers their candidates (docs/architecture.md, "Shards").'
        ),
    )
    shard: int = Field(
        default=0, ge=0, description="Which shard a shard worker holds (0 to BIOX_SHARDS - 1)."
    )

    # human review (§8)
    review_overdue_s: float = Field(
        default=4 * 3600, description="An undecided case older than this is reported."
    )
    review_lease_s: float = Field(
        default=900, description="A case taken by an examiner returns to the pool after this."
    )
    search_threads: int = Field(
        default=1,
        description=(
            "FAISS OpenMP threads per matcher; 0 = one per core. One, because workers run as "
            "competing processes and a batch of probes keeps one thread busy."
        ),
    )
    worker_nice: str = Field(
        default="query=-5,shard=-5",
        description=(
            "CPU priority (nice, -20..19) of the worker kinds named, e.g. 'query=-5': every "
            "query waits for the matcher's search, so where workers share cores it goes "
            "first. Raising one needs CAP_SYS_NICE or an RLIMIT_NICE that allows it "
            "(systemd: LimitNICE=-5); without, the worker logs priority_not_set. '': none."
        ),
    )

    # broker behaviour
    prefetch: int = 256
    batch_max: int = Field(default=64, description="Deliveries handled per commit.")
    batch_wait_ms: float = Field(default=2.0, description="How long to wait to fill a batch.")
    audit_batch_wait_ms: float = Field(
        default=50.0,
        description=(
            "How long the audit worker waits to fill a batch: no query waits for its entries, "
            "and a fuller batch shares one commit and one head read."
        ),
    )
    retry_delays: str = Field(default="1,5,30,120,600", description="Retry tiers, seconds.")
    delivery_limit: int = Field(default=20, description="Quorum-queue redelivery backstop.")
    publish_timeout: float = Field(
        default=60.0, description="Retry unconfirmed publishes this long."
    )
    heartbeat: int = 30

    answer_deadline_s: float = Field(
        default=600,
        description="A partner that has not answered a query by then shows as timed_out in "
        "the encounter result (a later answer revises it).",
    )
    deadline_check_s: float = Field(
        default=5, description="How often the response worker looks for answers past due."
    )
    audit_checkpoint_s: float = Field(
        default=300,
        description="How often the audit worker sends its signed chain head to the partners.",
    )
    retention_purge_s: float = Field(
        default=3600,
        description="How often the notice worker purges expired data (docs/workflows.md, "
        '"Retention"); 0 turns the schedule off.',
    )
    marker_retention_days: int = Field(
        default=7,
        description="How long idempotency markers and the outgoing bodies they keep are kept "
        "once published: longer than any redelivery can take.",
    )
    signature_max_age_s: float = Field(
        default=3 * 86_400,
        description="A partner's message signed longer ago than this is refused on arrival "
        "(stale): a captured message cannot be sent again once the duplicate markers that "
        "would catch it are purged. An operator's replay of a dead letter is not held to it.",
    )
    clock_skew_s: float = Field(
        default=300,
        description="How far a partner's clock may run ahead of ours (and behind, on top of "
        "the freshness window).",
    )
    ledger_retention_days: int = Field(
        default=1095,
        ge=400,
        description="How long the agreement's ledgers (notices, disclosures, incidents) are "
        "kept: evidence for the annual review (§27) and the two after it.",
    )
    refusal_retention_days: int = Field(
        default=400,
        description="How long the record of a refused message is kept: the annual review "
        "(§27) counts a year of them.",
    )
    dead_letter_retention_days: int = Field(
        default=30,
        description="Dead letters older than this expire (a broker policy on every DLQ).",
    )
    registry_refresh_s: float = Field(
        default=1.0,
        description="How often a worker re-reads the participants' live status (a notice's "
        "change reaches every worker within this).",
    )
    notice_response_days: int = Field(
        default=30,
        description="By when a partner is asked to act on a deletion, correction, block or "
        'consent request notice (docs/workflows.md, "Notices").',
    )

    serve_counts: str = Field(
        default="",
        description="Workers per kind under `biox serve`, e.g. 'query=2,review=0' (others: 1).",
    )

    metrics_port: int = Field(
        default=0,
        description="Prometheus metrics: a worker serves them on this port; `biox serve` on "
        "this port (its workers' health) and gives its workers the ports after it. 0: off.",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Where the metrics listen: this machine only, unless a scraper elsewhere "
        "needs them (then the address of the interface it reaches, never all of them "
        "without a firewall: queue names and partner codes are in the labels).",
    )

    log_level: str = "INFO"
    log_json: bool = True

    @model_validator(mode="after")
    def _safe(self) -> Settings:
        """Combinations that would quietly switch a safeguard off are refused at start."""
        nodes = [n.strip() for n in (self.amqp_url or "").split(",") if n.strip()]
        for node in nodes if self.dev_shared_broker else []:  # every node of a list
            url = urlsplit(node)
            if url.scheme != "amqp" or url.hostname not in LOOPBACK:
                raise ValueError(
                    "BIOX_DEV_SHARED_BROKER=1 switches the broker identity checks off and is "
                    "honoured only for a development broker on this machine (amqp:// on "
                    f"127.0.0.1 or localhost), not {url.scheme}://{url.hostname}: unset it "
                    '(docs/security.md, "Development flag")'
                )
        if self.shard >= self.shards:
            raise ValueError(
                f"BIOX_SHARD={self.shard} is not a shard of BIOX_SHARDS={self.shards} "
                "(shards are numbered from 0)"
            )
        if self.marker_retention_days * 86_400 < self.signature_max_age_s + self.clock_skew_s:
            raise ValueError(
                "BIOX_MARKER_RETENTION_DAYS must cover BIOX_SIGNATURE_MAX_AGE_S plus "
                "BIOX_CLOCK_SKEW_S: a message still fresh enough to be taken must still be "
                "known as a duplicate"
            )
        return self

    @property
    def worker_prefetch(self) -> int:
        """``prefetch``, lowered so that as many of the largest messages fit the buffer."""
        return max(1, min(self.prefetch, self.worker_buffer_bytes // self.max_message_bytes))

    @property
    def retry_tiers(self) -> list[int]:
        return [int(s) for s in self.retry_delays.split(",") if s.strip()]

    def participant_dir(self, code: str) -> Path:
        path = self.data_dir / code
        path.mkdir(parents=True, exist_ok=True)
        return path

    def gallery_dir(self, code: str) -> Path:
        """Where the participant's FAISS snapshot lives (bulk enrolment writes it there)."""
        return self.participant_dir(code) / "gallery"

    def calibration_file(self, code: str) -> Path:
        """The calibration the participant's matchers load and reload (docs/matching.md)."""
        return self.calibration or self.participant_dir(code) / "calibration.json"

    def client_tls(self) -> ClientTLS | None:
        if self.tls_ca and self.tls_cert and self.tls_key:
            return ClientTLS(self.tls_ca, self.tls_cert, self.tls_key)
        return None

    def keys(self) -> Path:
        return self.keys_dir or self.data_dir / "keys"

    def database_for(self, code: str) -> str:
        if self.database_url:
            return self.database_url.replace("{participant}", code)
        return f"sqlite:///{(self.participant_dir(code) / 'biox.db').resolve()}"
