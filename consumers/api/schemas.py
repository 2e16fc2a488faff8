"""The API's response bodies (msgspec structs) and its OpenAPI 3.1 document. Pure."""

from __future__ import annotations

from typing import Any, Final, NamedTuple

import msgspec

from consumers.access.decide import REASONS, Decision
from consumers.audit.history import HistoryRow
from consumers.nodes.findings import Diagnosis
from consumers.status.model import FleetStatus, HostInfo, Issue, Problem, StageInfo
from shared.events import LogEntry, Retracted
from shared.reasons import MEANINGS


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every 4xx/5xx answer."""

    error: str
    #: The query parameter at fault, for a 400.
    param: str | None = None


class Health(msgspec.Struct, omit_defaults=True):
    """This process: ``ok``, or ``failing`` with the reason in one line."""

    status: str
    reason: str = ""


class Ready(msgspec.Struct, kw_only=True):
    """Ready when nothing is wrong with the pipeline (``problems`` empty; see ``wgchain status``)."""

    ready: bool
    redis: bool
    max_lag: int
    stages: list[StageInfo] = []
    #: The problems, one per line ("" when ready).
    detail: str = ""
    problems: list[Problem] = []
    #: ``ok``, ``warning`` or ``critical``.
    health: str = "ok"


class NodeSummary(msgspec.Struct, kw_only=True):
    """A node as the registry and the address pool see it."""

    node: str
    #: An active token names the node.
    member: bool
    #: It is a member with a valid key that won every conflict: it has a WireGuard peer.
    live: bool
    #: Why it is not live: ``no-key``, ``invalid-key``, ``key-conflict``, ``revoked`` ("" if
    #: live; every reason is in the README's table).
    reason: str
    token_id: int | None = None
    owner: str | None = None
    #: The member's key when it is a valid WireGuard key (None otherwise).
    public_key: str | None = None
    ipv4: str | None = None
    ipv6: str | None = None
    #: Its host: ``online``, ``stale`` (silent for over 3 reconcile intervals), ``silent``
    #: (announced, never reported) or ``absent`` (None: not looked at).
    host_state: str | None = None
    #: Unix time its pass expires (ERC-5643; None: never). Past it (plus
    #: ``WGCHAIN_EXPIRY_GRACE``) the node is not live: ``expired``.
    expires: int | None = None


class NodeList(msgspec.Struct, kw_only=True):
    nodes: list[NodeSummary]
    #: Pass as ``after`` for the next page (None: this was the last page).
    next: str | None = None
    #: Registry stage position the list reflects.
    position: str


class NodeDetail(NodeSummary, kw_only=True):
    #: Block of the ``NodeJoined`` that made the node live (None when not live).
    since_block: int | None = None
    #: The endpoint its host announced.
    endpoint: str | None = None
    #: Its agent's status (None: no agent reported for this node).
    host: HostInfo | None = None
    position: str


class HostList(msgspec.Struct):
    hosts: list[HostInfo]


class IssueList(msgspec.Struct):
    """The current conflicts, anomalies and pending allocations, each with its cause."""

    issues: list[Issue]


class EventItem(msgspec.Struct, kw_only=True):
    """One ``events`` entry (``error`` instead when it does not decode)."""

    id: str
    entry: LogEntry | Retracted | None = None
    error: str = ""


class EventsPage(msgspec.Struct, kw_only=True):
    entries: list[EventItem]
    #: Pass as ``after`` for the next page (None: the log has no more entries now).
    next: str | None = None


class NodeHistory(msgspec.Struct, kw_only=True):
    """A node's story, folded from the log with the registry fold."""

    node: str
    #: The newest ``limit`` rows, oldest first.
    rows: list[HistoryRow]
    #: Rows in the whole timeline (more than ``rows`` when it was cut).
    total: int
    #: ``events`` entries folded.
    events: int


class TopologyMember(msgspec.Struct, kw_only=True):
    node: str
    ipv4: str | None = None
    ipv6: str | None = None
    hub: bool = False


