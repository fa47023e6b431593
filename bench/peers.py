"""The peer gateways that ``bench/gateway.py --peers`` measures next to ours: install and start them.

Their code is installed from the registries into ``var/peers/`` (git-ignored), never committed::

    .venv/bin/python bench/peers.py install              # every peer, and the gateway's production runtime
    .venv/bin/python bench/peers.py install portkey      # or one of them (``gateway``: the runtime)
    .venv/bin/python bench/peers.py status

* **The gateway's production runtime** into ``var/peers/gateway-venv``: the project's runtime
  dependencies only, as ``docs/production.md`` installs them (``pip install -c constraints.txt``,
  no ``dev`` extra), so the gateway is measured as it runs in production. The development venv also
  holds test and audit tools that libraries import when they find them (httpx its command-line
  client with rich, redis-py the OpenTelemetry SDK): about 6 MB more per process. The project's
  own code is not installed there; the gateway runs it from this checkout.

* **Portkey** (npm ``@portkey-ai/gateway@1.15.2``) into ``var/peers/portkey``, with
  ``@hono/node-server`` held at 1.14.1 through an npm ``overrides`` entry. A plain
  ``npm install @portkey-ai/gateway@1.15.2 @hono/node-server@1.14.1`` is not enough: the gateway
  then gets its own nested ``@hono/node-server`` 1.19.x (``@hono/node-ws`` asks for ``^1.19.11``),
  and on that version every streamed chat completion fails with ``TypeError: immutable``
  (seen on this machine, Node 20). Started as the package's ``build/start-server.js --port=N
  --headless`` with ``NODE_ENV=production`` (no console UI, no live log stream). Requests name the
  upstream per request: ``x-portkey-provider: openai`` and ``x-portkey-custom-host:
  http://127.0.0.1:PORT/v1`` (loopback is on its default ``TRUSTED_CUSTOM_HOSTS`` list), with the
  upstream's key in ``Authorization``, which it forwards. It has no keys of its own.
* **LiteLLM** (pip ``litellm[proxy]==1.106.12``) into its own venv ``var/peers/litellm-venv``
  (``python3.11 -m venv``). Started as ``litellm --config CFG --host 127.0.0.1 --port P
  --num_workers 1`` with one ``model_list`` entry (``gpt-4o-mini`` -> ``openai/gpt-4o-mini``,
  ``api_base`` the fake's ``/v1``), a random master key (it refuses to start without one) and no
  database; ``LITELLM_LOCAL_MODEL_COST_MAP=True`` so it does not fetch its price list from GitHub
  at start-up. Otherwise its default settings.
* **The floor** (``bench/floor.py``, nothing to install): a bare aiohttp relay served with the
  gateway's own command line on the gateway's runtime: what the extra hop alone adds.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = ROOT / "var" / "peers"
PORTKEY_DIR = PEERS_DIR / "portkey"
LITELLM_VENV = PEERS_DIR / "litellm-venv"
GATEWAY_VENV = PEERS_DIR / "gateway-venv"
PORTKEY_VERSION = "1.15.2"
HONO_NODE_SERVER_VERSION = "1.14.1"
LITELLM_VERSION = "1.106.12"
INSTALL_COMMAND = "python bench/peers.py install"
# Never handed to a peer: it would pick up a developer's database or Redis (LiteLLM reads DATABASE_URL).
SCRUBBED_ENV = ("DATABASE_URL", "REDIS_URL", "REDIS_HOST", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND",
                "LITELLM_MASTER_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL", "NODE_OPTIONS")  # fmt: skip


@dataclass
class PeerLaunch:
    """How to start one peer and how to talk to it."""

    command: list[str]
    env: dict[str, str]
    # Sent with every request (hey's -H), Authorization included.
    headers: dict[str, str]
    ready_path: str
    startup_timeout: float = 60.0
    cwd: Path | None = None


@dataclass(frozen=True)
class Peer:
    """One peer gateway: its name, how to install it, where it is, how to launch it."""

    name: str
    label: str
    install: Callable[[], None]
    version: Callable[[], str | None]
    launch: Callable[[int, str, str, Path], PeerLaunch]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, check=True, env=_env())


# --- Portkey ---------------------------------------------------------------------------------------


def _portkey_package() -> Path:
    return PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway"


def _node_server_versions() -> set[str]:
    """The versions of every ``@hono/node-server`` under Portkey's node_modules (nested ones too)."""
    found = set()
    for manifest in (PORTKEY_DIR / "node_modules").rglob("@hono/node-server/package.json"):
        try:
            found.add(str(json.loads(manifest.read_text())["version"]))
        except (OSError, ValueError, KeyError):
            found.add("?")
    return found


