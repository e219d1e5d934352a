"""Pure tests of the child objects the operator renders for a CascadePolicy."""

from __future__ import annotations

import re
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from tierguard.kube import control, handlers, render
from tierguard.kube.client import KubeApi, KubeError
from tierguard.kube.handlers import Reconciler, event_body, merge_diff
from tierguard.kube.validate import validate_policy
from tierguard.policy import CAPABLE_ONLY, CascadePolicySpec, ProxyConfig, Revision, proxy_config_from_data
from tierguard.rollout.observations import Observations
from tierguard.rollout.status import PolicyStatus

SPEC: dict[str, Any] = {
    "tiers": [
        {
            "name": "mini",
            "baseUrl": "http://mini:8000/v1",
            "model": "gpt-4o-mini",
            "confidence": {"threshold": 0.8},
        },
        {"name": "big", "baseUrl": "http://big:8000/v1", "model": "gpt-4o"},
    ],
    "rollout": {"interval": "20s"},
    "proxy": {
        "replicas": 3,
        "port": 9090,
        "image": "example/tierguard:1",
        "resources": {"limits": {"cpu": "1"}},
    },
}

OWNER: dict[str, Any] = {
    "apiVersion": "tierguard.io/v1alpha1",
    "kind": "CascadePolicy",
    "metadata": {"name": "chat", "namespace": "prod", "uid": "1234-abcd"},
}


def spec(**over: Any) -> CascadePolicySpec:
    return CascadePolicySpec.model_validate({**SPEC, **over})


def split(stable: Revision, canary: Revision | None = None, weight: int = 0) -> PolicyStatus:
    """A status standing for ``stable`` plus ``canary`` at ``weight`` percent."""
    return PolicyStatus(
        phase="Progressing" if canary is not None else "Succeeded",
        stable=stable,
        stable_revision=stable.name,
        canary=canary,
        canary_revision=canary.name if canary is not None else None,
        canary_weight=weight,
    )


def config(s: CascadePolicySpec, st: PolicyStatus) -> ProxyConfig:
    cfg = render.proxy_config("chat", "prod", s, st)
    assert cfg is not None
    return cfg


