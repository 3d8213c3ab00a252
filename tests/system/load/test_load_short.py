"""The CI variant of bench/load.py: 16 clients mixing every RPC for 3 seconds, a burst of 24 heavy calls
against a queue bound of 2, then 2 Complete-only clients beside a probe for 2 seconds. The long run (64
clients, minutes) is documented in docs/production.md.

Asserts what must hold at any speed: no status but OK and RESOURCE_EXHAUSTED under the mix, the burst beyond
the bound refused with RESOURCE_EXHAUSTED (before waiting behind the served ones), the priority phase's probe
answered on every cheap kind beside saturating completions, all servers exit 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow  # seconds of load on real servers
def test_short_load_and_overload(serving_bundle, tmp_path):
    out = tmp_path / "load.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "load.py"),
            "--bundle",
            str(serving_bundle),
            "--clients",
            "16",
            "--seconds",
            "3",
            "--burst",
            "24",
            "--burst-queue",
            "2",
            "--steps",
            "4",
            "--saturate",
            "2",
            "--priority-seconds",
            "2",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    mix, over = result["mix"], result["overload"]
    assert set(mix["codes"]) <= {"OK", "RESOURCE_EXHAUSTED"} and mix["codes"].get("OK", 0) > 0, mix["codes"]
    assert {key.split()[0] for key in mix["latency"]} == {
        "Synthesize",
        "SynthesizeStream",
        "Complete",
        "Energy",
        "ModelInfo",
    }
    prio = result["priority"]
    assert set(prio["codes"]) == {"OK"}, prio["codes"]
    assert {key.rsplit(" ", 1)[0] for key in prio["latency"]} == {
        "Complete",
        "probe Energy",
        "probe ModelInfo",
        "probe Synthesize",
    }
    assert mix["server_exit"] == over["server_exit"] == prio["server_exit"] == 0
    assert mix["rss_end_mib"] < 2 * mix["rss_start_mib"]  # a leak guard only; the figures are in the report
    assert set(over["codes"]) == {"OK", "RESOURCE_EXHAUSTED"}, over["codes"]
    refused, served = over["latency"]["Synthesize RESOURCE_EXHAUSTED"], over["latency"]["Synthesize OK"]
    assert refused["p50_ms"] < served["p50_ms"]  # refused at the queue, not after waiting in it
