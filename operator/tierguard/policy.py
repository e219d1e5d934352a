"""The policy model: the single source of truth for the proxy's config and the CRD schemas.

Field names are snake_case in Python and camelCase in YAML (Kubernetes convention); both are
accepted on input. ``crds/*.yaml`` is generated from these models (``tierguard crds``).
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel

from . import API_GROUP, API_VERSION
from .confidence import Aggregate, CalibrationMap
from .cron import cron_schedule
from .drift import CONFIDENCE_BINS, check_reference
from .errors import PolicyError
from .toolcalls import DEFAULT_TOOL_CALL_METHOD, ToolCallMethod

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
CAPABLE_ONLY = "capable-only"


class Model(BaseModel):
    """Base: camelCase aliases, snake_case accepted too, unknown fields rejected."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    def to_yaml_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class SecretSource(Model):
    """Where a secret (an API key, a signing key) comes from: an environment variable or a file."""

    env: str | None = Field(default=None, description="Name of an environment variable holding the value.")
    file: str | None = Field(
        default=None, description="Path of a file holding the value (e.g. a mounted Secret)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> SecretSource:
        if (self.env is None) == (self.file is None):
            raise ValueError("set exactly one of env or file")
        return self


class TierConfidence(Model):
    """How one tier's raw confidence is calibrated and where it is accepted."""

    threshold: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Accept the tier's answer at or above this calibrated confidence.",
    )
    calibration: list[Annotated[list[float], Field(min_length=2, max_length=2)]] | None = Field(
        default=None,
        description="Monotone piecewise-linear map from raw to calibrated confidence: "
        "[[raw, calibrated], ...].",
    )
    reference: list[Annotated[float, Field(ge=0.0, le=1.0)]] | None = Field(
        default=None,
        min_length=CONFIDENCE_BINS,
        max_length=CONFIDENCE_BINS,
        description="Distribution of the tier's calibrated confidence on the calibration data: "
        f"{CONFIDENCE_BINS} proportions (summing to 1) over the fixed confidence bins of docs/drift.md, "
        "written by `tierguard calibrate`. The proxy exports the PSI of recent answers against it "
        "(tierguard_confidence_psi).",
    )
    tool_calls: ToolCallMethod | None = Field(
        default=None,
        description="How this tier's tool-call answers get a confidence: self_eval (ask the tier to "
        "verify the call), logprob (the call's token logprobs, where the upstream returns them), "
        "escalate or accept (fixed rules). Unset: escalate. Calls that are not valid JSON or fail "
        "the tool's schema escalate whatever the method.",
    )

    @field_validator("calibration")
    @classmethod
    def _valid_map(cls, v: list[list[float]] | None) -> list[list[float]] | None:
        if v is not None:
            CalibrationMap([(p[0], p[1]) for p in v])  # raises ValueError with the reason
        return v

    @field_validator("reference")
    @classmethod
    def _valid_reference(cls, v: list[float] | None) -> list[float] | None:
        if v is not None:
            check_reference(v)  # raises ValueError with the reason
        return v

    @model_serializer(mode="wrap")
    def _omit_missing_reference(self, handler: SerializerFunctionWrapHandler) -> Any:
        # Without a reference (or a tool-call method) the serialised form (and so every
        # revision's content hash) stays what it was before the field existed.
        data = handler(self)
        if isinstance(data, dict):
            for name, alias in (("reference", "reference"), ("tool_calls", "toolCalls")):
                if getattr(self, name) is None:
                    data.pop(name, None)
                    data.pop(alias, None)
        return data

    @property
    def tool_call_method(self) -> ToolCallMethod:
        return self.tool_calls or DEFAULT_TOOL_CALL_METHOD

    @cached_property
    def _calibration_map(self) -> CalibrationMap:
        if not self.calibration:
            return CalibrationMap()
        return CalibrationMap([(p[0], p[1]) for p in self.calibration])

    def calibration_map(self) -> CalibrationMap:
        """The map, built once per (immutable) model: it is on the request path."""
        return self._calibration_map


