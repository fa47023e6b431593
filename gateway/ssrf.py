"""Server-side request forgery guards: clients never choose the upstream, admins only a public one.

Two halves:

- ``check_body`` refuses a request body that names an upstream (``base_url``, ``api_base``,
  ``azure_endpoint``, ``proxy``…) anywhere, at any depth. The gateway never reads such a key, but
  proxies downstream of it (or a future adapter) might: a key like these is never legitimate in
  an OpenAI, Anthropic or Gemini request, so it is refused outright. Plain ``url`` (image and file
  content parts, citations) and ``server_url`` (the Responses API's MCP tool, called by the
  provider, not by us) stay allowed, and so does anything inside a JSON Schema (tool
  ``parameters``, ``response_format`` schemas): those are the caller's own property names.
- ``upstream_problem`` checks an admin-set provider URL: http(s) only, no credentials in it, and
  every address its host resolves to outside loopback, link-local (the cloud metadata service
  169.254.169.254), private, unspecified, multicast and reserved ranges, unless the address is in
  ``GATEWAY_UPSTREAM_ALLOWED_NETWORKS``. Provider.clean(), gateway_sync and the catalogue snapshot
  (where DNS rebinding after the save is caught) call it; the hot path never resolves names.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from gateway.errors import GatewayError

# Normalised (lower case, without `_` and `-`) so `base_url`, `baseURL` and `Base-Url` all match.
FORBIDDEN_KEYS = frozenset(
    {
        "baseurl", "baseuri", "basepath", "apibase", "apibaseurl", "apiurl", "apihost", "apiendpoint",
        "endpoint", "endpointurl", "azureendpoint", "azureadendpoint", "upstream", "upstreamurl",
        "proxy", "proxies", "proxyurl", "httpproxy", "httpsproxy", "apikey",
    }
)  # fmt: skip
# JSON Schema subtrees: property names there are the caller's own data, never a gateway option.
SCHEMA_KEYS = frozenset(
    {"parameters", "schema", "inputschema", "responseschema", "parametersjsonschema", "responsejsonschema"}
)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _normalise(key: str) -> str:
    return key.lower().replace("_", "").replace("-", "")


def check_body(body: dict[str, Any]) -> None:
    """Raise a 400 ``forbidden_parameter`` if ``body`` names an upstream anywhere in it.

    An iterative walk over objects and arrays that stops at the first forbidden key; strings and
    numbers are never looked into, so its cost is the number of keys, not the size of the body.
    """
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(body, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str):
                    continue
                name = _normalise(key)
                if name in FORBIDDEN_KEYS:
                    param = _path((*path, key))
                    raise GatewayError(
                        400,
                        f"The parameter `{param[:200]}` is not accepted: the gateway chooses the upstream.",
                        code="forbidden_parameter",
                        param=param[:200],
                    )
                if name in SCHEMA_KEYS or not isinstance(value, dict | list):
                    continue
                stack.append((value, (*path, key)))
        else:
            for i, item in enumerate(node):
                if isinstance(item, dict | list):
                    stack.append((item, (*path, i)))


def _path(parts: tuple[str | int, ...]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


# --- admin-set provider URLs -------------------------------------------------------------------


@functools.cache
def _networks(spec: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in spec if item.strip())


def allowed_networks() -> tuple[Network, ...]:
    """GATEWAY_UPSTREAM_ALLOWED_NETWORKS, parsed (a list or a comma-separated string)."""
    value = settings.GATEWAY_UPSTREAM_ALLOWED_NETWORKS
    items = value.split(",") if isinstance(value, str) else value
    return _networks(tuple(str(item) for item in items))


def _refused_range(ip: Address) -> str | None:
    """Why ``ip`` is not a public address, or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    return None


def address_problem(ip: Address, networks: tuple[Network, ...] | None = None) -> str | None:
    """Why the gateway may not call ``ip``, or None when it may."""
    reason = _refused_range(ip)
    if reason is None:
        return None
    nets = allowed_networks() if networks is None else networks
    candidates = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        candidates.append(ip.ipv4_mapped)
    if any(c.version == net.version and c in net for c in candidates for net in nets):
        return None
    return f"{ip} is a {reason} address (allow it with GATEWAY_UPSTREAM_ALLOWED_NETWORKS)"


def resolve(host: str, port: int) -> list[Address]:
    """Every address ``host`` resolves to (an IP literal is itself). Raises OSError when it does not."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def upstream_problem(url: str) -> str | None:
    """Why a provider may not have ``url`` as its base URL, or None when it may.

    A host name that does not resolve now is accepted (it may only resolve inside the production
    network, and a call to it cannot reach anything until it does); the catalogue snapshot checks
    again at every load.
    """
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "must not carry credentials (set the provider's API key instead)"
    host = (parts.hostname or "").rstrip(".")
    if not host:
        return "has no host"
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError):
        return None
    networks = allowed_networks()
    for ip in addresses:
        problem = address_problem(ip, networks)
        if problem is not None:
            return f"resolves to {problem}" if str(ip) != host.strip("[]") else problem
    return None
