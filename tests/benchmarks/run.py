"""Run wgchain's benchmarks, each against its baseline in the same run; print a table, write JSON.

    .venv/bin/python tests/benchmarks/run.py                 # defaults (under 5 minutes)
    .venv/bin/python tests/benchmarks/run.py --only B2,B4    # some of them
    .venv/bin/python tests/benchmarks/run.py --smoke         # tiny sizes (CI)

Real parts only: every benchmark starts its own redis-server (and anvil, and
wireguard-go in network namespaces) and stops them by pid. A benchmark whose real
part is missing (no root for namespaces, no solc) is reported as skipped. The JSON
file holds the machine, the command and one object per result row (see
``common.Result``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import Result, Unavailable, machine, quiet_logs

#: Benchmark ids in the order they run.
ORDER = ("B1", "B2", "B3", "B4", "B5", "B6")


@dataclass(frozen=True)
class Size:
    """One size flag: its default and its smoke value."""

    flag: str
    default: float
    smoke: float
    help: str


SIZES: dict[str, tuple[Size, ...]] = {
    "B1": (
        Size("b1-logs", 50_000, 300, "logs emitted on anvil and ingested"),
        Size("b1-logs-per-tx", 500, 100, "logs per bench transaction"),
        Size("b1-naive-logs", 10_000, 300, "logs of the same range the naive web3.py path ingests"),
        Size("b1-workers", 2, 1, "rq backfill workers"),
        Size("b1-blocks-per-job", 10, 2, "blocks per rq backfill job"),
    ),
    "B2": (
        Size("b2-events", 300_000, 3_000, "synthetic events folded"),
        Size("b2-nodes", 100_000, 300, "distinct nodes in those events"),
    ),
    "B3": (
        Size("b3-mints", 200, 5, "mints whose propagation is timed"),
        Size("b3-agents", 20, 3, "file-only agents"),
        Size("b3-agent-procs", 4, 1, "processes the file-only agents are spread over"),
        Size("b3-wg-hosts", 2, 1, "agents on real wireguard-go interfaces (0: none)"),
        Size("b3-baseline-mints", 10, 3, "mints timed with the predecessor's full re-read"),
        Size("b3-poll-interval", 0.05, 0.05, "listener poll interval at the chain tip (s)"),
    ),
    "B4": (
        Size("b4-peers", 10_000, 50, "peers of the mesh host"),
        Size("b4-changes", 200, 10, "bare wg set key rotations timed"),
        Size("b4-agent-changes", 40, 3, "changes timed through the agent (mesh host)"),
        Size("b4-syncs", 5, 2, "full wg syncconf runs timed"),
        Size("b4-boots", 3, 2, "bootstrap and syncconf_empty samples (alternating; median)"),
        Size("b4-hub-members", 100_000, 300, "members of the hub network (the spoke host)"),
        Size("b4-hubs", 10, 3, "hubs of the hub network"),
        Size("b4-hub-changes", 20, 3, "hub key rotations (and as many other changes) timed"),
    ),
    "B5": (
        Size("b5-nodes", 10_000, 200, "nodes in the registry"),
        Size("b5-checks", 200_000, 300, "in-process access checks timed"),
        Size("b5-callers", 16, 4, "concurrent callers of the strict checks"),
        Size("b5-revokes", 200, 10, "revokes timed from the stage's commit to a denied answer"),
        Size("b5-rate", 1_000, 50, "HTTP requests per second to each endpoint"),
        Size("b5-requests", 5_000, 50, "HTTP requests per endpoint"),
    ),
    "B6": (
        Size("b6-agents", 1_000, 20, "agents on the in-memory WireGuard twin"),
        Size("b6-procs", 8, 2, "processes those agents are spread over"),
        Size("b6-wg-hosts", 2, 2, "agents on real wireguard-go interfaces (0: none)"),
        Size("b6-mesh-members", 10_000, 200, "members of the mesh network (0: skip it)"),
        Size("b6-hub-members", 100_000, 300, "members of the hub network (0: skip it)"),
        Size("b6-hubs", 10, 3, "hubs of the hub network (not agents: the agents are spokes)"),
        Size("b6-changes", 20, 4, "real key rotations timed per network"),
        Size("b6-boot-timeout", 300, 60, "seconds every agent may take to bootstrap"),
        Size("b6-change-timeout", 30, 20, "seconds one change may take to reach every agent"),
        Size("b6-memory-gib", 8, 2, "RSS budget of all agent processes (GiB)"),
        Size("b6-idle-seconds", 6, 1, "seconds Redis's idle load is measured"),
        Size("b6-file-only", 0, 0, "1: file-only agents instead of the WireGuard twin"),
    ),
}


def _runner(bench: str) -> Callable[[dict[str, Any]], list[Result]]:
    """The benchmark's ``run`` with its sizes taken from the parsed flags."""

    def call(v: dict[str, Any]) -> list[Result]:
        """Import the benchmark's module and run it with its sizes from ``v``."""
        if bench == "B1":
            import b1_ingest

            return b1_ingest.run(
                int(v["b1_logs"]),
                int(v["b1_logs_per_tx"]),
                int(v["b1_naive_logs"]),
                int(v["b1_workers"]),
                int(v["b1_blocks_per_job"]),
            )
        if bench == "B2":
            import b2_fold

            return b2_fold.run(int(v["b2_events"]), int(v["b2_nodes"]))
        if bench == "B3":
            import b3_propagation

            return b3_propagation.run(
                int(v["b3_mints"]),
                int(v["b3_agents"]),
                int(v["b3_agent_procs"]),
                int(v["b3_wg_hosts"]),
                int(v["b3_baseline_mints"]),
                float(v["b3_poll_interval"]),
            )
        if bench == "B4":
            import b4_apply

            return b4_apply.run(
                int(v["b4_peers"]),
                int(v["b4_changes"]),
                int(v["b4_agent_changes"]),
                int(v["b4_syncs"]),
                int(v["b4_boots"]),
                int(v["b4_hub_members"]),
                int(v["b4_hubs"]),
                int(v["b4_hub_changes"]),
            )
        if bench == "B6":
            import b6_fleet

            return b6_fleet.run(
                int(v["b6_agents"]),
                int(v["b6_procs"]),
                int(v["b6_mesh_members"]),
                int(v["b6_hub_members"]),
                int(v["b6_hubs"]),
                int(v["b6_changes"]),
                int(v["b6_wg_hosts"]),
                float(v["b6_boot_timeout"]),
                float(v["b6_change_timeout"]),
                float(v["b6_memory_gib"]),
                float(v["b6_idle_seconds"]),
                bool(v["b6_file_only"]),
            )
        import b5_access

        return b5_access.run(
            int(v["b5_nodes"]),
            int(v["b5_checks"]),
            int(v["b5_callers"]),
            int(v["b5_revokes"]),
            float(v["b5_rate"]),
            int(v["b5_requests"]),
        )

    return call


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Flags, with every size filled in (its smoke value with ``--smoke``)."""
    parser = argparse.ArgumentParser(
        prog="tests/benchmarks/run.py",
        description="wgchain benchmarks, each against its baseline in the same run.",
    )
    parser.add_argument("--only", default=",".join(ORDER), help="comma-separated ids, e.g. B2,B4")
    parser.add_argument("--out", default="bench-results.json", help="JSON results file")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI: proves it runs)")
    parser.add_argument(
        "--markdown",
        metavar="JSON",
        help="print the results of an earlier run as a Markdown table (for the README) and exit",
    )
    for bench, sizes in SIZES.items():
        group = parser.add_argument_group(bench)
        for size in sizes:
            group.add_argument(
                f"--{size.flag}",
                type=float,
                default=None,
                help=f"{size.help} [default {size.default:g}, smoke {size.smoke:g}]",
            )
    args = parser.parse_args(argv)
    wanted = [b.strip().upper() for b in args.only.split(",") if b.strip()]
    unknown = [b for b in wanted if b not in ORDER]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(ORDER)}")
    args.only = [b for b in ORDER if b in wanted]
    for sizes in SIZES.values():
        for size in sizes:
            dest = size.flag.replace("-", "_")
            if getattr(args, dest) is None:
                setattr(args, dest, size.smoke if args.smoke else size.default)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks; 1 when one failed (a skipped one is not a failure)."""
    args = parse(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return 0
    quiet_logs()
    facts = machine()
    command = shlex.join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)])
    doc: dict[str, Any] = {
        "machine": facts,
        "command": command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "smoke": args.smoke,
        "results": [],
        "skipped": {},
        "failed": {},
        "seconds": {},
    }
    out = Path(args.out)
    values = vars(args)
    begin = time.perf_counter()
    for bench in args.only:
        print(f"running {bench} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            rows = _runner(bench)(values)
        except Unavailable as exc:
            doc["skipped"][bench] = str(exc)
            print(f"{bench} skipped: {exc}", file=sys.stderr)
        except Exception as exc:
            doc["failed"][bench] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        else:
            seen = {row["id"] for row in doc["results"]}
            twice = [r.id for r in rows if r.id in seen]
            if twice or len({r.id for r in rows}) < len(rows):
                doc["failed"][bench] = f"duplicate result ids {twice or [r.id for r in rows]}"
            doc["results"] += [r.as_json() for r in rows]
        doc["seconds"][bench] = round(time.perf_counter() - start, 1)
        _write(out, doc)
    doc["seconds"]["total"] = round(time.perf_counter() - begin, 1)
    doc["machine"]["load_average_end"] = [round(x, 2) for x in _loadavg()]
    _write(out, doc)
    print_table(doc)
    print(f"wrote {out}", file=sys.stderr)
    return 1 if doc["failed"] else 0


def _loadavg() -> tuple[float, float, float]:
    import os

    return os.getloadavg()


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=1) + "\n")


