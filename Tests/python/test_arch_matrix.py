"""The supported-architectures matrix of scripts/arch_matrix.py on tiny sizes: every configuration
either passes every check (dense export, exact MACs and masked logits for random plans, save/load,
ONNX, token drops) or is refused by uvc with a message naming the module; none fails."""
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("timm")
pytest.importorskip("onnxruntime")
pytest.importorskip("fvcore")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "arch_matrix.py"
# Rows that pass today; raise it when uvc supports more of the matrix.
MIN_PASSING = 19
CHECKS = ("dense", "plans", "save", "onnx", "tokens")


def load_script():
    spec = importlib.util.spec_from_file_location("arch_matrix", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def matrix():
    script = load_script()
    return script, script.run_matrix(small=True, plans=3)


def describe(row):
    failed = {k: c.get("error", c) for k, c in row.get("checks", {}).items() if c["result"] == "fail"}
    return f"{row['label']} ({row['model']}({row['kwargs']})): {row.get('error', '')} {failed}"


def test_every_row_passes_or_is_refused_naming_the_module(matrix):
    script, rows = matrix
    assert [r["label"] for r in rows] == [c[0] for c in script.CONFIGS]
    failing = [describe(r) for r in rows if r["status"] == "FAIL"]
    assert not failing, "rows that fail:\n" + "\n".join(failing)
    for row in rows:
        assert row["status"] in ("pass", "refused"), describe(row)
        if row["status"] == "refused":
            assert script.names_a_module(row["reason"]), \
                f"{row['label']}: expected a refusal naming the module ('model...: why'), got {row['reason']!r}"
            continue
        assert set(row["checks"]) == set(CHECKS), describe(row)
        # Token drops too: with a class token ranked by its attention, without one by the
        # attention each token receives.
        for name in CHECKS:
            assert row["checks"][name]["result"] == "pass", describe(row)
        for plan in row["checks"]["plans"]["plans"]:
            assert len(set(plan["macs"].values())) == 1 and plan["max_abs_diff"] <= 1e-4, describe(row)


def test_at_least_the_rows_passing_today_pass(matrix):
    _, rows = matrix
    passing = [r["label"] for r in rows if r["status"] == "pass"]
    assert len(passing) >= MIN_PASSING, f"expected at least {MIN_PASSING} passing rows, got {len(passing)}: {passing}"


def test_table_and_readme_block(matrix, tmp_path):
    script, rows = matrix
    text = script.table(rows)
    lines = text.splitlines()
    assert lines[0] == "| configuration | timm model | result |" and len(lines) == 2 + len(rows)
    assert "| ViT-S, no qkv bias | `vit_small_patch16_224(qkv_bias=False)` | pass |" in lines
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{script.BEGIN}\nold\n{script.END}\noutro\n")
    new = script.replace_block(readme.read_text(), script.readme_block(rows), readme)
    assert new == f"intro\n{script.readme_block(rows)}\noutro\n"
    with pytest.raises(SystemExit, match="markers"):
        script.replace_block("no markers", "", readme)


def test_readme_has_the_markers():
    text = (SCRIPT.parents[1] / "README.md").read_text()
    script = load_script()
    assert text.count(script.BEGIN) == 1 and text.count(script.END) == 1
    assert text.index(script.BEGIN) < text.index(script.END)
