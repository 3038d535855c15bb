"""The allocator benchmark's smoke mode: a default-allocator process and a steady one time the
demo at batch 64; the default one pays page faults every pass, the steady one none."""
import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_compares_the_two_allocator_modes(tmp_path):
    out = tmp_path / "malloc.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_malloc.py"), "--smoke", "--threads", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    if platform.libc_ver()[0] != "glibc":
        assert done.returncode != 0 and "not glibc" in done.stdout + done.stderr
        return
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(out.read_text())
    assert data["benchmark"] == "malloc" and data["rounds"] == 1 and data["smoke"] is True
    (row,) = data["rows"]
    assert (row["model"], row["batch"]) == ("demo", 64)
    assert row["ms"]["default"] > 0 and row["ms"]["steady"] > 0
    assert row["steady_over_default"] == row["ms"]["steady"] / row["ms"]["default"]
    # A batch of 64 demo images allocates blocks of megabytes: glibc maps them anew every pass.
    assert row["page_faults"]["default"] > 1000 and row["page_faults"]["steady"] == 0
    assert "steady / default" in done.stdout