def _figure(value: float, unit: str) -> str:
    if value >= 100:
        text = f"{value:,.0f}"
    elif value >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}"


def _notes(row: dict[str, Any]) -> str:
    """The extra figures of a row, ``name=value`` (params left out)."""
    skip = {
        "id",
        "target",
        "target_met",
        "name",
        "value",
        "unit",
        "baseline",
        "baseline_value",
        "ratio",
        "better",
        "ratio_meaning",
        "params",
    }
    parts = []
    for key, value in row.items():
        if key in skip:
            continue
        if isinstance(value, int) or (isinstance(value, float) and abs(value) >= 1000):
            parts.append(f"{key}={value:,.0f}")
        elif isinstance(value, float):
            parts.append(f"{key}={value:.3g}")
        else:
            parts.append(f"{key}={value}")
    return ", ".join(parts)


def ratio_text(row: dict[str, Any]) -> str:
    """The ratio in words: "12.3x faster", "2.1x slower", "0.35x of the ceiling"."""
    ratio, meaning = row["ratio"], row["ratio_meaning"]
    if meaning == "faster" and 0 < ratio < 1:
        return f"{1 / ratio:.3g}x slower"
    return f"{ratio:.3g}x {meaning}"


def target_text(row: dict[str, Any]) -> str:
    """The row's target and whether this run met it ("" when it has none)."""
    if not row.get("target"):
        return ""
    return f"{row['target']}: {'met' if row.get('target_met') else 'NOT met'}"


