"""The latency-model benchmark's smoke mode: it profiles (once, then from its cache), measures
random plans and writes per-plan rows whose predictions are the table's (`uvc.LatencyTable`)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from uvc.plan import PLAN_ROW


ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_latency_model.py"


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), *extra], capture_output=True,
                          text=True, timeout=600, cwd=out.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_smoke_rows_are_priced_by_the_table(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_latency_model as bench
    finally:
        sys.path.remove(str(SCRIPT.parent))
    from uvc import LatencyTable
    from uvc.spec import ViTSpec
    from uvc.torch.profile import load_table

    out = tmp_path / "latency_model.json"
    done = _run(out)
    assert "(profiled" in done.stdout and "median |error|" in done.stdout
    data = json.loads(out.read_text())
    assert {"benchmark", "model", "spec", "device", "batch_size", "threads", "repeats", "table", "plan_row",
            "median_abs_rel_err", "spearman", "macs_spearman", "targets", "met", "plans"} <= set(data)
    assert data["benchmark"] == "latency_model" and data["model"] == "demo" and data["repeats"] == 3
    assert len(data["plans"]) == 7 and data["plans"][0]["name"] == "dense"
    assert {r["kind"] for r in data["plans"]} == {"dense", "random", "snapped", "skip"}
    table_path = Path(data["table"])
    assert table_path.parent == tmp_path and table_path.exists()
    table = load_table(table_path)
    spec = ViTSpec.from_dict(data["spec"])
    for row in data["plans"]:
        assert {"name", "kind", "predicted_ms", "measured_ms", "measured_p10_ms", "measured_p90_ms", "rel_err",
                "macs_ratio", "counts"} <= set(row)
        assert row["predicted_ms"] > 0 and row["measured_ms"] > 0
        plan = bench.plan_from_counts(spec, row["counts"])
        assert row["predicted_ms"] == pytest.approx(LatencyTable(table).predict(plan), rel=1e-12)
        if row["kind"] == "snapped":
            for counts in row["counts"]:
                c = dict(zip(PLAN_ROW, counts))
                assert not c["attn"] or c["v_dim"] in table["v_dims"]
                assert not c["mlp"] or c["neurons"] in table["neurons"]
    assert np.isfinite(data["median_abs_rel_err"]) and -1 <= data["spearman"] <= 1

    # A rerun takes the cached table.
    assert f"{table_path} (cached)" in _run(out).stdout


def test_smoke_with_a_token_axis_prices_plans_that_drop_tokens(tmp_path):
    from uvc import LatencyTable
    from uvc.spec import ViTSpec
    from uvc.torch.profile import default_tokens, load_table
    out = tmp_path / "latency_model.json"
    _run(out, "--tokens", "--seed", "1")
    data = json.loads(out.read_text())
    assert data["tokens"] is True and "tokens" in data["median_abs_rel_err_by_kind"]
    spec = ViTSpec.from_dict(data["spec"])
    table = LatencyTable(load_table(data["table"]))
    assert table.tokens == default_tokens(spec) and "_tokens" in data["table"]
    dropping = [r for r in data["plans"] if r["kind"] == "tokens"]
    assert dropping and any(min(c[-1] for c in r["counts"]) < spec.num_tokens for r in dropping)
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_latency_model as bench
    finally:
        sys.path.remove(str(SCRIPT.parent))
    raw = load_table(data["table"])
    unchained = LatencyTable({k: v for k, v in raw.items() if k not in ("chain_ms", "chain_spread_ms")})
    for row in data["plans"]:
        plan = bench.plan_from_counts(spec, row["counts"])
        assert row["predicted_ms"] == pytest.approx(table.predict(plan), rel=1e-12)
        assert row["unchained_ms"] == pytest.approx(unchained.predict(plan), rel=1e-12)
    off = data["without_chain_scale"]
    assert set(off["by_kind"]) == set(data["median_abs_rel_err_by_kind"]) and np.isfinite(off["median_abs_rel_err"])


def _bench():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_latency_model as bench
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return bench


def test_median_table_takes_each_time_elementwise():
    bench = _bench()
    tables = [{"format": "f", "repeats": 3, "heads": [1, 2], "attention_ms": [[a, 2 * a]], "mlp_ms": [a + 1],
               "fixed_ms": a, "dense_ms": 10 * a} for a in (1.0, 5.0, 2.0)]
    merged = bench.median_table(tables)
    assert merged["attention_ms"] == [[2.0, 4.0]] and merged["mlp_ms"] == [3.0]
    assert merged["fixed_ms"] == 2.0 and merged["dense_ms"] == 20.0 and isinstance(merged["fixed_ms"], float)
    assert merged["repeats"] == 9 and merged["heads"] == [1, 2] and merged["format"] == "f"
    assert tables[0]["fixed_ms"] == 1.0, "the inputs are left as they were"


def test_rounds_alternate_fresh_profiles_and_timings(tmp_path):
    """--rounds 2: two fresh profiles, two timings; the rows are priced by the saved median table."""
    from uvc import LatencyTable
    from uvc.spec import ViTSpec
    from uvc.torch.profile import load_table
    out = tmp_path / "latency_model.json"
    done = _run(out, "--rounds", "2")
    assert "round 2/2: profile, then the plans" in done.stdout and "x 2 rounds" in done.stdout
    data = json.loads(out.read_text())
    assert data["rounds"] == 2 and data["table"].endswith("_r2.json")
    table = load_table(data["table"])
    assert table["repeats"] == 2 * data["repeats"]
    spec = ViTSpec.from_dict(data["spec"])
    for row in data["plans"]:
        plan = _bench().plan_from_counts(spec, row["counts"])
        assert row["predicted_ms"] == pytest.approx(LatencyTable(table).predict(plan), rel=1e-12)
    bad = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--rounds", "2", "--table", data["table"]],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert bad.returncode == 2 and "--rounds profiles afresh in every round" in bad.stderr
