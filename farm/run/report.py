"""Human-readable summaries for `farm simulate` and `farm info` (rich tables on stdout)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _table(title: str, rows: list[tuple[str, str]]) -> Table:
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column("key", style="bold")
    t.add_column("value")
    for k, v in rows:
        t.add_row(k, v)
    return t


def print_summary(s: dict[str, Any]) -> None:
    rows = [
        ("store", s["store"]),
        (
            "samples",
            f"{s['completed_sims']:,} / {s['num_sims']:,}"
            + ("  (complete)" if s["complete"] else "  (incomplete: re-run to resume)"),
        ),
        (
            "simulated now",
            f"{s['simulated_now']:,} in {s['seconds']:.1f} s  "
            f"({s['sims_per_second']:,.0f} traces/s)",
        ),
        ("already done", f"{s['skipped']:,}"),
        (
            "in regime of interest",
            f"{100 * s['fraction_in_regime']:.1f} %  "
            f"(spike count in [{s['regime']['min_spikes']}, {s['regime']['max_spikes']}])",
        ),
        (
            "workers",
            f"{s['num_workers']} on {s['num_nodes']} node(s), "
            f"{s['chunks_retried']} chunk(s) retried",
        ),
    ]
    Console().print(_table("farm simulate", rows))


def print_info(s: dict[str, Any]) -> None:
    prior = s["prior"] or {}
    prior_text = prior.get("type", "?") + (
        f" (fingerprint {prior['fingerprint']})" if "fingerprint" in prior else ""
    )
    rows = [
        ("store", s["store"]),
        (
            "samples",
            f"{s['completed_sims']:,} / {s['num_sims']:,} completed "
            f"({s['chunks_done']}/{s['num_chunks']} chunks of {s['chunk_size']})",
        ),
        (
            "status",
            "complete"
            if s["complete"]
            else "incomplete: re-run the same `farm simulate` to resume",
        ),
        (
            "in regime of interest",
            "n/a"
            if s["fraction_in_regime"] != s["fraction_in_regime"]
            else f"{100 * s['fraction_in_regime']:.1f} %",
        ),
        ("seed", str(s["seed"])),
        ("substrate", f"{s['substrate']} (emulator v{s['emulator_version']})"),
        ("prior", prior_text),
        ("theta source", str(s["theta_source"])),
        ("protocol", str(s.get("protocol", "step"))),
        ("trace length", f"{s['trace_length']} samples"),
        ("created by", str(s["created_by"])),
    ]
    Console().print(_table("farm info", rows))
