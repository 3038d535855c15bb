"""The latency-budget benchmark's smoke mode, in a dtype other than float32 (what a GPU run
uses): every table is profiled in that dtype, every plan timed in it, and bad devices or dtypes
stop before anything is built."""
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_latency_budget.py"


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), *extra], capture_output=True,
                          text=True, timeout=600, cwd=out.parent)


def test_smoke_profiles_and_times_in_the_dtype_asked(tmp_path):
    out = tmp_path / "budget.json"
    done = _run(out, "--dtype", "bfloat16")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo, CPU, 1 threads, bfloat16, budget 0.8" in done.stdout
    data = json.loads(out.read_text())
    assert (data["device"], data["dtype"], data["batch_sizes"]) == ("cpu", "bfloat16", [1, 4])
    tables = sorted(p.name for p in (tmp_path / "latency_tables").iterdir())
    assert tables == ["demo_b1_t1_cpu_bfloat16.json", "demo_b4_t1_cpu_bfloat16.json"]
    for name in tables:
        table = json.loads((tmp_path / "latency_tables" / name).read_text())
        assert (table["device"]["type"], table["device"]["dtype"], table["device"]["threads"]) == ("cpu", "bfloat16", 1)
    plans = {r["plan"]: r for r in data["rows"]}
    assert {"macs", "latency@1", "latency@4", "skip_half", "halved"} <= set(plans)
    for row in plans.values():
        assert set(row["measured_ratio"]) == {"1", "4"} and all(v > 0 for v in row["measured_ratio"].values())
    # The budget-priced plans come in at or under 0.8 of the dense price of their own table.
    for b in ("1", "4"):
        assert plans[f"latency@{b}"]["predicted_ratio"][b] <= 0.8 + 1e-9


def test_bad_device_and_dtype_stop_before_anything_is_built(tmp_path):
    out = tmp_path / "budget.json"
    bad = [("--device", "tpu"), ("--dtype", "float16")]
    if not torch.cuda.is_available():
        bad.append(("--device", "cuda"))
    for flag, value in bad:
        done = _run(out, flag, value)
        assert done.returncode == 2, (flag, value, done.stdout + done.stderr)
        assert f"{flag} {value}" in done.stderr, done.stderr
        assert not out.exists() and not (tmp_path / "latency_tables").exists()
