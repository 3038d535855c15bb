"""The attention benchmark's smoke mode: every path runs, the padded one first checked equal to
the explicit one, and the JSON names what it timed."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_times_every_path(tmp_path):
    out = tmp_path / "attention.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_attention.py"), "--smoke", "--threads",
                           "1", "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(out.read_text())
    assert data["benchmark"] == "attention" and data["repeats"] == 3 and data["device"] == "cpu"
    (row,) = data["rows"]
    assert (row["heads"], row["qk_dim"], row["v_dim"], row["batch"], row["tokens"]) == (4, 16, 12, 64, 50)
    assert set(row["ms"]) == {"sdpa", "padded", "explicit", "sdpa_full"}
    assert all(t > 0 for t in row["ms"].values()) and row["fastest"] in ("sdpa", "padded", "explicit")
    assert "padded ms" in done.stdout