class Tier(Model):
    name: str = Field(pattern=DNS_LABEL, description="Tier name (a DNS label), used in metrics and headers.")
    base_url: str = Field(
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        description="OpenAI-compatible base URL, e.g. http://model:8000/v1.",
        validation_alias=AliasChoices("baseUrl", "base_url", "url"),
    )
    model: str = Field(min_length=1, description="Model name sent upstream.")
    api_key: SecretSource | None = Field(default=None, description="API key source; omitted for none.")
    price_input_per_million: float = Field(default=0.0, ge=0.0, description="USD per million input tokens.")
    price_output_per_million: float = Field(default=0.0, ge=0.0, description="USD per million output tokens.")
    timeout_seconds: float = Field(default=30.0, gt=0.0, le=600.0)
    max_concurrency: int = Field(default=256, ge=1, le=100000, description="Concurrent upstream requests.")
    confidence: TierConfidence = Field(default_factory=TierConfidence)

    def cost_usd(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.price_input_per_million + tokens_out * self.price_output_per_million) / 1e6


# self_eval appends the tier's answer as an assistant turn, then this question as a user turn,
# and reads P("Y") from the reply's first-token logprobs.
DEFAULT_SELF_EVAL_PROMPT = "Is your answer above correct? Answer with a single letter: Y or N."


class ConfidenceSpec(Model):
    method: Literal["logprob", "self_eval"] = Field(
        default="logprob",
        description="logprob: aggregate the answer's token probabilities; "
        "self_eval: ask the same tier to verify its answer, confidence = P(Y).",
    )
    aggregate: Aggregate = Field(default="quantile", description="How token probabilities are aggregated.")
    quantile: float = Field(
        default=0.1, ge=0.0, le=1.0, description="The quantile used by aggregate=quantile."
    )
    self_eval_prompt: str = Field(
        default=DEFAULT_SELF_EVAL_PROMPT,
        description="The verification question sent after the tier's answer.",
    )
    early_abort: bool = Field(
        default=True, description="Stop a streaming tier as soon as acceptance has become impossible."
    )
    assumed_max_tokens: int = Field(
        default=4096,
        ge=1,
        description="Answer length bound for early abort when the request sets no max_tokens.",
    )


Affinity = Literal["sticky", "restart"]


class CascadeSpec(Model):
    """What a revision is made of: the ordered tiers and how confidence is judged."""

    tiers: list[Tier] = Field(
        min_length=2, max_length=16, description="Cheapest first; the last tier always answers."
    )
    confidence: ConfidenceSpec = Field(default_factory=ConfidenceSpec)
    affinity: Affinity | None = Field(
        default=None,
        description="Multi-turn conversations (keyed by the x-tierguard-conversation header, or the "
        "request's user field): sticky starts a conversation's later turns at the highest tier it "
        "has escalated to; restart (the default when unset) starts every turn at the cheapest tier.",
    )

    @model_serializer(mode="wrap")
    def _omit_unset_affinity(self, handler: SerializerFunctionWrapHandler) -> Any:
        # Unset affinity leaves the serialised form (and the revision's content hash) unchanged.
        data = handler(self)
        if self.affinity is None and isinstance(data, dict):
            data.pop("affinity", None)
        return data

    @property
    def affinity_mode(self) -> Affinity:
        return self.affinity or "restart"

    @field_validator("tiers")
    @classmethod
    def _unique_names(cls, tiers: list[Tier]) -> list[Tier]:
        names = [t.name for t in tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique, got {names}")
        return tiers

    def content_hash(self) -> str:
        """A short stable hash of the cascade's content: the revision name."""
        blob = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]


# --- rollout and SLOs (read by the operator; ignored by the proxy) -------------------------------


class RolloutStep(Model):
    weight: int = Field(ge=1, le=100, description="Canary traffic share in percent.")
    pause: str | None = Field(
        default=None,
        pattern=r"^(indefinite|\d+(ms|s|m|h))$",
        description="Wait this long at the step before analysis may advance it (e.g. 30s, 5m), "
        "or 'indefinite' to wait for a manual promotion.",
    )