class Topology(msgspec.Struct, kw_only=True):
    """Who peers with whom, as the API's ``WGCHAIN_TOPOLOGY`` and ``WGCHAIN_HUBS`` say."""

    #: ``mesh`` or ``hub``.
    topology: str
    #: Configured hubs, in order of preference.
    hubs: list[str]
    #: Configured hubs that are live members.
    live_hubs: list[str]
    #: Live members (those with a WireGuard peer).
    live: int
    #: Tunnels (pairs of peers) among the live members.
    tunnels: int
    #: Largest number of live members drawn; beyond it ``members`` is empty.
    draw_limit: int
    #: The live members with their addresses, by node id (empty beyond ``draw_limit``).
    members: list[TopologyMember] = []
    #: Registry stage position the picture reflects.
    position: str = ""


_REF: Final = "#/components/schemas/{name}"
_STRUCTS: Final = (
    Decision,
    NodeList,
    NodeDetail,
    HostList,
    IssueList,
    EventsPage,
    Health,
    Ready,
    ErrorBody,
    FleetStatus,
    NodeHistory,
    Topology,
    Diagnosis,
)


def _json(ref: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref}}}


def _param(
    name: str, description: str, schema: dict[str, Any], required: bool = False
) -> dict[str, Any]:
    where = "path" if name == "node" and required else "query"
    return {
        "name": name,
        "in": where,
        "required": required,
        "description": description,
        "schema": schema,
    }


class _Read(NamedTuple):
    """One ``/v1`` read of the OpenAPI document."""

    summary: str
    #: The response struct (a name of :data:`_STRUCTS`) and what its 200 answer is.
    struct: str
    answer: str
    params: tuple[dict[str, Any], ...] = ()
    #: 404 for a node no token ever named.
    named: bool = False


#: The node id, in the query (``/v1/access``) and in the path.
_NODE_Q: Final = {
    **_param("node", "node id", {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}),
    "required": True,
}
_NODE_P: Final = _param("node", "node id", {"type": "string"}, required=True)
_LIMIT: Final = {"type": "integer", "minimum": 1, "maximum": 10000}
#: Every ``/v1`` read, in the document's order.
_READS: Final = {
    "/v1/access": _Read(
        "Access check: may KEY (or does ADDRESS) reach NODE? 200 with granted true/false.",
        "Decision",
        "the decision and its reason",
        (
            _NODE_Q,
            _param("key", "WireGuard public key (give key or address)", {"type": "string"}),
            _param("address", "0x address (give key or address)", {"type": "string"}),
            _param("at_block", "answer for this past block", {"type": "integer", "minimum": 0}),
            _param(
                "consistency",
                "bounded (default): answered from the in-process copy, which reflects "
                "every registry commit made 50 ms or more before; strict: never behind "
                "the registry stage's last commit (one shared Redis round trip)",
                {"type": "string", "enum": ["bounded", "strict"], "default": "bounded"},
            ),
        ),
    ),
    "/v1/nodes": _Read(
        "Every node a token ever named, by id, in pages, with its host's state; the "
        "filters of `wgchain nodes`.",
        "NodeList",
        "a page of nodes",
        (
            _param("after", "node id to start after", {"type": "string"}),
            _param("limit", "page size", _LIMIT),
            _param("live", "true: live members only; false: the others", {"type": "boolean"}),
            _param("host_offline", "true: nodes whose host is not online", {"type": "boolean"}),
            _param("owner", "tokens of this 0x address only", {"type": "string"}),
            _param(
                "search",
                "text in the node id, address, key, owner or reason",
                {"type": "string", "maxLength": 100},
            ),
        ),
    ),
    "/v1/nodes/{node}": _Read(
        "One node: membership, key, address, owner, token, since-block, host status.",
        "NodeDetail",
        "the node",
        (_NODE_P,),
        named=True,
    ),
    "/v1/hosts": _Read(
        "Every agent: applied position, lag, last apply, last error, endpoint.",
        "HostList",
        "the hosts",
    ),
    "/v1/issues": _Read(
        "The current conflicts, anomalies and pending allocations, each with its cause.",
        "IssueList",
        "the issues",
    ),
    "/v1/events": _Read(
        "The events log, in pages.",
        "EventsPage",
        "a page of entries",
        (
            _param("after", "stream id to start after (0-0: the start)", {"type": "string"}),
            _param("limit", "page size", {"type": "integer", "minimum": 1, "maximum": 1000}),
        ),
    ),
    "/v1/status": _Read(
        "The fleet: listener, stages, every host's convergence, the current issues and the "
        "problems, as `wgchain status --json` prints it.",
        "FleetStatus",
        "the status snapshot",
    ),
    "/v1/topology": _Read(
        "Live members and hubs, and the tunnels between them.", "Topology", "the topology"
    ),
    "/v1/nodes/{node}/history": _Read(
        "A node's story: every log entry that concerns it, with the resulting state.",
        "NodeHistory",
        "the timeline",
        (_NODE_P, _param("limit", "newest rows", _LIMIT)),
        named=True,
    ),
    "/v1/nodes/{node}/diagnosis": _Read(
        "Why can't NODE connect? `wgchain diagnose NODE --json` (without the local tunnel): "
        "findings from the registry, the pipeline, its host and the hosts that should carry "
        "it, and a verdict with the next thing to look at.",
        "Diagnosis",
        "the diagnosis",
        (_NODE_P,),
    ),
}