def markdown(doc: dict[str, Any]) -> str:
    """The results as a Markdown table, the machine and the command above it."""
    m = doc["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM, Python {m['python']}, "
        f"{m['redis']}, {m['wireguard_go']}; load average {m['load_average'][0]} at the start, "
        f"{m.get('load_average_end', ['?'])[0]} at the end. Command: `{doc['command']}` "
        f"({doc['seconds'].get('total', '?')} s).",
        "",
        "| id | benchmark | value | baseline | baseline value | ratio | target | details |",
        "|---|---|--:|---|--:|--:|---|---|",
    ]
    for row in doc["results"]:
        cells = [
            f"`{row.get('id', '?')}`",
            row["name"],
            _figure(row["value"], row["unit"]),
            row["baseline"],
            _figure(row["baseline_value"], row["unit"]),
            ratio_text(row),
            target_text(row),
            _notes(row).replace("_", "\\_"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_table(doc: dict[str, Any]) -> None:
    """The results as a rich table on stdout, the machine in its title."""
    from rich.console import Console
    from rich.table import Table

    m = doc["machine"]
    title = (
        f"wgchain benchmarks — {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"Python {m['python']}, load {m['load_average'][0]} → {m.get('load_average_end', ['?'])[0]}"
    )
    table = Table(title=title, caption=doc["command"], show_lines=True)
    table.add_column("id")
    table.add_column("benchmark")
    table.add_column("value", justify="right")
    table.add_column("baseline")
    table.add_column("baseline value", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("target")
    table.add_column("details", overflow="fold")
    for row in doc["results"]:
        table.add_row(
            row.get("id", "?"),
            row["name"],
            _figure(row["value"], row["unit"]),
            row["baseline"],
            _figure(row["baseline_value"], row["unit"]),
            ratio_text(row),
            target_text(row),
            _notes(row),
        )
    for bench, why in doc["skipped"].items():
        table.add_row(bench, "", "skipped", why, "", "", "", "")
    for bench, why in doc["failed"].items():
        table.add_row(bench, "", "FAILED", why, "", "", "", "")
    Console(width=200).print(table)
    seconds = ", ".join(f"{k} {v}s" for k, v in doc["seconds"].items())
    Console(width=200).print(f"time: {seconds}")


if __name__ == "__main__":
    sys.exit(main())
