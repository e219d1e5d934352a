"""What a single-node cluster changes on the host, recorded before and undone after.

A kubelet, kube-proxy, containerd and the CNI bridge plugin change machine-wide settings:
iptables rules (both families), sysctls (``ip_forward``, ``route_localnet``, the kubelet's
kernel defaults), a bridge, network-namespace and overlay mounts, cgroups, and containerd
shims that outlive containerd. :class:`HostState` records the prior state in a JSON file
*before* anything changes; :func:`restore` undoes everything from that record, by PID and by
path, never by process name. A run that crashed leaves its record behind and the next run
restores it first (:func:`recover_stale`), so one crash cannot poison the next run.

The parsing helpers are pure and unit-tested (tests/test_node_hoststate.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
IPTABLES_TABLES = ("filter", "nat", "mangle", "raw")
CGROUP_FS = Path("/sys/fs/cgroup")
NETNS_DIR = Path("/run/netns")


# ------------------------------------------------------------------ pure helpers


def mount_points(mountinfo: str) -> list[str]:
    """Mount points listed in a /proc/<pid>/mountinfo text, in mount order (octal escapes decoded)."""
    out = []
    for line in mountinfo.splitlines():
        parts = line.split()
        if len(parts) > 4:
            out.append(parts[4].encode().decode("unicode_escape"))
    return out


def mounts_to_undo(points: Sequence[str], prefixes: Sequence[str], before: Iterable[str] = ()) -> list[str]:
    """Mount points under any of ``prefixes`` that were not mounted ``before``, innermost first."""
    old = set(before)
    picked = [
        p
        for p in points
        if p not in old and any(p == x or p.startswith(x.rstrip("/") + "/") for x in prefixes)
    ]
    return list(reversed(picked))


def complete_dump(dump: str, tables: Sequence[str] = IPTABLES_TABLES) -> str:
    """An ``iptables-save`` text plus an empty section for each table it lacks, so that
    ``iptables-restore`` also flushes the rules and chains added to tables that were empty."""
    present = {line[1:].strip() for line in dump.splitlines() if line.startswith("*")}
    extra = "".join(f"*{t}\nCOMMIT\n" for t in tables if t not in present)
    return dump + ("" if dump.endswith("\n") or not dump else "\n") + extra


def matching_pids(cmdlines: Mapping[int, str], needle: str) -> list[int]:
    """PIDs whose command line contains ``needle`` (a path unique to one run)."""
    return sorted(pid for pid, cmd in cmdlines.items() if needle and needle in cmd)


# ------------------------------------------------------------------ the record


@dataclass
class HostState:
    workdir: str
    bridge: str
    cgroup_name: str
    containerd_address: str
    owner_pid: int = field(default_factory=os.getpid)
    sysctls: dict[str, str] = field(default_factory=dict)
    iptables: dict[str, str] = field(default_factory=dict)  # command -> completed dump
    mounts_before: list[str] = field(default_factory=list)
    netns_before: list[str] = field(default_factory=list)
    netns_dir_existed: bool = True
    pids: list[int] = field(default_factory=list)  # processes started by the run (by PID)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> HostState:
        return cls(**json.loads(path.read_text()))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def snapshot(workdir: Path, bridge: str, cgroup_name: str, containerd_address: str) -> HostState:
    """Record the host settings a node run may change (call before changing any)."""
    st = HostState(str(workdir), bridge, cgroup_name, containerd_address)
    for key in SYSCTLS:
        value = _read(Path("/proc/sys") / key)
        if value is not None:
            st.sysctls[key] = value
    for cmd in ("iptables", "ip6tables"):
        res = subprocess.run([f"{cmd}-save"], capture_output=True, text=True, check=False)
        if res.returncode == 0:
            st.iptables[cmd] = complete_dump(res.stdout)
    st.mounts_before = mount_points(Path("/proc/self/mountinfo").read_text())
    st.netns_dir_existed = NETNS_DIR.is_dir()
    st.netns_before = sorted(p.name for p in NETNS_DIR.glob("*")) if st.netns_dir_existed else []
    return st


# ------------------------------------------------------------------ undoing


def _cmdlines() -> dict[int, str]:
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                out[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return out


def _kill(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def cgroup_dirs(name: str) -> list[Path]:
    """The run's cgroup directory in every cgroup v1 hierarchy (pods live below it)."""
    if not CGROUP_FS.is_dir():
        return []
    return [d / name for d in sorted(CGROUP_FS.iterdir()) if (d / name).is_dir()]


def _cgroup_pids(dirs: Sequence[Path]) -> set[int]:
    pids: set[int] = set()
    for d in dirs:
        for procs in d.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(x) for x in procs.read_text().split())
    return pids


def _remove_cgroups(dirs: Sequence[Path]) -> list[str]:
    problems = []
    for d in dirs:
        for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                sub.rmdir()
        try:
            d.rmdir()
        except OSError as e:
            problems.append(f"cgroup {d}: {e}")
    return problems


def restore(st: HostState) -> list[str]:
    """Undo a run from its record. Idempotent; returns what could not be undone."""
    problems: list[str] = []
    # 1. processes: the run's own (by PID, if the command line still names its workdir),
    #    containerd shims of its containerd, then everything inside its pod cgroups.
    cmds = _cmdlines()
    _kill(pid for pid in st.pids if st.workdir in cmds.get(pid, ""))
    _kill(matching_pids(cmds, st.containerd_address))
    dirs = cgroup_dirs(st.cgroup_name)
    for _ in range(50):
        pids = _cgroup_pids(dirs)
        if not pids:
            break
        _kill(pids)
        time.sleep(0.1)
    problems += _remove_cgroups(dirs)
    # 2. mounts: everything under the workdir, and the network namespaces the run created
    points = mount_points(Path("/proc/self/mountinfo").read_text())
    new_netns = (
        [str(p) for p in NETNS_DIR.glob("*") if p.name not in set(st.netns_before)]
        if NETNS_DIR.is_dir()
        else []
    )
    for m in mounts_to_undo(points, [st.workdir, *new_netns], st.mounts_before):
        res = subprocess.run(["umount", "-l", m], capture_output=True, text=True, check=False)
        if res.returncode != 0:
            problems.append(f"umount {m}: {res.stderr.strip()}")
    for ns in new_netns:
        with contextlib.suppress(OSError):
            Path(ns).unlink()
    if not st.netns_dir_existed:
        with contextlib.suppress(OSError):
            NETNS_DIR.rmdir()  # containerd made it; empty now
    # 3. network: the bridge (veths went with their namespaces), iptables, sysctls
    if Path(f"/sys/class/net/{st.bridge}").exists():
        subprocess.run(["ip", "link", "delete", st.bridge], capture_output=True, check=False)
    for cmd, dump in st.iptables.items():
        res = subprocess.run([f"{cmd}-restore"], input=dump, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            problems.append(f"{cmd}-restore: {res.stderr.strip()}")
    for key, value in st.sysctls.items():
        path = Path("/proc/sys") / key
        if _read(path) != value:
            try:
                path.write_text(value + "\n")
            except OSError as e:
                problems.append(f"sysctl {key}={value}: {e}")
    return problems


def recover_stale(state_file: Path) -> list[str] | None:
    """Restore the record a crashed run left behind (None if there is none)."""
    if not state_file.is_file():
        return None
    try:
        st = HostState.load(state_file)
    except (OSError, ValueError, TypeError) as e:
        state_file.unlink(missing_ok=True)
        return [f"unreadable node state {state_file}: {e}"]
    problems = restore(st)
    state_file.unlink(missing_ok=True)
    return problems