def default_steps() -> list[RolloutStep]:
    return [RolloutStep(weight=w) for w in (5, 10, 25, 50, 100)]


class RolloutSpec(Model):
    steps: list[RolloutStep] = Field(default_factory=default_steps, min_length=1)
    interval: str = Field(default="1m", pattern=r"^\d+(ms|s|m|h)$", description="Analysis interval.")
    failure_threshold: int = Field(
        default=2, ge=1, le=100, description="Failed checks that trigger a rollback."
    )
    min_samples: int = Field(
        default=50, ge=0, description="Requests per tier per interval needed for a verdict."
    )
    progress_deadline: str = Field(default="30m", pattern=r"^\d+(ms|s|m|h)$")

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[RolloutStep]) -> list[RolloutStep]:
        weights = [s.weight for s in steps]
        if any(b <= a for a, b in itertools.pairwise(weights)):
            raise ValueError(f"step weights must be strictly increasing, got {weights}")
        return steps


class SLORef(Model):
    name: str = Field(pattern=DNS_LABEL)


DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class SecretKeyRef(Model):
    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN, description="Secret name (same namespace).")
    key: str = Field(max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key in the Secret.")


class EnvVarSource(Model):
    secret_key_ref: SecretKeyRef = Field(description="Take the value from a key of a Secret.")


class EnvVar(Model):
    """An environment variable of the proxy container (Kubernetes' EnvVar, Secrets only)."""

    name: str = Field(max_length=253, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str | None = Field(default=None, description="A literal value.")
    value_from: EnvVarSource | None = Field(default=None, description="A value from a Secret.")

    @model_validator(mode="after")
    def _one_value(self) -> EnvVar:
        if (self.value is None) == (self.value_from is None):
            raise ValueError("set exactly one of value or valueFrom")
        return self


class SecretMount(Model):
    """A Secret mounted read-only into the proxy container (one file per key)."""

    secret_name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN, description="Secret name.")
    mount_path: str = Field(
        max_length=1024, pattern=r"^/[^:]*$", description="Absolute directory the keys appear in."
    )


class ReviewSpec(Model):
    """Stratified review sampling of answers (docs/review.md): what is sampled, how often, where it
    is stored."""

    rate: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="Base probability that an answer is sampled for review, before the band and "
        "novelty weights (capped at 1).",
    )
    band_edges: list[Annotated[float, Field(gt=0.0, lt=1.0)]] = Field(
        default_factory=lambda: [0.5, 0.8, 0.95],
        max_length=9,
        description="Calibrated-confidence edges of the strata's confidence bands (increasing).",
    )
    band_weights: list[Annotated[float, Field(gt=0.0, le=1000.0)]] = Field(
        default_factory=lambda: [8.0, 4.0, 2.0, 1.0],
        max_length=10,
        description="Oversampling weight per band, lowest confidence first (one more than bandEdges).",
    )
    novelty_reference: str | None = Field(
        default=None,
        description="Path of a novelty reference built from the calibration prompts "
        "(`tierguard review novelty-reference`); without one every query has novelty 0.",
    )
    novelty_boost: float = Field(
        default=5.0,
        ge=1.0,
        le=1000.0,
        description="Oversampling weight of a query with novelty 1 (rises linearly from 1 at novelty 0.5).",
    )
    quota_per_hour: int = Field(
        default=60,
        ge=1,
        le=1_000_000,
        description="Expected sampled items per stratum and hour at most (hard cap: twice this).",
    )
    redact: bool = Field(
        default=True, description="Replace e-mail addresses, phone and card numbers before storing."
    )
    store: str = Field(
        default="sqlite:review.db",
        min_length=1,
        description="sqlite:PATH (one file, WAL) or a postgresql:// URL (several replicas; the "
        "password from PGPASSWORD or PGPASSFILE, e.g. through spec.proxy.env).",
    )
    escalation_rate: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Share of requests escalated to the capable tier whose cheaper answers are stored "
        "next to the capable answer for `tierguard tune` (no extra model call). Default: the policy's "
        "shadowRate, the inclusion probability tune thins every comparison to.",
    )
    queue_size: int = Field(default=1000, ge=1, le=1_000_000, description="Items waiting for the writer.")
    retention_days: float = Field(
        default=30.0, gt=0.0, description="Stored items and events are kept this long."
    )

    @model_validator(mode="after")
    def _bands(self) -> ReviewSpec:
        edges = self.band_edges
        if any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError(f"bandEdges must be strictly increasing, got {edges}")
        if len(self.band_weights) != len(edges) + 1:
            raise ValueError(
                f"bandWeights needs {len(edges) + 1} values (one per band), got {len(self.band_weights)}"
            )
        if not (self.store.startswith("sqlite:") or self.store.startswith(("postgresql://", "postgres://"))):
            raise ValueError("store must be sqlite:PATH or a postgresql:// URL")
        return self


