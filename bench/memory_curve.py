"""The soak's memory curve: a sampler that writes the agent's RSS, CPU time and a few of its
Prometheus figures to a CSV file at a steady interval, and the summary of the curve (least-
squares slope over the whole run and after the warm-up, and whether memory stayed flat)."""

from __future__ import annotations

import contextlib
import csv
import math
import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.processes import proc_cpu_s, proc_status_kib

FLAT_TOLERANCE = 0.02  # "no growth trend": the fitted growth after warm-up < 2 % of the mean
FLAT_TOLERANCE_MIB = 2.0  # ... or less than 2 MiB, whichever is larger


_METRIC = re.compile(r"^(captagent_tls_\w+?)(?:\{[^}]*\})? (\S+)$", re.M)


def scrape(address: str) -> dict[str, float]:
    """The agent's metrics, summed over their labels."""
    try:
        text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    values: dict[str, float] = {}
    for name, value in _METRIC.findall(text):
        values[name] = values.get(name, 0.0) + float(value)
    return values


COLUMNS = (
    "t_s", "round", "rss_kib", "rss_anon_kib", "threads", "cpu_s", "packets", "sip_messages",
    "hep_received", "active_flows", "session_cache_evictions", "tls_held_bytes", "hep_queued",
    "kernel_dropped",
)  # fmt: skip


class Sampler:
    """A thread that writes one CSV row every ``interval`` seconds."""

    def __init__(
        self, pid: int, metrics: str, path: Path, interval: float, received: Any, round_of: Any
    ) -> None:
        self.pid, self.metrics, self.interval = pid, metrics, interval
        self.received, self.round_of = received, round_of
        self.rows: list[dict[str, float]] = []
        self.started = time.monotonic()
        self._out = path.open("w", newline="")
        self._csv = csv.DictWriter(self._out, COLUMNS)
        self._csv.writeheader()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def sample(self) -> dict[str, float]:
        status = proc_status_kib(self.pid, "VmRSS", "RssAnon", "Threads")
        m = scrape(self.metrics)
        row = {
            "t_s": round(time.monotonic() - self.started, 1),
            "round": self.round_of(),
            "rss_kib": status.get("VmRSS", 0),
            "rss_anon_kib": status.get("RssAnon", 0),
            "threads": status.get("Threads", 0),
            "cpu_s": round(proc_cpu_s(self.pid), 2),
            "packets": m.get("captagent_tls_packets_total", -1),
            "sip_messages": m.get("captagent_tls_sip_messages_total", -1),
            "hep_received": self.received(),
            "active_flows": m.get("captagent_tls_active_flows", -1),
            "session_cache_evictions": m.get("captagent_tls_session_cache_evictions_total", -1),
            "tls_held_bytes": m.get("captagent_tls_tls_held_bytes", -1),
            "hep_queued": m.get("captagent_tls_hep_queued", -1),
            "kernel_dropped": m.get("captagent_tls_kernel_dropped_packets_total", -1),
        }
        self.rows.append(row)
        self._csv.writerow(row)
        self._out.flush()
        return row

    def _loop(self) -> None:
        n = 0
        while True:
            n += 1
            if self._stop.wait(max(0.0, self.started + n * self.interval - time.monotonic())):
                return
            with contextlib.suppress(OSError, ValueError):  # the agent may just have exited
                self.sample()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._out.close()


# --------------------------------------------------------------------------
# the curve
# --------------------------------------------------------------------------


def slope_per_10_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB), in MiB per 10 minutes."""
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 600.0


def warmup_end(rows: list[dict[str, float]], minimum_s: float) -> float:
    """The warm-up lasts ``minimum_s`` and at least until the TLS session cache is full (its
    first eviction): until then the cache grows by design, up to --session-cache entries."""
    full = next((r["t_s"] for r in rows if r["session_cache_evictions"] > 0), None)
    return max(minimum_s, full) if full is not None else minimum_s


def summarize(rows: list[dict[str, float]], warmup_s: float) -> dict[str, Any]:
    points = [(r["t_s"], r["rss_kib"] / 1024.0) for r in rows if r["rss_kib"]]
    if not points:
        return {"samples": 0}
    after = [p for p in points if p[0] >= warmup_s]
    values = [v for _, v in points]
    summary: dict[str, Any] = {
        "samples": len(points),
        "duration_s": points[-1][0],
        "start_mib": round(points[0][1], 1),
        "min_mib": round(min(values), 1),
        "max_mib": round(max(values), 1),
        "end_mib": round(points[-1][1], 1),
        "slope_mib_per_10min": _round(slope_per_10_min(points)),
        "warmup_s": warmup_s,
        "samples_after_warmup": len(after),
    }
    if len(after) >= 3:
        slope = slope_per_10_min(after)
        span = after[-1][0] - after[0][0]
        mean = sum(v for _, v in after) / len(after)
        growth = (slope or 0.0) * span / 600.0
        allowed = max(FLAT_TOLERANCE * mean, FLAT_TOLERANCE_MIB)
        summary.update({
            "after_warmup_start_mib": round(after[0][1], 1),
            "after_warmup_min_mib": round(min(v for _, v in after), 1),
            "after_warmup_max_mib": round(max(v for _, v in after), 1),
            "after_warmup_mean_mib": round(mean, 1),
            "slope_after_warmup_mib_per_10min": _round(slope),
            "fitted_growth_after_warmup_mib": round(growth, 2),
            "flat": abs(growth) < allowed,
            "flat_criterion": f"|fitted growth after warm-up| < max({FLAT_TOLERANCE:.0%} of "
                              f"the mean, {FLAT_TOLERANCE_MIB:g} MiB) = {allowed:.1f} MiB",
        })  # fmt: skip
    return summary


def _round(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(value, 2)


def summary_text(s: dict[str, Any], facts: dict[str, Any]) -> str:
    lines = [
        f"captagent-tls soak: {facts['minutes']:g} min of {facts['pps']:,} packets/s "
        f"({facts['rounds']} rounds of {facts['round_packets']:,} packets, "
        f"{facts['round_messages']:,} SIP messages each) onto lo; HEP over {facts['hep']}",
        f"  agent: {facts['agent']}",
        f"  code: {facts['code']}; {facts['machine']}",
    ]
    if not s.get("samples"):
        return "\n".join([*lines, "  no samples"])
    lines += [
        f"  RSS, {s['samples']} samples every {facts['sample_s']:g} s over "
        f"{s['duration_s'] / 60:.1f} min: start {s['start_mib']} MiB, min {s['min_mib']}, "
        f"max {s['max_mib']}, end {s['end_mib']}",
        f"  slope (least squares): {s['slope_mib_per_10min']} MiB per 10 min over the whole run",
    ]
    if "slope_after_warmup_mib_per_10min" in s:
        lines += [
            f"  after the warm-up ({s['warmup_s'] / 60:.1f} min: at least "
            f"{facts['warmup_min']:.1f} min, and until the TLS session cache was full): start "
            f"{s['after_warmup_start_mib']} MiB, min {s['after_warmup_min_mib']}, max "
            f"{s['after_warmup_max_mib']}, mean {s['after_warmup_mean_mib']}; slope "
            f"{s['slope_after_warmup_mib_per_10min']} MiB per 10 min (fitted growth "
            f"{s['fitted_growth_after_warmup_mib']} MiB)",
            f"  memory {'FLAT' if s['flat'] else 'GROWS'}: {s['flat_criterion']}",
        ]
    lines += [f"  {line}" for line in facts["checks"]]
    return "\n".join(lines)
