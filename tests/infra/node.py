"""A real single-node Kubernetes cluster for tests: pods run.

:class:`NodeCluster` starts, on this machine and under one temporary directory:

    etcd, kube-apiserver (Node + RBAC authorization, NodeRestriction), kube-controller-manager
    (the control plane of :class:`infra.kube.KubeCluster`), kube-scheduler, containerd (Debian's,
    with its own root/state/socket), kubelet and kube-proxy (iptables mode)

with its own PKI: the kubelet is ``system:node:<name>``, the scheduler ``system:kube-scheduler``,
kube-proxy ``system:kube-proxy``, each with a client certificate from the cluster's CA. The node
IP is a bridge (``tgbr0``, 10.244.0.1/24) that is also the CNI bridge of the pods; the API server
listens on it too, so pods reach it through the ``kubernetes`` Service.

Images come from :mod:`infra.images` (built locally from the Dockerfile, imported into
containerd; pods use ``imagePullPolicy: Never``).

Host settings the run changes are recorded first and restored at :meth:`stop`, or by the next run
if this one crashed (:mod:`infra.hoststate`). One node at a time per machine (a lock file).

Settings this VM needs (see shared HINTS 2026-12-02): ``failCgroupV1: false`` and
``cgroupDriver: cgroupfs`` (cgroup v1 host), containerd's ``restrict_oom_score_adj`` (no
CAP_SYS_RESOURCE, runc could not set oom_score_adj), an absolute ``--root-dir``, ``podLogsDir`` off
``/var/log``, ``--kubelet-preferred-address-types=InternalIP``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from infra.hoststate import HostState, recover_stale, restore, snapshot
from infra.images import NodeImages, cache_dir, ensure_images
from tierguard.localenv.binaries import NODE_BINARIES, ensure_binaries
from tierguard.localenv.kube import ClusterStartError, KubeCluster, _b64, _write_kubeconfig
from tierguard.localenv.ports import free_port
from tierguard.localenv.process import ManagedProcess, format_logs

NODE_NAME = "tierguard-node"
BRIDGE = "tgbr0"
NODE_IP = "10.244.0.1"
POD_CIDR = "10.244.0.0/24"
CGROUP_NAME = "tierguard-node"
CNI_BIN_DIR = "/usr/lib/cni"
HOST_TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "ip", "conntrack")


class NodeUnavailable(RuntimeError):
    """The host cannot run a node (a one-line reason: not root, a missing tool or kernel feature)."""


def state_dir() -> Path:
    return cache_dir() / "node"


def host_problem() -> str | None:
    """Why this host cannot run a kubelet, or None."""
    if os.geteuid() != 0:
        return f"a kubelet needs root (this process runs as uid {os.geteuid()})"
    missing = [t for t in HOST_TOOLS if shutil.which(t) is None]
    if missing:
        return (
            f"missing host tools {missing}: run .ci/install.sh (Debian containerd, runc, iptables, conntrack)"
        )
    if not Path(CNI_BIN_DIR, "bridge").is_file():
        return f"no CNI plugins in {CNI_BIN_DIR}: apt-get install containernetworking-plugins"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlay filesystem (containerd's snapshotter)"
    return None


def _yaml(obj: Any) -> str:
    return json.dumps(obj, indent=2) + "\n"  # JSON is YAML; no PyYAML needed here


class NodeCluster:
    """Control plane + one node that runs pods. Use as a context manager or start()/stop().

    Args:
        sync_frequency: the kubelet's ``syncFrequency`` (how often it re-syncs pods, and with
            it how soon a changed ConfigMap reaches a mounted file); the kubelet default is 1m.
        images: prebuilt images (default: :func:`infra.images.ensure_images`).
        extra_apiserver_args: appended to the API server's flags.
    """

    def __init__(
        self,
        *,
        sync_frequency: str = "10s",
        images: NodeImages | None = None,
        extra_apiserver_args: Sequence[str] = (),
        startup_timeout: float = 180.0,
    ) -> None:
        self.sync_frequency = sync_frequency
        self.images = images
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.startup_timeout = startup_timeout
        self.workdir = Path(tempfile.mkdtemp(prefix="tierguard-node-"))
        self.keep_workdir = os.environ.get("TIERGUARD_KEEP_TMP", "") in ("1", "true", "yes")
        self.cluster: KubeCluster | None = None
        self.containerd: ManagedProcess | None = None
        self.scheduler: ManagedProcess | None = None
        self.kubelet: ManagedProcess | None = None
        self.proxy: ManagedProcess | None = None
        self.state: HostState | None = None
        self._lock: IO[str] | None = None
        self.timings: dict[str, float] = {}
        self._kubelet_healthz = 0
        self.address = str(self.workdir / "containerd" / "containerd.sock")

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> NodeCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def processes(self) -> list[ManagedProcess]:
        own = [p for p in (self.containerd, self.scheduler, self.kubelet, self.proxy) if p is not None]
        return (self.cluster.processes if self.cluster else []) + own

    def logs(self, lines: int = 40) -> str:
        return format_logs(self.processes, lines)

    def start(self) -> NodeCluster:
        problem = host_problem()
        if problem:
            raise NodeUnavailable(problem)
        ensure_binaries(["etcd", "kube-apiserver", "kube-controller-manager", *NODE_BINARIES])
        if self.images is None:
            self.images = ensure_images()
        self._acquire_lock()
        t0 = time.monotonic()
        try:
            stale = recover_stale(state_dir() / "state.json")
            if stale:
                _progress(f"restored the host settings a crashed node run left behind; problems: {stale}")
            self.state = snapshot(self.workdir, BRIDGE, CGROUP_NAME, self.address)
            self._save_state()
            self._setup_host()
            self._start_containerd()
            # importing the images (~20 s for the app's 400 MB) overlaps the control plane's start
            importer = _Background(self._import_images)
            self._start_control_plane()
            self.timings["apiserver_ready"] = time.monotonic() - t0
            importer.join()
            self.timings["images_imported"] = time.monotonic() - t0
            self._start_scheduler()
            self._start_kube_proxy()
            self._start_kubelet()
            self._wait_node_ready()
            self.timings["node_ready"] = time.monotonic() - t0
        except BaseException as e:
            logs = self.logs()
            self.stop(keep_workdir=True)
            if isinstance(e, ClusterStartError | TimeoutError | subprocess.CalledProcessError):
                raise ClusterStartError(
                    f"node start failed: {e}\n(workdir kept: {self.workdir})\n{logs}"
                ) from e
            raise
        return self

    def stop(self, keep_workdir: bool | None = None) -> None:
        """Stop every component by PID, then restore every host setting the run changed."""
        if self.cluster is not None and self.kubelet is not None and self.kubelet.alive():
            with contextlib.suppress(Exception):
                self._delete_pods()
        for p in (self.kubelet, self.proxy, self.scheduler, self.containerd):
            if p is not None:
                p.stop(timeout=10)
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None
        if self.state is not None:
            # pods (by their cgroups), shims, mounts, bridge, iptables, sysctls
            problems = restore(self.state)
            if problems:
                _progress(f"node teardown could not undo: {problems}")
            (state_dir() / "state.json").unlink(missing_ok=True)
            self.state = None
        keep = self.keep_workdir if keep_workdir is None else keep_workdir
        if not keep:
            # rm(1) removes containerd's unpacked layers (tens of thousands of files) faster than
            # shutil.rmtree; --one-file-system never follows a mount the teardown missed
            subprocess.run(["rm", "-rf", "--one-file-system", str(self.workdir)], check=False)
        self._release_lock()

    # ------------------------------------------------------------------ host
    def _acquire_lock(self, timeout: float = 600) -> None:
        state_dir().mkdir(parents=True, exist_ok=True)
        self._lock = open(state_dir() / "node.lock", "w")  # noqa: SIM115 - held until stop()
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ClusterStartError("another test node is running on this machine") from None
                time.sleep(1)

    def _release_lock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _save_state(self) -> None:
        assert self.state is not None
        self.state.pids = [p.pid for p in self.processes if p.pid]
        self.state.save(state_dir() / "state.json")

    def _setup_host(self) -> None:
        run = _check
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE])
        run(["ip", "link", "set", BRIDGE, "up"])
        # The kubelet's cgroup root (--cgroup-root): every pod lives below it, so a teardown
        # finds every pod process by reading it. cpuset needs cpus/mems before it takes tasks.
        for hierarchy in sorted(Path("/sys/fs/cgroup").iterdir()):
            if not (hierarchy / "cgroup.procs").exists() or hierarchy.is_symlink():
                continue
            d = hierarchy / CGROUP_NAME
            d.mkdir(exist_ok=True)
            for f in ("cpuset.cpus", "cpuset.mems"):
                if (hierarchy / f).exists():
                    (d / f).write_text((hierarchy / f).read_text())

    # ------------------------------------------------------------------ components
    def _leaf_kubeconfig(self, name: str, subject: str) -> Path:
        assert self.cluster is not None and self.cluster.pki is not None
        crt, key = self.cluster.pki.leaf(name, subject, "clientAuth")
        return _write_kubeconfig(
            self.workdir / "kubeconfigs" / f"{name}.kubeconfig", self.cluster.server, self.cluster.ca_file,
            name, {"client-certificate-data": _b64(crt), "client-key-data": _b64(key)},
        )  # fmt: skip

    def _start_control_plane(self) -> None:
        self.cluster = KubeCluster(
            controller_manager=True,
            workdir=self.workdir / "control-plane",
            extra_apiserver_args=[
                # pods reach the API server through the 'kubernetes' Service -> the node IP
                "--bind-address=0.0.0.0",
                f"--advertise-address={NODE_IP}",
                "--endpoint-reconciler-type=lease",
                "--kubelet-preferred-address-types=InternalIP",
                "--enable-admission-plugins=NodeRestriction",
                *self.extra_apiserver_args,
            ],
            startup_timeout=self.startup_timeout,
        )
        self.cluster.start()

    def _start_containerd(self) -> None:
        assert self.images is not None
        d = self.workdir / "containerd"
        (self.workdir / "cni" / "net.d").mkdir(parents=True, exist_ok=True)
        (self.workdir / "cni" / "net.d" / "10-tierguard.conflist").write_text(
            _yaml(
                {
                    "cniVersion": "0.4.0",
                    "name": "tierguard",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(self.workdir / "cni" / "ipam"),
                            },
                        }
                    ],
                }
            )
        )
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{d / "root"}"
state = "{d / "state"}"
[grpc]
  address = "{self.address}"
[ttrpc]
  address = "{d / "containerd.sock.ttrpc"}"
[debug]
  address = ""
[metrics]
  address = ""
[{cri}]
  sandbox_image = "{self.images.pause.ref}"
  # this VM drops CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below the parent's
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{self.workdir / "cni" / "net.d"}"
"""
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.toml").write_text(config)
        self.containerd = ManagedProcess(
            "containerd",
            ["containerd", "--config", d / "config.toml"],
            self.workdir / "logs" / "containerd.log",
        ).start()
        self._save_state()
        self._wait(self.containerd, lambda: self._ctr("version", check=False).returncode == 0, "containerd")

    def _ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            ["ctr", "--address", self.address, "--namespace", "k8s.io", *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if check and res.returncode != 0:
            raise ClusterStartError(f"ctr {' '.join(args)} failed: {res.stderr.strip()}")
        return res

    def _import_images(self) -> None:
        assert self.images is not None
        for image in (self.images.pause, self.images.app):
            self._ctr("images", "import", "--snapshotter=overlayfs", str(image.archive))

    def _start_scheduler(self) -> None:
        kc = self._leaf_kubeconfig("kube-scheduler", "/CN=system:kube-scheduler")
        self.scheduler = ManagedProcess(
            "kube-scheduler",
            [
                ensure_binaries(["kube-scheduler"])["kube-scheduler"],
                f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
                "--leader-elect=false", "--secure-port=0",
            ],
            self.workdir / "logs" / "kube-scheduler.log",
        ).start()  # fmt: skip
        self._save_state()

    def _start_kube_proxy(self) -> None:
        kc = self._leaf_kubeconfig("kube-proxy", "/CN=system:kube-proxy")
        config = self.workdir / "kube-proxy.yaml"
        config.write_text(
            _yaml(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "clientConnection": {"kubeconfig": str(kc)},
                    "mode": "iptables",
                    "clusterCIDR": POD_CIDR,
                    "hostnameOverride": NODE_NAME,
                    "healthzBindAddress": f"127.0.0.1:{free_port()}",
                    "metricsBindAddress": f"127.0.0.1:{free_port()}",
                    # pod -> Service -> pod on the same bridge: SNAT so the reply comes back
                    # through the host and is un-DNATed
                    "iptables": {"masqueradeAll": True, "minSyncPeriod": "0s", "syncPeriod": "30s"},
                    # leave the host's conntrack sysctls alone
                    "conntrack": {
                        "maxPerCore": 0,
                        "min": 0,
                        "tcpEstablishedTimeout": "0s",
                        "tcpCloseWaitTimeout": "0s",
                    },
                }
            )
        )
        self.proxy = ManagedProcess(
            "kube-proxy",
            [ensure_binaries(["kube-proxy"])["kube-proxy"], f"--config={config}"],
            self.workdir / "logs" / "kube-proxy.log",
        ).start()
        self._save_state()

    def _start_kubelet(self) -> None:
        assert self.cluster is not None and self.cluster.pki is not None
        pki = self.cluster.pki
        kc = self._leaf_kubeconfig("kubelet", f"/O=system:nodes/CN=system:node:{NODE_NAME}")
        serving = pki.leaf(
            "kubelet-serving", f"/CN={NODE_NAME}", "serverAuth", f"IP:{NODE_IP},DNS:{NODE_NAME}"
        )
        root = self.workdir / "kubelet"
        config = self.workdir / "kubelet.yaml"
        self._kubelet_healthz = free_port()
        config.write_text(
            _yaml(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "failCgroupV1": False,
                    "cgroupDriver": "cgroupfs",
                    "cgroupRoot": f"/{CGROUP_NAME}",
                    "containerRuntimeEndpoint": f"unix://{self.address}",
                    "address": NODE_IP,
                    "port": free_port(),
                    "readOnlyPort": 0,
                    "healthzBindAddress": "127.0.0.1",
                    "healthzPort": self._kubelet_healthz,
                    "tlsCertFile": str(serving[0]),
                    "tlsPrivateKeyFile": str(serving[1]),
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": True},
                        "x509": {"clientCAFile": str(pki.ca_crt)},
                    },
                    "authorization": {"mode": "Webhook"},
                    "syncFrequency": self.sync_frequency,
                    "podLogsDir": str(self.workdir / "pod-logs"),
                    "resolvConf": "",
                    "failSwapOn": False,
                    "protectKernelDefaults": False,
                    # a shared test VM's disk may be fuller than the default thresholds allow
                    "evictionHard": {
                        "memory.available": "50Mi",
                        "nodefs.available": "1%",
                        "imagefs.available": "1%",
                        "nodefs.inodesFree": "1%",
                    },
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    "serializeImagePulls": False,
                    "nodeStatusReportFrequency": "10s",
                }
            )
        )
        self.kubelet = ManagedProcess(
            "kubelet",
            [
                ensure_binaries(["kubelet"])["kubelet"],
                f"--config={config}", f"--kubeconfig={kc}", f"--root-dir={root.resolve()}",
                f"--cert-dir={self.workdir / 'kubelet-pki'}", f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
            ],
            self.workdir / "logs" / "kubelet.log",
        ).start()  # fmt: skip
        self._save_state()

    def _wait(self, proc: ManagedProcess, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if not proc.alive():
                raise ClusterStartError(f"{proc.name} exited during startup")
            with contextlib.suppress(Exception):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not ready after {self.startup_timeout:.0f}s")
            time.sleep(0.2)

    def _wait_node_ready(self) -> None:
        assert self.cluster is not None and self.kubelet is not None

        def ready() -> bool:
            url = f"http://127.0.0.1:{self._kubelet_healthz}/healthz"
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status != 200:
                    return False
            _, node = self.cluster.request("GET", f"/api/v1/nodes/{NODE_NAME}")  # type: ignore[union-attr]
            conds = {c["type"]: c["status"] for c in (node["status"].get("conditions") or [])}
            return conds.get("Ready") == "True"

        self._wait(self.kubelet, ready, "the node")

    def _delete_pods(self) -> None:
        """Delete every pod at once (grace 0) so that the kubelet tears down their sandboxes."""
        assert self.cluster is not None
        _, pods = self.cluster.request("GET", "/api/v1/pods")
        for pod in pods["items"]:
            meta = pod["metadata"]
            self.cluster.request(
                "DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}?gracePeriodSeconds=0",
                check=False,
            )  # fmt: skip

    def restart_kubelet(self, sync_frequency: str | None = None) -> None:
        """Restart the kubelet (pods keep running), optionally with another ``syncFrequency``."""
        assert self.kubelet is not None
        self.kubelet.stop(timeout=10)
        if sync_frequency is not None:
            self.sync_frequency = sync_frequency
        self._start_kubelet()
        self._wait_node_ready()

    # ------------------------------------------------------------------ helpers for tests
    def request(self, *args: Any, **kwargs: Any) -> tuple[int, Any]:
        assert self.cluster is not None
        return self.cluster.request(*args, **kwargs)

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """The pinned kubectl as cluster admin."""
        assert self.cluster is not None
        res = subprocess.run(
            [str(ensure_binaries(["kubectl"])["kubectl"]), *args],
            env=self.cluster.env(), capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if check and res.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
        return res


def _check(args: Sequence[str]) -> None:
    res = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise ClusterStartError(f"{' '.join(args)} failed: {res.stderr.strip()}")


def _progress(msg: str) -> None:
    print(
        f"[tierguard node {time.strftime('%H:%M:%S')}] {msg}", file=sys.__stderr__ or sys.stderr, flush=True
    )


class _Background(threading.Thread):
    """Run ``fn`` in a thread; :meth:`join` re-raises its exception."""

    def __init__(self, fn: Callable[[], None]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.fn()
        except BaseException as e:  # re-raised in join()
            self.error = e

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.error is not None:
            raise self.error