class OutcomeEventSpec(Model):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$", description="Event name, e.g. refund.")
    min: float = Field(default=0.0, description="Smallest accepted value.")
    max: float = Field(default=1.0, description="Largest accepted value.")


def default_outcome_events() -> list[OutcomeEventSpec]:
    return [
        OutcomeEventSpec(name="thumbs", min=0, max=1),
        OutcomeEventSpec(name="rating", min=1, max=5),
        OutcomeEventSpec(name="human_handoff", min=0, max=1),
        OutcomeEventSpec(name="refund", min=0, max=1e9),
    ]


class OutcomeSpec(Model):
    """Outcome events joined to routing decisions (POST /v1/outcomes, docs/review.md)."""

    events: list[OutcomeEventSpec] = Field(
        default_factory=default_outcome_events,
        max_length=100,
        description="The event names accepted and their value ranges.",
    )
    max_age: str = Field(
        default="168h",
        pattern=r"^\d+(ms|s|m|h)$",
        description="Outcome events for a response id older than this are rejected.",
    )

    @field_validator("events")
    @classmethod
    def _unique_events(cls, events: list[OutcomeEventSpec]) -> list[OutcomeEventSpec]:
        names = [e.name for e in events]
        if len(set(names)) != len(names):
            raise ValueError(f"event names must be unique, got {names}")
        return events


class ProxyBehaviour(Model):
    """How the proxy treats requests: the settings a CascadePolicy's ``spec.proxy`` and a
    ProxyConfig's ``settings`` share (:meth:`ProxySettings.from_deployment` carries them over)."""

    feedback_key: SecretSource | None = Field(default=None, description="HMAC key for signed response ids.")
    client_keys: SecretSource | None = Field(
        default=None,
        description="Bearer keys clients must present on /v1/* (one per line); omitted: no client "
        "authentication.",
    )
    shadow_rate: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Share of accepted cheap-tier answers that the last tier re-answers to measure "
        "the false-accept rate (shadow scoring).",
    )
    shadow_max_in_flight: int = Field(
        default=16, ge=1, le=10000, description="Concurrent shadow calls at most."
    )
    affinity_max_conversations: int = Field(
        default=100000,
        ge=1,
        le=10000000,
        description="Conversations the affinity table remembers per proxy (least recently used "
        "forgotten first).",
    )
    affinity_ttl_seconds: float = Field(
        default=3600.0, gt=0.0, le=7 * 86400.0, description="A conversation idle this long is forgotten."
    )
    log_prompts: bool = Field(default=False, description="Include prompt text in the decision log.")
    review: ReviewSpec | None = Field(default=None, description="Review sampling; off when omitted.")
    outcomes: OutcomeSpec | None = Field(
        default=None, description="Outcome events (POST /v1/outcomes); the defaults when omitted."
    )