def test_owner_reference_is_a_controller_reference() -> None:
    ref = render.owner_reference(OWNER)
    assert ref == {
        "apiVersion": "tierguard.io/v1alpha1",
        "kind": "CascadePolicy",
        "name": "chat",
        "uid": "1234-abcd",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_every_child_is_owned_named_and_labelled() -> None:
    s = spec()
    cfg = config(s, split(render.capable_only(s), render.revision_for(s), 5))
    kids = render.children(OWNER, s, cfg, with_service_monitor=True)
    assert [k["kind"] for k in kids] == ["ConfigMap", "Deployment", "Service", "ServiceMonitor"]
    for k in kids:
        meta = k["metadata"]
        assert meta["name"] == "chat-proxy"
        assert meta["namespace"] == "prod"
        assert meta["ownerReferences"] == [render.owner_reference(OWNER)]
        assert meta["labels"][render.LABEL_POLICY] == "chat"
    assert "ServiceMonitor" not in [
        k["kind"] for k in render.children(OWNER, s, cfg, with_service_monitor=False)
    ]


def test_config_map_carries_the_rendered_proxy_config_that_the_proxy_loads() -> None:
    s = spec()
    stable, canary = render.capable_only(s), render.revision_for(s)
    cfg = config(s, split(stable, canary, 25))
    cm = render.config_map(OWNER, cfg)
    text = cm["data"][render.CONFIG_KEY]
    # exactly what `tierguard proxy --policy FILE` reads
    loaded = proxy_config_from_data(yaml.safe_load(text), "configmap")
    assert loaded == cfg
    assert (
        loaded.config_hash()
        == cfg.config_hash()
        == cm["metadata"]["annotations"][render.ANNOTATION_CONFIG_HASH]
    )
    assert loaded.stable.name == CAPABLE_ONLY and loaded.stable.mode == "capable-only"
    assert loaded.canary is not None and loaded.canary.name == s.cascade().content_hash()
    assert loaded.canary_weight == 25
    ann = cm["metadata"]["annotations"]
    assert ann[render.ANNOTATION_STABLE] == CAPABLE_ONLY
    assert ann[render.ANNOTATION_CANARY] == canary.name
    assert ann[render.ANNOTATION_WEIGHT] == "25"
    # and read back by the operator
    assert render.config_from_config_map(cm) == cfg


def test_config_without_canary_has_weight_zero() -> None:
    s = spec()
    rev = render.revision_for(s)
    cfg = config(s, split(rev, None, 40))
    assert cfg.canary is None and cfg.canary_weight == 0
    assert render.config_map(OWNER, cfg)["metadata"]["annotations"][render.ANNOTATION_CANARY] == ""


def test_config_drops_a_canary_at_weight_zero() -> None:
    """After a rollback or an abort the canary is kept in the status, but takes no traffic."""
    s = spec()
    cfg = config(s, split(render.capable_only(s), render.revision_for(s), 0))
    assert cfg.canary is None and cfg.canary_weight == 0 and cfg.stable.name == CAPABLE_ONLY


def test_no_config_before_the_first_revision() -> None:
    assert render.proxy_config("chat", "prod", spec(), PolicyStatus()) is None


def test_config_map_carries_every_proxy_setting_of_the_spec() -> None:
    """spec.proxy's shadowRate, shadowMaxInFlight, logPrompts and feedbackKey reach the proxy."""
    s = spec(
        proxy={
            **SPEC["proxy"],
            "shadowRate": 0.25,
            "shadowMaxInFlight": 4,
            "logPrompts": True,
            "feedbackKey": {"file": "/var/run/tierguard/feedback/key"},
        }
    )
    cfg = config(s, split(render.capable_only(s), render.revision_for(s), 5))
    cm = next(
        k for k in render.children(OWNER, s, cfg, with_service_monitor=False) if k["kind"] == "ConfigMap"
    )
    data = yaml.safe_load(cm["data"][render.CONFIG_KEY])
    assert data["settings"]["shadowRate"] == 0.25
    assert data["settings"]["shadowMaxInFlight"] == 4
    assert data["settings"]["logPrompts"] is True
    assert data["settings"]["feedbackKey"] == {"file": "/var/run/tierguard/feedback/key"}
    loaded = proxy_config_from_data(data, "configmap").settings
    assert (loaded.shadow_rate, loaded.shadow_max_in_flight, loaded.log_prompts) == (0.25, 4, True)
    # a settings change is a new config (the analysis waits for the proxies to load it)
    assert (
        cfg.config_hash()
        != config(spec(), split(render.capable_only(s), render.revision_for(s), 5)).config_hash()
    )


@pytest.mark.parametrize(
    "cm",
    [
        None,
        {},
        {"data": {}},
        {"data": {"config.yaml": "::: not yaml"}},
        {"data": {"config.yaml": "kind: Other"}},
    ],
)
def test_unreadable_config_maps_read_back_as_none(cm: Any) -> None:
    assert render.config_from_config_map(cm) is None


def test_config_hash_changes_with_weight_and_revision() -> None:
    s = spec()
    a = config(s, split(render.capable_only(s), render.revision_for(s), 5))
    b = config(s, split(render.capable_only(s), render.revision_for(s), 10))
    c = config(s, split(render.revision_for(s)))
    assert len({a.config_hash(), b.config_hash(), c.config_hash()}) == 3


def test_deployment_runs_the_proxy_on_the_mounted_config() -> None:
    s = spec()
    dep = render.deployment(OWNER, s)
    pod = dep["spec"]["template"]
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (c,) = pod["spec"]["containers"]
    assert c["image"] == "example/tierguard:1"
    assert c["command"] == ["tierguard"]
    assert c["args"][:3] == ["proxy", "--policy", f"{render.CONFIG_DIR}/{render.CONFIG_KEY}"]
    assert c["args"][-2:] == ["--port", "9090"]
    assert c["ports"] == [{"name": "http", "containerPort": 9090, "protocol": "TCP"}]
    assert c["resources"] == {"limits": {"cpu": "1"}}
    assert c["volumeMounts"][0]["mountPath"] == render.CONFIG_DIR
    assert pod["spec"]["volumes"] == [{"name": "config", "configMap": {"name": "chat-proxy"}}]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # up to 3 minutes to start before liveness counts (a busy node's start-up took > 30 s)
    startup = c["startupProbe"]
    assert (
        startup["httpGet"]["path"] == "/healthz"
        and startup["periodSeconds"] * startup["failureThreshold"] >= 120
    )


SECRETS_PROXY: dict[str, Any] = {
    **SPEC["proxy"],
    "feedbackKey": {"file": "/var/run/tierguard/feedback/key"},
    "env": [
        {"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "openai", "key": "api-key"}}},
        {"name": "TIERGUARD_PSI_WINDOW", "value": "500"},
    ],
    "secretMounts": [{"secretName": "tierguard-feedback", "mountPath": "/var/run/tierguard/feedback"}],
}


def test_deployment_passes_secrets_as_env_and_mounts() -> None:
    """A tier's apiKey {env: OPENAI_API_KEY} and feedbackKey {file: ...} work in a cluster: the env
    var comes from a Secret, the key file from a mounted Secret; the kubelet reads them, not the
    operator."""
    tiers = [{**SPEC["tiers"][0], "apiKey": {"env": "OPENAI_API_KEY"}}, SPEC["tiers"][1]]
    s = spec(tiers=tiers, proxy=SECRETS_PROXY)
    dep = render.deployment(OWNER, s)
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["env"] == [
        {"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "openai", "key": "api-key"}}},
        {"name": "TIERGUARD_PSI_WINDOW", "value": "500"},
    ]
    assert c["volumeMounts"] == [
        {"name": "config", "mountPath": render.CONFIG_DIR, "readOnly": True},
        {"name": "secret-0", "mountPath": "/var/run/tierguard/feedback", "readOnly": True},
    ]
    assert pod["volumes"] == [
        {"name": "config", "configMap": {"name": "chat-proxy"}},
        {"name": "secret-0", "secret": {"secretName": "tierguard-feedback"}},
    ]
    # the key file the proxy is told to read lies inside the mount
    key_file = s.proxy.feedback_key.file if s.proxy.feedback_key else None
    assert key_file is not None and key_file.startswith(c["volumeMounts"][1]["mountPath"] + "/")
    # without any, the container has no env and only the config volume
    plain = render.deployment(OWNER, spec())["spec"]["template"]["spec"]
    assert "env" not in plain["containers"][0] and len(plain["volumes"]) == 1


@pytest.mark.parametrize(
    ("proxy", "needle"),
    [
        ({"env": [{"name": "A"}]}, "exactly one of value or valueFrom"),
        (
            {"env": [{"name": "A", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
            "exactly one",
        ),
        ({"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}, "unique"),
        ({"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "Not_A_Name", "key": "k"}}}]}, "name"),
        ({"secretMounts": [{"secretName": "s", "mountPath": "relative/dir"}]}, "mountPath"),
        (
            {
                "secretMounts": [
                    {"secretName": "s", "mountPath": "/a"},
                    {"secretName": "t", "mountPath": "/a/"},
                ]
            },
            "unique",
        ),
    ],
)
def test_bad_env_and_mounts_are_rejected(proxy: dict[str, Any], needle: str) -> None:
    result = validate_policy("chat", {**SPEC, "proxy": proxy}, {})
    assert not result.ok and result.problem is not None and needle in result.problem, result.problem


@pytest.mark.parametrize(
    ("mounts", "needle"),
    [
        (["/etc/tierguard"], "config directory"),
        (["/etc/tierguard/keys"], "config directory"),
        (["/etc"], "config directory"),
        (["/var/run/a", "/var/run/a/b"], "overlaps secretMounts[0]"),
    ],
)
def test_secret_mounts_must_not_hide_the_config_or_each_other(mounts: list[str], needle: str) -> None:
    proxy = {"secretMounts": [{"secretName": f"s{i}", "mountPath": m} for i, m in enumerate(mounts)]}
    result = validate_policy("chat", {**SPEC, "proxy": proxy}, {})
    assert not result.ok and result.problem is not None and needle in result.problem, result.problem
    ok = {"secretMounts": [{"secretName": "s", "mountPath": "/etc/tierguard-keys"}]}
    assert validate_policy("chat", {**SPEC, "proxy": ok}, {}).ok


def test_deployment_does_not_depend_on_the_split() -> None:
    """Weight changes are ConfigMap updates the proxy hot-reloads; they never roll the pods."""
    s = spec()
    assert render.deployment(OWNER, s) == render.deployment(OWNER, s)
    s2 = spec(rollout={"interval": "1m", "steps": [{"weight": 50}, {"weight": 100}]})
    assert render.deployment(OWNER, s2) == render.deployment(OWNER, s)


def test_service_targets_the_proxy_pods() -> None:
    s = spec()
    svc = render.service(OWNER, s)
    pod_labels = render.deployment(OWNER, s)["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["spec"]["ports"] == [{"name": "http", "port": 9090, "targetPort": "http", "protocol": "TCP"}]


@pytest.mark.parametrize(("interval", "scrape"), [("20s", "5s"), ("2s", "1s"), ("1m", "15s"), ("1h", "30s")])
def test_service_monitor_scrapes_often_enough_for_the_analysis(interval: str, scrape: str) -> None:
    s = spec(rollout={"interval": interval})
    sm = render.service_monitor(OWNER, s)
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": scrape}]
    assert sm["spec"]["selector"]["matchLabels"] == render.selector_labels("chat")


def test_revision_names_are_content_hashes() -> None:
    s = spec()
    assert render.revision_for(s) == Revision.of(s.cascade())
    # rollout/proxy settings are not part of the revision
    assert render.revision_for(spec(rollout={"interval": "5m"})).name == render.revision_for(s).name
    assert isinstance(render.proxy_config("a", "b", s, split(render.revision_for(s))), ProxyConfig)


# --- pure helpers of the reconciler ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [
        ({}, {"a": 1}, {"a": 1}),
        ({"a": 1}, {"a": 1}, {}),
        ({"a": 1, "b": 2}, {"a": 1}, {"b": None}),
        ({"a": {"x": 1, "y": 2}}, {"a": {"x": 1}}, {"a": {"y": None}}),
        ({"a": {"x": 1}}, {"a": {"x": 2, "z": 3}}, {"a": {"x": 2, "z": 3}}),
        ({"l": [1, 2]}, {"l": [1]}, {"l": [1]}),
        ({"a": {"x": 1}}, {"a": 5}, {"a": 5}),
    ],
)
def test_merge_diff_is_an_rfc7386_patch(
    old: dict[str, Any], new: dict[str, Any], patch: dict[str, Any]
) -> None:
    assert merge_diff(old, new) == patch
    assert _apply_merge_patch(old, patch) == new


def _apply_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _apply_merge_patch(out.get(k), v)
    return out


def test_the_action_annotation_has_one_definition() -> None:
    """The CLI writes and the reconciler reads the manual-action annotation: one definition."""
    pkg = Path(handlers.__file__).resolve().parents[1]
    defining = sorted(
        str(p.relative_to(pkg))
        for p in pkg.rglob("*.py")
        if re.search(r"^ACTION_ANNOTATION\b.*=", p.read_text(), re.MULTILINE)
    )
    assert defining == ["kube/client.py"]
    assert handlers.ACTION_ANNOTATION is control.ACTION_ANNOTATION == "tierguard.io/action"


def test_every_action_the_cli_writes_is_one_the_reconciler_accepts() -> None:
    for action in control.ACTIONS:
        assert handlers.ACTION_VALUES[action] == (action, False)
    assert handlers.ACTION_VALUES["promote --full"] == ("promote", True)


def test_event_body_points_at_the_policy() -> None:
    owner = {**OWNER, "metadata": {**OWNER["metadata"], "resourceVersion": "42"}}
    ev = event_body(
        owner, "Warning", "RolledBack", "x" * 2000, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "host"
    )
    assert ev["involvedObject"] == {
        "apiVersion": "tierguard.io/v1alpha1",
        "kind": "CascadePolicy",
        "name": "chat",
        "namespace": "prod",
        "uid": "1234-abcd",
        "resourceVersion": "42",
    }
    assert ev["type"] == "Warning" and ev["reason"] == "RolledBack" and len(ev["message"]) == 1024
    assert ev["firstTimestamp"] == ev["lastTimestamp"] == "2026-01-02T03:04:05Z"
    assert ev["metadata"] == {"generateName": "chat.", "namespace": "prod"}


SLO = {"spec": {"objectives": [{"name": "errors", "tier": "mini", "signal": "error_rate", "max": 0.05}]}}


@pytest.mark.parametrize(
    ("name", "spec_over", "slos", "needle"),
    [
        ("chat", {"slos": [{"name": "missing"}]}, {}, "'missing' not found"),
        ("chat", {"slos": [{"name": "q"}]}, {"q": {"spec": {"objectives": []}}}, "QualitySLO 'q' is invalid"),
        (
            "chat",
            {"slos": [{"name": "q"}]},
            {
                "q": {
                    "spec": {"objectives": [{"name": "e", "tier": "huge", "signal": "error_rate", "max": 1}]}
                }
            },
            "'huge'",
        ),
        (
            "chat",
            {"slos": [{"name": "q"}]},
            {"q": {"spec": {"objectives": [{"name": "e", "query": "rate(x{a='{{pod}}'}[1m])", "max": 1}]}}},
            "{{pod}}",
        ),
        ("chat", {"rollout": {"steps": [{"weight": 100}, {"weight": 100}]}}, {}, "increasing"),
        ("chat", {"tiers": SPEC["tiers"][:1]}, {}, "tiers"),
        ("x" * 60, {}, {}, "name"),
    ],
)
def test_policies_that_cannot_work_say_what_to_fix(
    name: str, spec_over: dict[str, Any], slos: dict[str, Any], needle: str
) -> None:
    data = {**SPEC, **spec_over}
    refs = [s["name"] for s in data.get("slos", [])]
    result = validate_policy(name, data, {r: slos.get(r) for r in refs})
    assert not result.ok
    assert result.problem is not None and needle in result.problem, result.problem
    assert "\n" not in result.problem  # one line: it goes into a condition message


def test_a_usable_policy_resolves_its_slos() -> None:
    result = validate_policy("chat", {**SPEC, "slos": [{"name": "q"}]}, {"q": SLO})
    assert result.ok and result.spec is not None
    assert [o.name for o in result.slos["q"].objectives] == ["errors"]


# --- the reconciler's bookkeeping under concurrency ------------------------------------------------


class _RecordingApi:
    """Stands in for the API server where only server-side applies happen (nothing is sent)."""

    def __init__(self) -> None:
        self.applied = 0

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.applied += 1
        return obj

    def get(self, path: str) -> dict[str, Any]:
        assert "/pods?labelSelector=app.kubernetes.io" in path, path
        return {"items": []}  # no proxy pods to annotate

    def merge_patch(self, path: str, patch: dict[str, Any]) -> Any:
        # only the suspension of a tune CronJob that was never there (no spec.autoTune)
        raise KubeError("PATCH", path, 404, "NotFound")


def _observer(**_: Any) -> Observations:
    return Observations()


def _owner(i: int) -> dict[str, Any]:
    return {"metadata": {"name": f"p{i}", "namespace": "ns", "uid": f"uid-{i}"}}


def test_forget_is_safe_while_worker_threads_apply_children() -> None:
    """forget() runs on the event loop while reconciles in worker threads record their applies."""
    rec = Reconciler(cast(KubeApi, _RecordingApi()), _observer, service_monitors=False)
    s = spec()
    cfg = config(s, split(render.capable_only(s), render.revision_for(s), 5))
    kids = render.children(_owner(0), s, cfg, with_service_monitor=False)
    for i in range(20000):  # many remembered policies: forget() has a lot to look through
        for kid in kids:
            rec._record_applied(("ns", f"old{i}"), kid["kind"], "x")
    stop = threading.Event()
    failures: list[BaseException] = []

    def worker(offset: int) -> None:
        i = offset
        try:
            while not stop.is_set():
                rec._apply_children(_owner(i), s, cfg)
                i += 2
        except BaseException as err:  # reported by the test
            failures.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, as a busy operator would
    try:
        for t in threads:
            t.start()
        for i in range(300):
            rec.forget(("ns", f"old{i}"))
    except RuntimeError as err:
        failures.append(err)
    finally:
        stop.set()
        for t in threads:
            t.join()
        sys.setswitchinterval(old_interval)
    assert not failures, failures
    assert ("ns", "old0") not in rec._applied and ("ns", "old300") in rec._applied


def test_forget_drops_the_applied_record_and_only_its_own_waker() -> None:
    api = _RecordingApi()
    rec = Reconciler(cast(KubeApi, api), _observer, service_monitors=False)
    s = spec()
    cfg = config(s, split(render.capable_only(s), render.revision_for(s), 5))
    rec._apply_children(OWNER, s, cfg)
    rec._apply_children(OWNER, s, cfg)
    assert api.applied == 3  # the second time nothing changed: nothing applied
    old_waker, new_waker = (lambda: None), (lambda: None)
    rec.wakers[("prod", "chat")] = new_waker
    rec.forget(("prod", "chat"), old_waker)  # an older daemon stopping keeps the newer one's waker
    assert rec.wakers[("prod", "chat")] is new_waker
    rec._apply_children(OWNER, s, cfg)
    assert api.applied == 6  # forgotten: applied again
    rec.forget(("prod", "chat"), new_waker)
    assert ("prod", "chat") not in rec.wakers and rec._applied == {}


def test_policy_locks_are_pruned_and_still_serialise() -> None:
    rec = Reconciler(cast(KubeApi, _RecordingApi()), _observer, service_monitors=False)
    key = ("ns", "p")
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def first() -> None:
        with rec.lock(key):
            order.append("first in")
            inside.set()
            release.wait(10)
            order.append("first out")

    def second() -> None:
        with rec.lock(key):
            order.append("second in")

    t1 = threading.Thread(target=first)
    t1.start()
    assert inside.wait(10)
    t2 = threading.Thread(target=second)
    t2.start()
    while rec._locks[key].users < 2:  # the second reconcile is waiting
        time.sleep(0.001)
    release.set()
    t1.join()
    t2.join()
    assert order == ["first in", "first out", "second in"]
    assert rec._locks == {}  # nothing left behind
    with rec.lock(("ns", "other")):
        assert set(rec._locks) == {("ns", "other")}
    assert rec._locks == {}
