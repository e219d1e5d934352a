"""The pure parts of the single-node cluster's host-state record (tests/infra/hoststate.py)."""

from __future__ import annotations

from pathlib import Path

from infra.hoststate import complete_dump, matching_pids, mount_points, mounts_to_undo
from infra.images import content_hash

MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:35 / /tmp/tierguard-node-x/containerd/state/io.containerd/k8s.io/abc/rootfs rw - overlay overlay rw
41 22 0:4 net:[4026532] /run/netns/cni-1234 rw shared:5 - nsfs nsfs rw
42 40 0:36 / /tmp/tierguard-node-x/kubelet/pods/p/volumes/kubernetes.io~configmap/config rw - tmpfs tmpfs rw
43 22 0:37 / /tmp/other\\040dir rw - tmpfs tmpfs rw
"""


def test_mount_points_decodes_escaped_spaces() -> None:
    points = mount_points(MOUNTINFO)
    assert points[0] == "/" and points[-1] == "/tmp/other dir" and len(points) == 5


def test_mounts_to_undo_takes_the_runs_mounts_innermost_first_and_keeps_older_ones() -> None:
    points = mount_points(MOUNTINFO)
    undo = mounts_to_undo(points, ["/tmp/tierguard-node-x", "/run/netns/cni-1234"], before=["/"])
    assert undo == [
        "/tmp/tierguard-node-x/kubelet/pods/p/volumes/kubernetes.io~configmap/config",
        "/run/netns/cni-1234",
        "/tmp/tierguard-node-x/containerd/state/io.containerd/k8s.io/abc/rootfs",
    ]
    # a sibling whose name merely starts with the prefix is not the run's
    assert mounts_to_undo(["/tmp/tierguard-node-xy"], ["/tmp/tierguard-node-x"]) == []
    # a mount that existed before the run is left alone
    assert mounts_to_undo(points, ["/run/netns/cni-1234"], before=["/run/netns/cni-1234"]) == []


def test_complete_dump_adds_the_tables_that_were_empty_so_restore_flushes_them() -> None:
    dump = "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"
    out = complete_dump(dump)
    assert out.startswith(dump)
    assert "*nat\nCOMMIT\n" in out and "*mangle\nCOMMIT\n" in out and "*raw\nCOMMIT\n" in out
    assert out.count("*filter") == 1
    assert complete_dump("") == "*filter\nCOMMIT\n*nat\nCOMMIT\n*mangle\nCOMMIT\n*raw\nCOMMIT\n"


def test_matching_pids_by_the_runs_unique_socket_path() -> None:
    cmds = {
        10: "containerd-shim-runc-v2 -namespace k8s.io -address /tmp/tierguard-node-x/containerd/containerd.sock",
        11: "containerd-shim-runc-v2 -namespace k8s.io -address /run/containerd/containerd.sock",
        12: "bash",
    }
    assert matching_pids(cmds, "/tmp/tierguard-node-x/containerd/containerd.sock") == [10]
    assert matching_pids(cmds, "") == []


def test_image_content_hash_follows_contents_and_recipe(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("x = 1\n")
    (tmp_path / "src" / "__pycache__").mkdir()
    (tmp_path / "src" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"junk")
    h1 = content_hash(tmp_path, ["src"], ["base:1"])
    (tmp_path / "src" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"other junk")
    assert content_hash(tmp_path, ["src"], ["base:1"]) == h1  # caches do not count
    assert content_hash(tmp_path, ["src"], ["base:2"]) != h1  # another base image
    (tmp_path / "src" / "a.py").write_text("x = 2\n")
    assert content_hash(tmp_path, ["src"], ["base:1"]) != h1