class ProxyDeployment(ProxyBehaviour):
    replicas: int = Field(default=2, ge=1, le=100)
    image: str = Field(default="ghcr.io/tierguard/tierguard:0.1.0")
    port: int = Field(default=8080, ge=1, le=65535)
    resources: dict[str, dict[str, str]] | None = Field(default=None, description="Container resources.")
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=100,
        description="Environment variables of the proxy container, e.g. a tier's API key from a "
        "Secret (apiKey: {env: NAME}).",
    )
    secret_mounts: list[SecretMount] = Field(
        default_factory=list,
        max_length=20,
        description="Secrets mounted read-only into the proxy container, e.g. the feedback key "
        "(feedbackKey: {file: PATH}).",
    )

    @field_validator("env")
    @classmethod
    def _unique_env(cls, env: list[EnvVar]) -> list[EnvVar]:
        names = [e.name for e in env]
        if len(set(names)) != len(names):
            raise ValueError(f"environment variable names must be unique, got {names}")
        return env

    @field_validator("secret_mounts")
    @classmethod
    def _unique_mounts(cls, mounts: list[SecretMount]) -> list[SecretMount]:
        paths = [m.mount_path.rstrip("/") or "/" for m in mounts]
        if len(set(paths)) != len(paths):
            raise ValueError(f"mount paths must be unique, got {paths}")
        return mounts


BAD_OUTCOME_PATTERN = r"^[a-z][a-z0-9_]{0,62}((<=|>=|<|>|==)-?[0-9.]+)?$"
"""An outcome event counted as a loss by tune: a name, or a name and a comparison of its value."""


class AutoTuneSpec(Model):
    """`tierguard tune --apply` on a schedule: the operator renders a CronJob that runs it in the
    proxy's image as a ServiceAccount allowed to read and patch this one policy (docs/review.md)."""

    interval: str = Field(
        default="24h",
        pattern=r"^\d+(m|h)$",
        description="How often tune runs: 5m..30m dividing an hour, 1h..24h dividing a day, or 168h.",
    )
    max_step: float = Field(
        default=0.05, gt=0.0, le=0.5, description="Largest threshold change per run (the change is bounded)."
    )
    max_accuracy_drop: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="Certify accuracy at least the capable tier's minus this (epsilon, a fraction).",
    )
    delta: float = Field(
        default=0.1, gt=0.0, lt=1.0, description="The certification may fail with probability at most this."
    )
    bad_outcomes: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}((<=|>=|<|>|==)-?[0-9.]+)?$")]] = (
        Field(
            default_factory=list,
            max_length=16,
            description="Outcome events counted as a loss: human_handoff, rating<=2 (tune --bad-outcome).",
        )
    )
    store: str | None = Field(
        default=None,
        description="The review store tune reads (a postgresql:// URL; default spec.proxy.review.store). "
        "The password comes from spec.proxy.env / secretMounts, which the tune pod gets too.",
    )
    approval: Literal["manual", "auto"] = Field(
        default="manual",
        description="manual: a tuned revision's rollout waits at its first step (paused) until "
        "`tierguard promote` or `resume`; auto: it rolls out through the SLO gates at once.",
    )

    @model_validator(mode="after")
    def _schedule(self) -> AutoTuneSpec:
        cron_schedule(self.interval)  # raises with the intervals that work
        if self.store is not None and not self.store.startswith(("sqlite:", "postgresql://", "postgres://")):
            raise ValueError("store must be sqlite:PATH or a postgresql:// URL")
        return self


class CascadePolicySpec(CascadeSpec):
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    slos: list[SLORef] = Field(default_factory=list, description="QualitySLO objects gating the rollout.")
    proxy: ProxyDeployment = Field(default_factory=ProxyDeployment)
    auto_tune: AutoTuneSpec | None = Field(
        default=None, description="Run `tierguard tune --apply` on a schedule; off when omitted."
    )

    def cascade(self) -> CascadeSpec:
        return CascadeSpec(tiers=self.tiers, confidence=self.confidence, affinity=self.affinity)


