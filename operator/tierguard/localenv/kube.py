"""A real, local Kubernetes control plane (integration tests and ``tierguard demo``).

:class:`KubeCluster` starts etcd and kube-apiserver (and, if built, the
kube-controller-manager) as plain processes on loopback ports, with a fresh CA,
client-certificate admin access and RBAC authorization. No kubelet: pods are
never run, but everything API-side (CRDs, RBAC, owner references, watches, and
with the controller manager Deployments -> ReplicaSets and garbage collection)
behaves as in a real cluster.

    with KubeCluster() as cluster:
        cluster.request("GET", "/api/v1/namespaces")           # admin (system:masters)
        kc = cluster.kubeconfig_for_service_account("ns", "op") # a least-privilege identity

Binaries come from ``tests/k8senv/build.sh`` (see :mod:`tierguard.localenv.binaries`).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tierguard.localenv.binaries import binary_path, ensure_binaries, is_current
from tierguard.localenv.ports import free_port
from tierguard.localenv.process import ManagedProcess, format_logs

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"


class ClusterStartError(RuntimeError):
    pass


class _Died(Exception):
    pass


class KubeApiError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        super().__init__(f"{method} {path} -> HTTP {status}: {body}")
        self.status = status
        self.body = body


def _openssl(workdir: Path, *args: str) -> None:
    res = subprocess.run(["openssl", *args], cwd=workdir, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise ClusterStartError(f"openssl {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")


class _Pki:
    """CA, serving cert, client certs and service-account keys made with the openssl CLI."""

    def __init__(self, d: Path) -> None:
        if shutil.which("openssl") is None:
            raise ClusterStartError("the 'openssl' CLI is required (apt-get install openssl)")
        self.dir = d
        d.mkdir(parents=True, exist_ok=True)
        self.ca_crt, self.ca_key = d / "ca.crt", d / "ca.key"
        _openssl(
            d, "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650", "-sha256",
            "-subj", "/CN=tierguard-test-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,digitalSignature,keyCertSign,cRLSign",
        )  # fmt: skip
        sans = ",".join(
            [
                "IP:127.0.0.1",
                f"IP:{KUBERNETES_SERVICE_IP}",
                "DNS:localhost",
                "DNS:kubernetes",
                "DNS:kubernetes.default",
                "DNS:kubernetes.default.svc",
                "DNS:kubernetes.default.svc.cluster.local",
            ]
        )
        self.serving = self.leaf("apiserver", "/CN=kube-apiserver", "serverAuth", sans)
        self.admin = self.leaf("admin", "/O=system:masters/CN=admin", "clientAuth")
        # the API server's client certificate towards kubelets (logs, exec) when a node runs
        self.kubelet_client = self.leaf(
            "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client", "clientAuth"
        )
        # service-account token signing keys
        self.sa_key, self.sa_pub = d / "sa.key", d / "sa.pub"
        _openssl(d, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key")
        _openssl(d, "pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub")

    def leaf(self, name: str, subj: str, usage: str, sans: str | None = None) -> tuple[Path, Path]:
        """Issue a cert signed by the CA; returns (cert, key)."""
        ext = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            f"extendedKeyUsage={usage}",
        ]
        if sans:
            ext.append(f"subjectAltName={sans}")
        (self.dir / f"{name}.ext").write_text("\n".join(ext) + "\n")
        _openssl(
            self.dir, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subj,
        )  # fmt: skip
        _openssl(
            self.dir, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-set_serial", "0x" + secrets.token_hex(16), "-days", "3650", "-sha256",
            "-extfile", f"{name}.ext", "-out", f"{name}.crt",
        )  # fmt: skip
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _write_kubeconfig(path: Path, server: str, ca: Path, user_name: str, user: dict[str, str],
                      namespace: str | None = None) -> Path:  # fmt: skip
    context: dict[str, str] = {"cluster": "tierguard-test", "user": user_name}
    if namespace:
        context["namespace"] = namespace
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "tierguard-test", "cluster": {"server": server, "certificate-authority-data": _b64(ca)}}
        ],
        "users": [{"name": user_name, "user": user}],
        "contexts": [{"name": user_name, "context": context}],
        "current-context": user_name,
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # JSON is valid YAML; this keeps the infra free of a PyYAML dependency.
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    path.chmod(0o600)
    return path


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")


class KubeCluster:
    """etcd + kube-apiserver (+ optional kube-controller-manager) on 127.0.0.1.

    Args:
        controller_manager: ``True`` to require kube-controller-manager, ``False``
            to never start it, ``None`` (default) to start it when it is built.
        build: run ``tests/k8senv/build.sh`` for missing binaries.
        workdir: directory for data, certs, logs and kubeconfigs (default: a new
            temp dir, removed by :meth:`stop` unless ``keep_workdir`` or
            ``TIERGUARD_KEEP_TMP=1``).
        extra_apiserver_args / extra_controller_manager_args: appended flags.
        startup_timeout: seconds to wait for each component to become ready.
    """

    def __init__(
        self,
        *,
        controller_manager: bool | None = None,
        build: bool = True,
        workdir: str | os.PathLike[str] | None = None,
        keep_workdir: bool = False,
        extra_apiserver_args: Sequence[str] = (),
        extra_controller_manager_args: Sequence[str] = (),
        startup_timeout: float = 180.0,
    ) -> None:
        self._want_kcm = controller_manager
        self._build = build
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="tierguard-kube-"))
        self.keep_workdir = keep_workdir or _env_flag("TIERGUARD_KEEP_TMP")
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.extra_controller_manager_args = list(extra_controller_manager_args)
        self.startup_timeout = startup_timeout

        self.etcd: ManagedProcess | None = None
        self.apiserver: ManagedProcess | None = None
        self.controller_manager: ManagedProcess | None = None
        self.etcd_url = ""
        self.port = 0
        self.server = ""
        self.pki: _Pki | None = None
        self.kubeconfig: Path = self.workdir / "admin.kubeconfig"
        self._admin_ctx: ssl.SSLContext | None = None
        self._sa_kubeconfigs: dict[tuple[str, str], Path] = {}
        self.startup_seconds = 0.0

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> KubeCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def processes(self) -> list[ManagedProcess]:
        return [p for p in (self.etcd, self.apiserver, self.controller_manager) if p is not None]

    @property
    def has_controller_manager(self) -> bool:
        return self.controller_manager is not None and self.controller_manager.alive()

    @property
    def ca_file(self) -> Path:
        assert self.pki is not None, "cluster not started"
        return self.pki.ca_crt

    def start(self) -> KubeCluster:
        names = ["etcd", "kube-apiserver"]
        kcm = self._want_kcm
        if kcm is None:
            kcm = is_current("kube-controller-manager") and not _env_flag("TIERGUARD_NO_KCM")
        if kcm:
            names.append("kube-controller-manager")
        try:
            ensure_binaries(names, build=self._build)
        except BaseException:
            self.stop()
            raise

        self.workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        try:
            self.pki = _Pki(self.workdir / "pki")
            self._admin_ctx = self._ssl_context(client_cert=True)
            self._start_with_retries(self._start_etcd)
            self._start_with_retries(self._start_apiserver)
            assert self.pki is not None
            _write_kubeconfig(
                self.kubeconfig, self.server, self.pki.ca_crt, "admin",
                {"client-certificate-data": _b64(self.pki.admin[0]),
                 "client-key-data": _b64(self.pki.admin[1])},
            )  # fmt: skip
            if kcm:
                self._start_controller_manager()
        except BaseException as e:
            logs = format_logs(self.processes)
            self.stop(keep_workdir=True)
            if isinstance(e, ClusterStartError | TimeoutError | _Died):
                raise ClusterStartError(f"{e}\n(workdir kept: {self.workdir})\n{logs}") from e
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self, keep_workdir: bool | None = None) -> None:
        """Stop all components (controller manager, apiserver, then etcd)."""
        for p in (self.controller_manager, self.apiserver, self.etcd):
            if p is not None:
                p.stop()
        keep = self.keep_workdir if keep_workdir is None else keep_workdir
        if self._own_workdir and not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def check_alive(self) -> None:
        """Raise with log tails if a component has died."""
        dead = [p for p in self.processes if not p.alive()]
        if dead:
            raise ClusterStartError("component(s) died:\n" + format_logs(dead))

    def logs(self, lines: int = 60) -> str:
        return format_logs(self.processes, lines)

    # ------------------------------------------------------------------ components
    def _start_with_retries(self, start: Callable[[], None], attempts: int = 3) -> None:
        for i in range(attempts):
            try:
                start()
                return
            except _Died as e:
                proc: ManagedProcess = e.args[0]
                text = proc.log_text()
                if "address already in use" in text and i + 1 < attempts:
                    proc.log_path.rename(proc.log_path.with_suffix(f".attempt{i}.log"))
                    continue  # lost a port race; pick new ports
                raise ClusterStartError(f"{proc.name} exited during startup") from None

    def _wait(self, proc: ManagedProcess, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if not proc.alive():
                raise _Died(proc)
            with contextlib.suppress(Exception):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not ready after {self.startup_timeout:.0f}s")
            time.sleep(0.2)

    def _start_etcd(self) -> None:
        if self.etcd is not None:
            self.etcd.stop()
        client, peer = free_port(), free_port()
        data = self.workdir / "etcd-data"
        shutil.rmtree(data, ignore_errors=True)
        self.etcd_url = f"http://127.0.0.1:{client}"
        peer_url = f"http://127.0.0.1:{peer}"
        args = [
            str(binary_path("etcd")),
            "--name=tierguard-test",
            f"--data-dir={data}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=tierguard-test={peer_url}",
            "--initial-cluster-state=new",
            "--unsafe-no-fsync=true",  # test data only; much faster on slow disks
            "--log-level=warn",
        ]
        self.etcd = ManagedProcess("etcd", args, self.workdir / "logs" / "etcd.log").start()

        def healthy() -> bool:
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as r:
                return bool(json.load(r).get("health") == "true")

        self._wait(self.etcd, healthy, "etcd")

    def _start_apiserver(self) -> None:
        assert self.pki is not None
        if self.apiserver is not None:
            self.apiserver.stop()
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        pki = self.pki
        args = [
            str(binary_path("kube-apiserver")),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={pki.serving[0]}",
            f"--tls-private-key-file={pki.serving[1]}",
            f"--client-ca-file={pki.ca_crt}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            # No kubelets/nodes: do not publish a loopback endpoint for the
            # 'kubernetes' Service (Endpoints validation rejects loopback IPs).
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            f"--kubelet-client-certificate={pki.kubelet_client[0]}",
            f"--kubelet-client-key={pki.kubelet_client[1]}",
            *self.extra_apiserver_args,
        ]
        self.apiserver = ManagedProcess("kube-apiserver", args, self.workdir / "logs" / "kube-apiserver.log")
        self.apiserver.start()

        def ready() -> bool:
            status, body = self.request("GET", "/readyz", timeout=5, raw=True)
            return status == 200 and body.strip() == b"ok"

        self._wait(self.apiserver, ready, "kube-apiserver /readyz")

    def _start_controller_manager(self) -> None:
        assert self.pki is not None
        args = [
            str(binary_path("kube-controller-manager")),
            f"--kubeconfig={self.kubeconfig}",
            "--secure-port=0",
            "--leader-elect=false",
            "--use-service-account-credentials=false",
            f"--service-account-private-key-file={self.pki.sa_key}",
            f"--root-ca-file={self.pki.ca_crt}",
            f"--cluster-signing-cert-file={self.pki.ca_crt}",
            f"--cluster-signing-key-file={self.pki.ca_key}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            *self.extra_controller_manager_args,
        ]
        self.controller_manager = ManagedProcess(
            "kube-controller-manager", args, self.workdir / "logs" / "kube-controller-manager.log"
        ).start()

        # The serviceaccount controller creates 'default' in every namespace:
        # a cheap signal that the controllers are running.
        def ready() -> bool:
            status, _ = self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default", check=False)
            return status == 200

        self._wait(self.controller_manager, ready, "kube-controller-manager")

    # ------------------------------------------------------------------ HTTP access
    def _ssl_context(self, client_cert: bool) -> ssl.SSLContext:
        assert self.pki is not None
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_crt))
        if client_cert:
            ctx.load_cert_chain(str(self.pki.admin[0]), str(self.pki.admin[1]))
        return ctx

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        content_type: str = "application/json",
        check: bool = True,
        timeout: float = 30.0,
        raw: bool = False,
    ) -> tuple[int, Any]:
        """One HTTP request to the API server; returns ``(status, decoded JSON body)``.

        Authenticates as the admin client certificate (system:masters) unless
        ``token`` is given. With ``check=True`` a non-2xx status raises
        :class:`KubeApiError` (``.status``, ``.body``).
        """
        assert self.pki is not None and self.port, "cluster not started"
        ctx = self._ssl_context(client_cert=False) if token else self._admin_ctx
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=timeout)
        headers = {"Accept": "application/json"}
        data: bytes | None = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            status = resp.status
        finally:
            conn.close()
        if raw:
            return status, payload
        try:
            decoded: Any = json.loads(payload) if payload else None
        except ValueError:
            decoded = payload.decode(errors="replace")
        if check and not 200 <= status < 300:
            raise KubeApiError(method, path, status, decoded)
        return status, decoded

    def create(self, path: str, obj: Mapping[str, Any], *, exist_ok: bool = False) -> Any:
        """POST ``obj`` to a collection path; with ``exist_ok`` a 409 returns the existing object."""
        status, body = self.request("POST", path, dict(obj), check=False)
        if status == 409 and exist_ok:
            name = obj["metadata"]["name"]
            return self.request("GET", f"{path}/{quote(name)}")[1]
        if not 200 <= status < 300:
            raise KubeApiError("POST", path, status, body)
        return body

    def create_namespace(self, name: str, *, exist_ok: bool = True) -> Any:
        return self.create(
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
            exist_ok=exist_ok,
        )

    def ensure_service_account(self, namespace: str, name: str) -> Any:
        self.create_namespace(namespace)
        return self.create(
            f"/api/v1/namespaces/{quote(namespace)}/serviceaccounts",
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": namespace},
            },
            exist_ok=True,
        )

    def service_account_token(self, namespace: str, name: str, *, expiration_seconds: int = 86400,
                              audiences: Sequence[str] | None = None) -> str:  # fmt: skip
        """A bound token for the ServiceAccount from the TokenRequest API."""
        spec: dict[str, Any] = {"expirationSeconds": expiration_seconds}
        if audiences:
            spec["audiences"] = list(audiences)
        _, body = self.request(
            "POST",
            f"/api/v1/namespaces/{quote(namespace)}/serviceaccounts/{quote(name)}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        return str(body["status"]["token"])

    def kubeconfig_for_service_account(self, namespace: str, name: str, *, create: bool = True,
                                       expiration_seconds: int = 86400) -> Path:  # fmt: skip
        """Write a kubeconfig that authenticates as ``system:serviceaccount:<namespace>:<name>``.

        Creates the namespace and ServiceAccount if needed (``create=True``),
        requests a token through the TokenRequest API and returns the path of a
        token kubeconfig whose default namespace is ``namespace``. The
        ServiceAccount has no permissions until you bind a (Cluster)Role to it.
        """
        if create:
            self.ensure_service_account(namespace, name)
        token = self.service_account_token(namespace, name, expiration_seconds=expiration_seconds)
        path = self.workdir / "kubeconfigs" / f"sa-{namespace}-{name}.kubeconfig"
        user = f"system:serviceaccount:{namespace}:{name}"
        _write_kubeconfig(path, self.server, self.ca_file, user, {"token": token}, namespace=namespace)
        self._sa_kubeconfigs[(namespace, name)] = path
        return path

    # ------------------------------------------------------------------ clients & tools
    def env(self, kubeconfig: str | os.PathLike[str] | None = None) -> dict[str, str]:
        """os.environ plus KUBECONFIG (admin unless given) for subprocesses (kopf, helm, ...)."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(kubeconfig or self.kubeconfig)
        return env

    def api_client(self, kubeconfig: str | os.PathLike[str] | None = None) -> Any:
        """A ``kubernetes.client.ApiClient`` for the admin (or the given) kubeconfig."""
        from kubernetes import config  # project dependency; imported lazily

        return config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))

    def helm(self, *args: str, kubeconfig: str | os.PathLike[str] | None = None, check: bool = True,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run the pinned helm binary against this cluster (builds helm if needed)."""
        helm = ensure_binaries(["helm"], build=self._build)["helm"]
        home = self.workdir / "helm-home"
        env = self.env(kubeconfig)
        env.update(
            HELM_CACHE_HOME=str(home / "cache"),
            HELM_CONFIG_HOME=str(home / "config"),
            HELM_DATA_HOME=str(home / "data"),
        )
        res = subprocess.run(
            [str(helm), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and res.returncode != 0:
            raise RuntimeError(
                f"helm {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
            )
        return res
