"""Container images for the single-node cluster, built here because no registry is reachable.

Three images, each cached by a hash of exactly what goes into it:

``pause``  the pod sandbox: ``tests/images/pause.c`` compiled statically, one file in a scratch image
           (containerd's ``sandbox_image``).
``base``   Debian bookworm with its python3 (3.11) and pip, made by ``mmdebstrap`` and imported with
           ``buildah``: the local stand-in for ``python:3.11-slim``.
``app``    the project's ``Dockerfile`` built with ``buildah bud --build-arg BASE=<base>`` (the
           Dockerfile's default base stays the official image, so ``docker build .`` is unchanged).

Every image ends up as a docker-archive tarball in ``~/.cache/tierguard/images/`` that
``ctr images import`` loads into a node's containerd; buildah's own storage lives next to it
(``~/.cache/tierguard/containers``), never in the host's ``/var/lib/containers``.

    python3 -m infra.images            # build what is missing (run from tests/), print the refs

Build times on the 2-core dev VM: base ~85 s, app ~40 s, pause ~2 s; cached afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
PAUSE_SOURCE = REPO / "tests" / "images" / "pause.c"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

# The Debian stand-in for python:3.11-slim. Debian's pip installs with the "posix_local" layout
# (/install/local/...) unless DEB_PYTHON_INSTALL_LAYOUT=deb_system; with it, `pip install
# --prefix=/install` writes /install/lib/python3/dist-packages, which the Dockerfile copies to
# /usr/local: a .pth puts that directory on sys.path. pip refuses to install into Debian's
# interpreter while the EXTERNALLY-MANAGED marker exists (the official image has none).
BASE_SUITE = "bookworm"
BASE_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-pip", "passwd", "ca-certificates")
BASE_HOOKS = (
    'rm -f "$1"/usr/lib/python3.*/EXTERNALLY-MANAGED',
    'echo /usr/local/lib/python3/dist-packages > "$1"/usr/lib/python3/dist-packages/usr-local.pth',
    'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/usr/share/doc/* "$1"/usr/share/man/*',
)
BASE_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
    "DEB_PYTHON_INSTALL_LAYOUT=deb_system",
    "PYTHONDONTWRITEBYTECODE=1",
)
# What the Dockerfile copies into the image (plus the Dockerfile itself).
APP_INPUTS = ("Dockerfile", "pyproject.toml", "README.md", "operator")
SKIP_PARTS = ("__pycache__", ".mypy_cache", ".ruff_cache")


class ImageBuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class Image:
    ref: str  # e.g. localhost/tierguard:0123abcd4567
    archive: Path  # docker-archive tarball for `ctr images import`


def cache_dir() -> Path:
    env = os.environ.get("TIERGUARD_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "tierguard"


def images_dir() -> Path:
    return cache_dir() / "images"


def storage_dir() -> Path:
    return cache_dir() / "containers"


# ------------------------------------------------------------------ content hashes (pure)


def _files(root: Path, rel: str) -> Iterator[Path]:
    path = root / rel
    if path.is_file():
        yield path
        return
    for p in sorted(path.rglob("*")):
        skipped = any(part in SKIP_PARTS or part.endswith(".egg-info") for part in p.parts)
        if p.is_file() and not skipped and p.suffix != ".pyc":
            yield p


def content_hash(root: Path, inputs: Iterable[str], extra: Sequence[str] = ()) -> str:
    """A short sha256 over the relative names and bytes of ``inputs`` (files or directories
    under ``root``) and the ``extra`` strings (recipes, base refs)."""
    h = hashlib.sha256()
    for s in extra:
        h.update(b"x\0" + s.encode() + b"\0")
    for rel in inputs:
        for f in _files(root, rel):
            h.update(b"f\0" + str(f.relative_to(root)).encode() + b"\0")
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:12]


def base_hash() -> str:
    return content_hash(REPO, (), [BASE_SUITE, BASE_MIRROR, *BASE_PACKAGES, *BASE_HOOKS, *BASE_ENV])


def pause_hash() -> str:
    return content_hash(REPO, ["tests/images/pause.c"], ["gcc -static -O2"])


def app_hash(base_ref: str) -> str:
    return content_hash(REPO, APP_INPUTS, [base_ref])


# ------------------------------------------------------------------ running the tools


def _progress(msg: str) -> None:
    print(
        f"[tierguard images {time.strftime('%H:%M:%S')}] {msg}", file=sys.__stderr__ or sys.stderr, flush=True
    )


def _run(args: Sequence[str | os.PathLike[str]], *, timeout: float = 900, cwd: Path | None = None) -> str:
    cmd = [str(a) for a in args]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False)
    except FileNotFoundError as e:
        raise ImageBuildError(f"{cmd[0]} not found: install it with .ci/install.sh") from e
    except subprocess.TimeoutExpired as e:
        raise ImageBuildError(f"{' '.join(cmd)} took longer than {timeout:.0f}s") from e
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).splitlines()[-40:])
        raise ImageBuildError(f"{' '.join(cmd)} failed with exit code {res.returncode}:\n{tail}")
    return res.stdout


def _buildah(*args: str | os.PathLike[str], timeout: float = 900, cwd: Path | None = None) -> str:
    root = storage_dir()
    return _run(
        ["buildah", f"--root={root / 'storage'}", f"--runroot={root / 'run'}", *args],
        timeout=timeout,
        cwd=cwd,
    )


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One image build at a time on this machine (parallel test sessions wait)."""
    images_dir().mkdir(parents=True, exist_ok=True)
    with open(images_dir() / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _has_image(ref: str) -> bool:
    try:
        _buildah("inspect", "--type=image", ref, timeout=60)
    except ImageBuildError:
        return False
    return True


def _export(ref: str, archive: Path) -> Image:
    """buildah image -> docker-archive tarball (written atomically); old archives of the same
    image name are removed."""
    tmp = archive.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    _buildah("push", ref, f"docker-archive:{tmp}:{ref}")
    tmp.replace(archive)
    prefix = archive.name.rsplit("-", 1)[0] + "-"
    for old in archive.parent.glob(prefix + "*.tar"):
        if old != archive and old.name.rsplit("-", 1)[0] + "-" == prefix:
            old.unlink(missing_ok=True)
    _remove_older_tags(ref)
    return Image(ref, archive)


def _remove_older_tags(ref: str) -> None:
    """Drop the previous builds of the same image from buildah's storage (one per code change)."""
    repo = ref.rsplit(":", 1)[0]
    listing = _buildah("images", "--format", "{{.Name}}:{{.Tag}}", timeout=60)
    for line in listing.split():
        if line.rsplit(":", 1)[0] == repo and line != ref:
            with contextlib.suppress(ImageBuildError):
                _buildah("rmi", line, timeout=120)


def _from_scratch(ref: str, add: Sequence[tuple[Path, str]], config: Sequence[str]) -> None:
    container = _buildah("from", "scratch").strip()
    try:
        for src, dest in add:
            _buildah("add", container, src, dest)
        _buildah("config", *config, container)
        _buildah("commit", "--rm", container, ref)
    except BaseException:
        with contextlib.suppress(ImageBuildError):
            _buildah("rm", container)
        raise


# ------------------------------------------------------------------ the images


def pause_image() -> Image:
    h = pause_hash()
    ref, archive = f"localhost/tierguard-pause:{h}", images_dir() / f"pause-{h}.tar"
    if archive.is_file():
        return Image(ref, archive)
    if shutil.which("gcc") is None:
        raise ImageBuildError("gcc not found (needed to build the pause image): run .ci/install.sh")
    _progress(f"building the pause image {ref}")
    with tempfile.TemporaryDirectory(prefix="tierguard-pause-") as d:
        binary = Path(d) / "pause"
        _run(["gcc", "-static", "-O2", "-o", binary, PAUSE_SOURCE])
        _from_scratch(ref, [(binary, "/pause")], ["--entrypoint", '["/pause"]', "--cmd", ""])
    return _export(ref, archive)


def base_image() -> str:
    """The Debian base in buildah's storage (no archive: only ``buildah bud`` uses it)."""
    h = base_hash()
    ref = f"localhost/tierguard-base:{h}"
    if _has_image(ref):
        return ref
    rootfs = images_dir() / f"base-{h}.rootfs.tar"
    if not rootfs.is_file():
        if shutil.which("mmdebstrap") is None:
            raise ImageBuildError("mmdebstrap not found (needed for the base image): run .ci/install.sh")
        _progress(f"building the base image {ref} with mmdebstrap ({BASE_SUITE}, ~90 s)")
        t0 = time.monotonic()
        tmp = rootfs.with_suffix(".tmp.tar")
        hooks = [f"--customize-hook={c}" for c in BASE_HOOKS]
        _run(
            ["mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", *hooks,
             BASE_SUITE, tmp, BASE_MIRROR],
            timeout=1200,
        )  # fmt: skip
        tmp.replace(rootfs)
        for old in images_dir().glob("base-*.rootfs.tar"):
            if old != rootfs:
                old.unlink(missing_ok=True)
        _progress(f"mmdebstrap done in {time.monotonic() - t0:.0f}s")
    config = [a for e in BASE_ENV for a in ("--env", e)] + ["--cmd", "/bin/bash"]
    _from_scratch(ref, [(rootfs, "/")], config)
    return ref


def app_image() -> Image:
    base = base_image()
    h = app_hash(base)
    ref, archive = f"localhost/tierguard:{h}", images_dir() / f"app-{h}.tar"
    if archive.is_file():
        return Image(ref, archive)
    _progress(f"building {ref} from the Dockerfile with buildah bud (BASE={base}, ~40 s)")
    t0 = time.monotonic()
    mounts = [f"--volume={HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"] if HOST_CA_BUNDLE.is_file() else []
    _buildah(
        "bud", "--isolation=chroot", "--pull=never", f"--build-arg=BASE={base}", *mounts,
        "--layers=false", f"--tag={ref}", f"--file={REPO / 'Dockerfile'}", REPO,
        timeout=1200,
    )  # fmt: skip
    image = _export(ref, archive)
    _progress(f"{ref} built in {time.monotonic() - t0:.0f}s")
    return image


@dataclass(frozen=True)
class NodeImages:
    pause: Image
    app: Image


def ensure_images() -> NodeImages:
    """Build (or find in the cache) the pause and app images."""
    with _locked():
        return NodeImages(pause=pause_image(), app=app_image())


def main() -> int:
    try:
        imgs = ensure_images()
    except ImageBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for name, img in (("pause", imgs.pause), ("app", imgs.app)):
        print(f"{name}\t{img.ref}\t{img.archive}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