Signal = Literal[
    "escalation_rate",
    "error_rate",
    "latency_p50",
    "latency_p95",
    "latency_p99",
    "thumbs_down_rate",
    "shadow_disagreement",
    "confidence_drift",
    "cost_per_request",
    "review_accuracy",
    "outcome_rate",
]


class Objective(Model):
    name: str = Field(pattern=DNS_LABEL)
    tier: str | None = Field(default=None, description="A tier name; omitted for every tier.")
    signal: Signal | None = None
    event: str | None = Field(
        default=None,
        pattern=r"^[a-z][a-z0-9_]{0,62}$",
        description="The outcome event of signal outcome_rate (e.g. human_handoff).",
    )
    query: str | None = Field(
        default=None,
        description="Custom PromQL with {{policy}}, {{namespace}}, {{revision}}, {{tier}}, {{interval}}.",
    )
    max: float | None = Field(default=None, description="Absolute upper bound.")
    min: float | None = Field(default=None, description="Absolute lower bound.")
    max_increase_over_stable: float | None = Field(
        default=None, description="Bound relative to the stable revision: canary <= stable + this."
    )

    @model_validator(mode="after")
    def _one_source_one_bound(self) -> Objective:
        if (self.signal is None) == (self.query is None):
            raise ValueError("set exactly one of signal or query")
        if self.max is None and self.min is None and self.max_increase_over_stable is None:
            raise ValueError("set a bound: max, min or maxIncreaseOverStable")
        if (self.signal == "outcome_rate") != (self.event is not None):
            raise ValueError("signal outcome_rate needs an event, and only it takes one")
        return self


class QualitySLOSpec(Model):
    objectives: list[Objective] = Field(min_length=1)


# --- what the proxy loads ----------------------------------------------------------------------


class Revision(Model):
    name: str = Field(min_length=1, max_length=63)
    mode: Literal["cascade", "capable-only"] = "cascade"
    cascade: CascadeSpec

    @classmethod
    def of(cls, cascade: CascadeSpec, mode: Literal["cascade", "capable-only"] = "cascade") -> Revision:
        name = CAPABLE_ONLY if mode == CAPABLE_ONLY else cascade.content_hash()
        return cls(name=name, mode=mode, cascade=cascade)


class ProxySettings(ProxyBehaviour):
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    decision_log: str | None = Field(
        default="-", description="Path of the JSONL decision log; '-' is stdout."
    )

    @classmethod
    def from_deployment(cls, proxy: ProxyDeployment) -> ProxySettings:
        """The proxy settings a CascadePolicy's ``spec.proxy`` asks for."""
        return cls(**{name: getattr(proxy, name) for name in ProxyBehaviour.model_fields})


class ProxyConfig(Model):
    """The proxy's whole configuration: rendered by the operator into a ConfigMap, or by hand."""

    kind: Literal["ProxyConfig"] = "ProxyConfig"
    policy: str = Field(default="local", min_length=1)
    namespace: str = "default"
    stable: Revision
    canary: Revision | None = None
    canary_weight: int = Field(default=0, ge=0, le=100)
    settings: ProxySettings = Field(default_factory=ProxySettings)

    @model_validator(mode="after")
    def _weight_needs_canary(self) -> ProxyConfig:
        if self.canary is None and self.canary_weight:
            raise ValueError("canaryWeight > 0 needs a canary revision")
        return self

    def config_hash(self) -> str:
        blob = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def parse_policy_spec(data: Any, source: str = "policy") -> CascadePolicySpec:
    try:
        return CascadePolicySpec.model_validate(data)
    except ValidationError as err:
        raise PolicyError(f"{source}: invalid CascadePolicy spec:\n{_format_validation_error(err)}") from None


