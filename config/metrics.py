"""Prometheus metrics: recorded in microseconds on the hot path, exposed at /metrics.

Several web processes: prometheus_client's multiprocess mode. When ``PROMETHEUS_MULTIPROC_DIR`` is
set (``manage.py serve`` sets it to ``DATA_DIR/prometheus`` and empties it at start), every process
writes its samples to memory-mapped files there and a scrape of any process adds them all up.
Without it, a scrape shows the one process that answers it.

Recording writes to process memory (or the mmap), takes only prometheus_client's short lock and
never awaits, does no I/O and no SQL. Scraping is not the hot path: it reads the files and asks
the database for the transcription queue and for names (groups, deployments).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from config import lifespan

logger = logging.getLogger(__name__)

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
NONE = "-"  # the label value of "not known" (no provider reached, no group)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)
CIRCUIT_VALUES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}

REQUESTS = Counter(
    "llmc_gateway_requests", "Gateway requests.", ["endpoint", "model", "provider", "status_class"]
)
LATENCY = Histogram(
    "llmc_gateway_request_duration_seconds",
    "Time from the request's arrival to the end of its response.",
    ["endpoint", "model", "provider"],
    buckets=LATENCY_BUCKETS,
)
TTFT = Histogram(
    "llmc_gateway_time_to_first_token_seconds",
    "Streamed requests: time from the request's arrival to the first content sent to the client.",
    ["endpoint", "model", "provider"],
    buckets=TTFT_BUCKETS,
)
# `group` is recorded as the group's id and exported as its name (see _relabel_groups). A request
# of a member of several groups is split between them, as the chargeback report does, so a sum over
# groups is the total.
TOKENS = Counter("llmc_gateway_tokens", "Tokens used.", ["model", "provider", "group", "type"])
COST = Counter(
    "llmc_gateway_cost_usd", "Cost in US dollars at the catalogue's prices.", ["model", "provider", "group"]
)
QUOTA_REFUSALS = Counter("llmc_quota_refusals", "Requests refused by a quota rule.", ["code"])
UPSTREAM_ERRORS = Counter(
    "llmc_gateway_upstream_errors", "Failed upstream attempts (each retry counts).", ["provider", "kind"]
)
# The worst state any live process of this host sees (breakers are per process).
CIRCUIT = Gauge(
    "llmc_gateway_circuit_state",
    "Circuit breaker of a deployment: 0 closed, 1 half open, 2 open.",
    ["deployment", "model", "provider"],
    multiprocess_mode="livemax",
)
RTF = Histogram(
    "llmc_transcription_real_time_factor",
    "Completed transcription jobs: processing seconds per audio second.",
    ["model"],
    buckets=RTF_BUCKETS,
)

# `.labels()` validates and locks on every call; a dict lookup is a tenth of that.
_children: dict[tuple[Any, ...], Any] = {}
_circuits: dict[int, str] = {}


def _child(metric: Any, *labels: str) -> Any:
    key = (id(metric), *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def _status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "5xx"


def call_finished(call: Any, event: dict[str, Any]) -> None:
    """Record one gateway call from its usage event (``call`` is the `gateway.proxy.Call`)."""
    # The model label only ever names a catalogue model: the raw request value is unbounded.
    model = event["model"] if (call.served_model or call.model) is not None else NONE
    endpoint, provider = event["endpoint"], event["provider"] or NONE
    _child(REQUESTS, endpoint, model, provider, _status_class(event["status"])).inc()
    if event["error_kind"] == "upstream_stream_broken":  # after the first byte: no breaker saw it
        _child(UPSTREAM_ERRORS, provider, "stream_broken").inc()
    _child(LATENCY, endpoint, model, provider).observe(event["latency_ms"] / 1000)
    if event["streamed"] and event["ttft_ms"] is not None:
        _child(TTFT, endpoint, model, provider).observe(event["ttft_ms"] / 1000)
    prompt, completion, cost = event["prompt_tokens"], event["completion_tokens"], float(event["cost_usd"])
    if not (prompt or completion or cost):
        return
    groups = event["group_ids"] or (NONE,)
    share = 1.0 / len(groups)
    for group in groups:
        label = str(group)
        if prompt:
            _child(TOKENS, model, provider, label, "prompt").inc(prompt * share)
        if completion:
            _child(TOKENS, model, provider, label, "completion").inc(completion * share)
        if cost:
            _child(COST, model, provider, label).inc(cost * share)


def request_refused(path: str, status: int) -> None:
    """Record a request refused before it became a call (no usage event: bad key, route, body)."""
    _child(REQUESTS, _endpoint_of(path), NONE, NONE, _status_class(status)).inc()


def _endpoint_of(path: str) -> str:
    """A bounded endpoint label for a raw path (any client can send any path)."""
    from gateway.asgi import AZURE_ROUTE, GEMINI_ROUTE, MODEL_ROUTE, PROXY_ENDPOINTS

    if path.startswith("/v1/") and (path[4:] in PROXY_ENDPOINTS or path[4:] == "models"):
        return path[4:]
    if MODEL_ROUTE.match(path):
        return "models"
    if path == "/anthropic/v1/messages":
        return "anthropic/messages"
    if GEMINI_ROUTE.match(path):
        return "gemini"
    match = AZURE_ROUTE.match(path)
    return str(match["endpoint"]) if match else "unknown"


def upstream_attempt(dep: Any, state: str, kind: str = "") -> None:
    """Record one upstream attempt on ``dep``: its error kind (empty on success), its breaker's state."""
    if kind:
        _child(UPSTREAM_ERRORS, dep.provider.name, kind).inc()
    if _circuits.get(dep.id) != state:  # the mmap is written on changes only
        _circuits[dep.id] = state
        _child(CIRCUIT, dep.name, dep.model_name, dep.provider.name).set(CIRCUIT_VALUES.get(state, 0.0))