def portkey_install() -> None:
    """``npm install`` the pinned gateway with ``@hono/node-server`` overridden to 1.14.1 everywhere."""
    if shutil.which("npm") is None:
        raise SystemExit("npm is not installed (apt-get install npm)")
    PORTKEY_DIR.mkdir(parents=True, exist_ok=True)
    manifest = {
        "private": True,
        "description": "Installed by bench/peers.py for bench/gateway.py --peers; not part of the project.",
        "dependencies": {
            "@portkey-ai/gateway": PORTKEY_VERSION,
            "@hono/node-server": HONO_NODE_SERVER_VERSION,
        },
        "overrides": {"@hono/node-server": HONO_NODE_SERVER_VERSION},
    }
    (PORTKEY_DIR / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
    npm = ["npm", "install", "--prefix", str(PORTKEY_DIR), "--no-audit", "--no-fund"]
    _run(npm)
    if _node_server_versions() != {HONO_NODE_SERVER_VERSION}:
        # A lock file from an earlier plain install keeps the nested 1.19.x: start over.
        shutil.rmtree(PORTKEY_DIR / "node_modules", ignore_errors=True)
        (PORTKEY_DIR / "package-lock.json").unlink(missing_ok=True)
        _run(npm)
    versions = _node_server_versions()
    if versions != {HONO_NODE_SERVER_VERSION}:
        raise SystemExit(
            f"@hono/node-server versions installed: {sorted(versions)}, wanted only {HONO_NODE_SERVER_VERSION}"
        )


def portkey_version() -> str | None:
    """``1.15.2 (@hono/node-server 1.14.1)`` when installed, else None."""
    try:
        version = json.loads((_portkey_package() / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    return f"{version} (@hono/node-server {', '.join(sorted(_node_server_versions()))})"


def portkey_launch(port: int, upstream_v1: str, upstream_key: str, tmp: Path) -> PeerLaunch:
    """Portkey's Node server, headless, on ``port``; the upstream is named by request headers."""
    node = shutil.which("node") or "node"
    env = {**_env(), "NODE_ENV": "production"}
    return PeerLaunch(
        command=[node, str(_portkey_package() / "build" / "start-server.js"), f"--port={port}", "--headless"],
        env=env,
        headers={
            "Authorization": f"Bearer {upstream_key}",
            "x-portkey-provider": "openai",
            "x-portkey-custom-host": upstream_v1,
        },
        ready_path="/",
        cwd=PORTKEY_DIR,
    )


# --- LiteLLM ---------------------------------------------------------------------------------------


def _python311() -> str:
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    found = shutil.which("python3.11")
    if found is None:
        raise SystemExit("python3.11 is not on PATH")
    return found


def gateway_runtime_install() -> None:
    """A venv with the project's runtime dependencies at the versions of ``constraints.txt``."""
    if not (GATEWAY_VENV / "bin" / "pip").exists():
        _run([_python311(), "-m", "venv", str(GATEWAY_VENV)])
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    _run([str(GATEWAY_VENV / "bin" / "pip"), "install", "-q", "-c", str(ROOT / "constraints.txt"), *deps])
    (GATEWAY_VENV / "installed-from").write_text(_runtime_requirements())


def _runtime_requirements() -> str:
    """The project's runtime dependencies (pyproject.toml) and the pins they are installed at."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return "\n".join([*deps, "# constraints.txt", (ROOT / "constraints.txt").read_text()])


def gateway_runtime_python() -> Path | None:
    """The production runtime's interpreter, when it is installed and its dependencies are current."""
    python = GATEWAY_VENV / "bin" / "python"
    stamp = GATEWAY_VENV / "installed-from"
    if not python.exists() or not stamp.exists():
        return None
    return python if stamp.read_text() == _runtime_requirements() else None


def litellm_install() -> None:
    """A venv of its own with ``litellm[proxy]`` pinned."""
    if not (LITELLM_VENV / "bin" / "pip").exists():
        _run([_python311(), "-m", "venv", str(LITELLM_VENV)])
    _run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"])


def litellm_version() -> str | None:
    """The installed litellm version in the peer venv, else None."""
    if not (LITELLM_VENV / "bin" / "litellm").exists():
        return None
    for dist in (LITELLM_VENV / "lib").glob("python*/site-packages/litellm-*.dist-info"):
        return dist.name.removeprefix("litellm-").removesuffix(".dist-info")
    return None


def litellm_config(upstream_v1: str, upstream_key: str, master_key: str) -> str:
    """LiteLLM's config: one model on the fake, a master key, no database."""
    return f"""\
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {upstream_v1}
      api_key: {upstream_key}
general_settings:
  master_key: {master_key}
"""


def litellm_launch(port: int, upstream_v1: str, upstream_key: str, tmp: Path) -> PeerLaunch:
    """``litellm --config CFG --num_workers 1`` on loopback, a fresh random master key."""
    master_key = "sk-" + secrets.token_hex(32)
    workdir = tmp / "litellm"
    workdir.mkdir(exist_ok=True)
    config = workdir / "litellm.yaml"
    config.write_text(litellm_config(upstream_v1, upstream_key, master_key))
    config.chmod(0o600)
    env = {**_env(), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    return PeerLaunch(
        command=[
            str(LITELLM_VENV / "bin" / "litellm"),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],  # fmt: skip
        env=env,
        headers={"Authorization": f"Bearer {master_key}"},
        ready_path="/health/liveliness",
        startup_timeout=120.0,
        cwd=workdir,
    )


# --- the floor: a bare relay ---------------------------------------------------------------------


def floor_version() -> str:
    """Nothing to install: ``bench/floor.py`` of this checkout on the gateway's runtime."""
    return "bench/floor.py"


def floor_launch(port: int, upstream_v1: str, upstream_key: str, tmp: Path) -> PeerLaunch:
    """``bench/floor.py`` served with the gateway's own uvicorn settings, on its interpreter."""
    from config.management.commands.serve import server_command

    python = gateway_runtime_python() or Path(sys.executable)
    _, *args = server_command("uvicorn", "127.0.0.1", port, 1)  # the gateway's own command line
    return PeerLaunch(
        command=[str(python), *("bench.floor:app" if a == "config.asgi:application" else a for a in args)],
        env={**_env(), "FLOOR_UPSTREAM": upstream_v1, "PYTHONPATH": str(ROOT)},
        headers={"Authorization": f"Bearer {upstream_key}"},
        ready_path="/livez",
        cwd=ROOT,
    )


PEERS: dict[str, Peer] = {
    "floor": Peer("floor", "bare relay (bench/floor.py)", lambda: None, floor_version, floor_launch),
    "portkey": Peer(
        "portkey", f"Portkey {PORTKEY_VERSION}", portkey_install, portkey_version, portkey_launch
    ),
    "litellm": Peer(
        "litellm", f"LiteLLM {LITELLM_VERSION}", litellm_install, litellm_version, litellm_launch
    ),
}


def parse_peers(text: str) -> list[str]:
    """``""`` -> none, ``all`` -> every peer, else a comma-separated list of known names."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(PEERS)
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise ValueError(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(PEERS)}, all")
    return list(dict.fromkeys(names))


def main(argv: list[str] | None = None) -> int:
    """``install [NAME...]`` or ``status``."""
    parser = argparse.ArgumentParser(description="Install the peer gateways for bench/gateway.py --peers.")
    sub = parser.add_subparsers(dest="action", required=True)
    install = sub.add_parser("install", help="install the peers into var/peers/ (git-ignored)")
    install.add_argument(
        "names", nargs="*", help=f"what to install (default: gateway, the runtime, and {', '.join(PEERS)})"
    )
    sub.add_parser("status", help="print what is installed")
    args = parser.parse_args(argv)
    if args.action == "install":
        runtime = not args.names or "gateway" in args.names
        others = [name for name in args.names if name != "gateway"]
        try:
            names = parse_peers(",".join(others) or ("all" if not args.names else ""))
        except ValueError as exc:
            parser.error(str(exc))
        if runtime:
            print("installing the gateway's production runtime ...", flush=True)
            gateway_runtime_install()
        for name in names:
            print(f"installing {PEERS[name].label} ...", flush=True)
            PEERS[name].install()
    runtime_python = gateway_runtime_python()
    print(
        f"{'gateway':8} {'production runtime in ' + str(GATEWAY_VENV) if runtime_python else 'not installed'}"
    )
    for peer in PEERS.values():
        print(f"{peer.name:8} {peer.version() or 'not installed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