def parse_yaml(text: str | bytes, source: str) -> Any:
    """Parsed YAML (or JSON); PolicyError naming ``source`` when it is not valid (bytes that are not
    UTF-8, too deeply nested, not YAML)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise PolicyError(f"{source}: not UTF-8 text (byte {err.start})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise PolicyError(f"{source}: not valid YAML: {err}") from None
    except RecursionError:
        raise PolicyError(f"{source}: nested too deeply") from None


def load_yaml(path: str | Path) -> Any:
    """A policy or config file's parsed YAML (or JSON); PolicyError when it cannot be read or parsed."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise PolicyError(f"{p}: cannot read: {err.strerror}") from None
    return parse_yaml(raw, str(p))


def load_proxy_config(path: str | Path) -> ProxyConfig:
    """Load a proxy config from YAML/JSON.

    Accepts a ProxyConfig (``kind: ProxyConfig``), a CascadePolicy manifest
    (``apiVersion: tierguard.io/v1alpha1``, ``kind: CascadePolicy``) or a bare CascadePolicy spec;
    the latter two become a config whose stable revision is the policy's cascade.
    """
    return proxy_config_from_data(load_yaml(path), str(path))


def proxy_config_from_data(data: Any, source: str = "policy") -> ProxyConfig:
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: expected a mapping at the top level")
    kind = data.get("kind")
    if kind == "ProxyConfig":
        try:
            return ProxyConfig.model_validate(data)
        except ValidationError as err:
            raise PolicyError(f"{source}: invalid ProxyConfig:\n{_format_validation_error(err)}") from None
    if kind == "CascadePolicy" or "apiVersion" in data:
        api = data.get("apiVersion")
        if api != f"{API_GROUP}/{API_VERSION}" or kind != "CascadePolicy":
            raise PolicyError(f"{source}: expected apiVersion {API_GROUP}/{API_VERSION}, kind CascadePolicy")
        meta = data.get("metadata") or {}
        if not isinstance(meta, dict):
            raise PolicyError(f"{source}: metadata must be a mapping")
        spec = parse_policy_spec(data.get("spec"), source)
        name = str(meta.get("name") or "local")
        namespace = str(meta.get("namespace") or "default")
    else:
        spec = parse_policy_spec(data, source)
        name, namespace = "local", "default"
    try:
        return ProxyConfig(
            policy=name,
            namespace=namespace,
            stable=Revision.of(spec.cascade()),
            settings=ProxySettings.from_deployment(spec.proxy),
        )
    except ValidationError as err:
        raise PolicyError(f"{source}: invalid policy:\n{_format_validation_error(err)}") from None


def load_policy_spec(path: str | Path) -> tuple[str, CascadePolicySpec]:
    """Load a CascadePolicy (manifest or bare spec): (name, spec). Used by replay and calibrate."""
    p = Path(path)
    data = load_yaml(p)
    if isinstance(data, dict) and data.get("kind") == "CascadePolicy":
        check_manifest_keys(data, str(p))
        meta = data.get("metadata")
        name = meta.get("name", p.stem) if isinstance(meta, dict) else p.stem
        return str(name), parse_policy_spec(data.get("spec"), str(p))
    return p.stem, parse_policy_spec(data, str(p))


MANIFEST_KEYS = ("apiVersion", "kind", "metadata", "spec", "status")


def check_manifest_keys(data: dict[str, Any], source: str) -> None:
    """Unknown top-level fields of a manifest (e.g. ``metdata``) are an error, not carried along."""
    unknown = [k for k in data if k not in MANIFEST_KEYS]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(str(k), MANIFEST_KEYS, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise PolicyError(
            f"{source}: unknown top-level field {', '.join(hints)}; a CascadePolicy manifest has "
            f"{', '.join(MANIFEST_KEYS)}"
        )
    if not isinstance(data.get("metadata", {}) or {}, dict):
        raise PolicyError(f"{source}: metadata must be a mapping")


_DURATION = re.compile(r"^(\d+)(ms|s|m|h)$")


def parse_duration(text: str) -> float:
    """'30s' -> 30.0 seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"bad duration {text!r} (expected e.g. 500ms, 30s, 5m, 1h)")
    value, unit = int(m.group(1)), m.group(2)
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