def quota_refused(code: str) -> None:
    """Record one request refused by a quota rule (`rate_limit_exceeded`, `quota_exceeded`, …)."""
    _child(QUOTA_REFUSALS, code).inc()


def transcription_finished(*, job: Any, audio_seconds: float) -> None:
    """Record the real-time factor of a completed job: seconds since its attempt started per audio second."""
    if job.started_at is None or audio_seconds <= 0:
        return
    processing = max(time.time() - job.started_at.timestamp(), 0.0)
    _child(RTF, job.model).observe(processing / audio_seconds)


async def _process_exit() -> None:
    # Live gauges (circuit states) of a stopped process must not outlive it; counters stay.
    if MULTIPROC_DIR:
        mark_process_dead(os.getpid(), MULTIPROC_DIR)


lifespan.on_shutdown(_process_exit)


# --- scraping -------------------------------------------------------------------------------------


class _Source:
    """What this host's processes recorded: every process's files, or this process's registry."""

    def collect(self) -> Iterable[Metric]:
        if MULTIPROC_DIR:
            return MultiProcessCollector(None, MULTIPROC_DIR).collect()
        return REGISTRY.collect()


class _ScrapeCollector:
    """Recorded metrics with readable labels, plus what only the database knows."""

    def collect(self) -> Iterator[Metric]:
        from django.contrib.auth.models import Group

        from gateway.models import Deployment
        from transcription.models import JobStatus, TranscriptionJob

        groups = {str(pk): name for pk, name in Group.objects.values_list("pk", "name")}
        circuit: Metric | None = None
        for metric in _Source().collect():
            if metric.name in ("llmc_gateway_tokens", "llmc_gateway_cost_usd"):
                for i, s in enumerate(metric.samples):
                    group = s.labels.get("group", NONE)
                    metric.samples[i] = s._replace(labels={**s.labels, "group": groups.get(group, group)})
            if metric.name == "llmc_gateway_circuit_state":
                circuit = metric
                continue
            yield metric
        # Deployments no process has tried yet are closed: every enabled one gets a series.
        if circuit is None:
            circuit = GaugeMetricFamily("llmc_gateway_circuit_state", CIRCUIT._documentation,
                                        labels=["deployment", "model", "provider"])  # fmt: skip
        seen = {(s.labels["deployment"], s.labels["model"]) for s in circuit.samples}
        rows = Deployment.objects.filter(enabled=True).values_list(
            "provider__name", "provider_model", "model__name"
        )
        for provider, provider_model, model in rows:
            name = f"{provider}/{provider_model}"
            if (name, model) not in seen:
                labels = {"deployment": name, "model": model, "provider": provider}
                circuit.add_sample("llmc_gateway_circuit_state", labels, 0.0)
        yield circuit
        jobs = GaugeMetricFamily(
            "llmc_transcription_jobs", "Transcription jobs waiting or running.", labels=["status"]
        )
        counts: dict[str, int] = dict.fromkeys((str(JobStatus.QUEUED), str(JobStatus.RUNNING)), 0)
        for row in TranscriptionJob.objects.active().values("status").order_by().annotate(n=_count()):
            counts[str(row["status"])] = int(row["n"])
        for status, n in counts.items():
            jobs.add_metric([status], float(n))
        yield jobs


def _count() -> Any:
    from django.db.models import Count

    return Count("pk")


def _client_allowed(address: str) -> bool:
    networks = settings.METRICS_ALLOWED_NETWORKS
    if not networks:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(net, strict=False) for net in networks)


def _refusal(request: HttpRequest) -> HttpResponse | None:
    """None when the scraper may read the metrics; otherwise the 401/403 to answer (no data)."""
    token = settings.METRICS_TOKEN
    if not token and not settings.METRICS_ALLOWED_NETWORKS:
        # Neither protection configured: refuse rather than publish to the world by accident.
        return HttpResponse("Metrics are disabled.\n", status=403, content_type="text/plain")
    if not _client_allowed(str(request.META.get("REMOTE_ADDR") or "")):
        return HttpResponse("Forbidden.\n", status=403, content_type="text/plain")
    if token:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
            response = HttpResponse("Unauthorized.\n", status=401, content_type="text/plain")
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    return None


def metrics_view(request: HttpRequest) -> HttpResponse:
    """GET /metrics: the Prometheus text exposition, to allowed networks and the token's bearer."""
    refused = _refusal(request)
    if refused is not None:
        return refused
    if request.method not in ("GET", "HEAD"):
        return HttpResponse(status=405, headers={"Allow": "GET, HEAD"})
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ScrapeCollector())
    try:
        body = generate_latest(registry)
    except Exception:
        logger.exception("metrics scrape failed")
        return HttpResponse("Metrics are unavailable right now.\n", status=503, content_type="text/plain")
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
