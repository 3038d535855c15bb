"""The one-shot benchmark's smoke mode: every row (uvc prune and the Torch-Pruning peers) runs
and lands at the budget by the shared counter."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_row_of_the_prune_benchmark_runs(tmp_path):
    out = tmp_path / "prune.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_prune.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads((tmp_path / "prune_smoke.json").read_text())
    keys = [k for k in rows if k != "dense"]
    assert {k.split("|")[0] for k in keys} == {"uvc_activation", "uvc_activation_ls", "uvc_taylor_ls", "tp_l2",
                                               "tp_taylor"}
    for k in keys:
        assert 0.4 < rows[k]["ratio"] <= 0.5 + 1e-9, (k, rows[k])
        assert 0 <= rows[k]["acc"] <= 100 and rows[k]["seconds"] > 0
    assert "Torch-Pruning one-shot, global Taylor" in done.stdout
