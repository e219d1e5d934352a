"""Names and labels of the metrics the proxy exports: the contract between the proxy and the
operator's PromQL (and anyone's dashboards). Change a name here and both sides follow.

Every series carries ``policy`` and, where it applies, ``revision`` and ``tier``. The Kubernetes
namespace is added by the scrape (pod/ServiceMonitor labels), not by the proxy.
"""

PREFIX = "tierguard"

# counters (exported with the _total suffix)
# labels: policy, revision, tier, outcome(accepted|escalated|error|client_error)
TIER_REQUESTS = f"{PREFIX}_tier_requests"
# labels: policy, revision, tier (the answering tier, "none" on error), status(ok|error|client_error)
REQUESTS = f"{PREFIX}_requests"
# labels: policy, revision, tier, reason(low_confidence|no_confidence|tier_error|early_abort|
#         invalid_tool_call|tool_call_rule|invalid_structured_output)
ESCALATIONS = f"{PREFIX}_escalations"
# tool-call answers of a tier; labels: policy, revision, tier, outcome(accepted|escalated)
TOOL_CALLS = f"{PREFIX}_tool_calls"
# turns started above the cheapest tier by conversation affinity; labels: policy, revision, tier
AFFINITY_STARTS = f"{PREFIX}_affinity_starts"
TOKENS = f"{PREFIX}_tokens"  # labels: policy, revision, tier, direction(in|out)
COST_USD = f"{PREFIX}_cost_usd"  # labels: policy, revision, tier
COUNTERFACTUAL_COST_USD = f"{PREFIX}_counterfactual_cost_usd"  # labels: policy, revision
FEEDBACK = f"{PREFIX}_feedback"  # labels: policy, revision, tier, rating(up|down)
FEEDBACK_REJECTED = f"{PREFIX}_feedback_rejected"  # labels: policy, reason
BAD_REQUESTS = f"{PREFIX}_bad_requests"  # labels: policy, reason
CONFIG_RELOADS = f"{PREFIX}_config_reloads"  # labels: policy, result(applied|invalid|restart_required)
CONFIG_REJECTED = f"{PREFIX}_config_rejected"  # 1 while the file on disk is rejected; labels: policy

# histograms
CONFIDENCE = f"{PREFIX}_confidence"  # calibrated confidence; labels: policy, revision, tier
TIER_LATENCY = f"{PREFIX}_tier_latency_seconds"  # labels: policy, revision, tier
REQUEST_LATENCY = f"{PREFIX}_request_latency_seconds"  # end to end; labels: policy, revision

# gauges
IN_FLIGHT = f"{PREFIX}_in_flight_requests"  # labels: policy
CONFIG_INFO = (
    f"{PREFIX}_config_info"  # value 1; labels: policy, config_hash, stable_revision, canary_revision
)
CANARY_WEIGHT = f"{PREFIX}_canary_weight"  # labels: policy
AFFINITY_CONVERSATIONS = f"{PREFIX}_affinity_conversations"  # remembered conversations; labels: policy

# shadow scoring: the last tier re-answers a sample of accepted cheap-tier answers
SHADOW_SAMPLES = f"{PREFIX}_shadow_samples"  # labels: policy, revision, tier (the tier that was accepted)
SHADOW_DISAGREEMENTS = f"{PREFIX}_shadow_disagreements"  # labels: policy, revision, tier
SHADOW_COST_USD = f"{PREFIX}_shadow_cost_usd"  # labels: policy, revision
SHADOW_SKIPPED = f"{PREFIX}_shadow_skipped"  # labels: policy, reason(busy|error)
SHADOW_RATE = f"{PREFIX}_shadow_rate"  # gauge; labels: policy, revision (the applied shadow rate)
# confidence drift: PSI of a tier's recent calibrated confidences vs its calibration reference
CONFIDENCE_PSI = f"{PREFIX}_confidence_psi"  # gauge; labels: policy, revision, tier

CONFIDENCE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# review sampling and outcome events (docs/review.md)
REVIEW_SAMPLED = f"{PREFIX}_review_sampled"  # counter; labels: policy, revision, tier, band
REVIEW_DROPPED = f"{PREFIX}_review_dropped"  # counter; labels: policy, reason(queue_full|store_error)
REVIEW_CAPPED = f"{PREFIX}_review_capped"  # counter (hard quota cap); labels: policy, revision, tier, band
# gauges exported by `tierguard review` from the labels in the store
REVIEW_ACCURACY = f"{PREFIX}_review_accuracy"  # inclusion-weighted; labels: policy, revision, tier
REVIEW_ACCURACY_LOW = f"{PREFIX}_review_accuracy_lower"  # lower confidence bound; same labels
REVIEW_ACCURACY_DIFFERENCE = f"{PREFIX}_review_accuracy_difference"  # model-assisted; same labels
REVIEW_ACCURACY_DIFFERENCE_LOW = f"{PREFIX}_review_accuracy_difference_lower"
REVIEW_LABELS = f"{PREFIX}_review_labels"  # gauge: labels (correct+incorrect); same labels
# counters exported by the proxy that accepted the event; labels: policy, revision, tier, event
OUTCOME_EVENTS = f"{PREFIX}_outcome_events"
OUTCOME_VALUE = f"{PREFIX}_outcome_value"  # counter: sum of the events' values; same labels
OUTCOME_REJECTED = f"{PREFIX}_outcome_rejected"  # counter; labels: policy, reason