def openapi(version: str, auth: bool) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API (schemas generated from the response structs)."""
    refs, components = msgspec.json.schema_components(_STRUCTS, ref_template=_REF)
    ref = dict(zip((s.__name__ for s in _STRUCTS), refs, strict=True))
    error = ref["ErrorBody"]
    bad = {"400": _json(error, "invalid parameter")}
    denied = {"401": _json(error, "missing or wrong bearer token")} if auth else {}
    unavailable = {"503": _json(error, "Redis unreachable, or no data for this network")}
    not_named = {"404": _json(error, "no token ever named this node")}

    def get(
        summary: str, ok: dict[str, Any], params: list[dict[str, Any]] | None = None, /, **more: Any
    ) -> dict[str, Any]:
        op: dict[str, Any] = {"summary": summary, "responses": {"200": ok, **more, **denied}}
        if params:
            op["parameters"] = params
        return {"get": op}

    def read(r: _Read) -> dict[str, Any]:
        """A ``/v1`` read: 400 for a bad parameter (when it takes any), 404 for a node no
        token ever named (``named``), 503 while Redis is down or holds no data."""
        more = {**(bad if r.params else {}), **(not_named if r.named else {}), **unavailable}
        return get(r.summary, _json(ref[r.struct], r.answer), list(r.params), **more)

    def probe(summary: str, struct: str, up: str, down: str) -> dict[str, Any]:
        """A probe: 200 or 503 with the same body."""
        answers = {"200": _json(ref[struct], up), "503": _json(ref[struct], down)}
        return {"get": {"summary": summary, "responses": answers}}

    paths = {path: read(r) for path, r in _READS.items()}
    paths |= {
        "/healthz": probe(
            "This process works: Redis answers it and its registry follower runs.",
            "Health",
            "working",
            "failing, with the reason",
        ),
        "/readyz": probe(
            "Nothing wrong with the pipeline: the problems `wgchain status` names.",
            "Ready",
            "ready",
            "not ready",
        ),
        "/metrics": get(
            "Prometheus metrics of this process.",
            {
                "description": "text exposition",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
        ),
        "/openapi.json": get(
            "This document.", {"description": "OpenAPI 3.1", "content": {"application/json": {}}}
        ),
    }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "wgchain",
            "version": version,
            "description": "Reads of the wgchain pipeline. Access reasons: "
            + ", ".join(REASONS)
            + ". Every code, with its meaning: "
            + "; ".join(f"{code}: {text}" for code, text in MEANINGS.items())
            + ".",
        },
        "paths": paths,
        "components": {"schemas": components},
    }
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
        for path in ("/healthz", "/readyz"):
            paths[path]["get"]["security"] = []
    return doc
