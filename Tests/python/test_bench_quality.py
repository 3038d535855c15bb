"""The quality benchmark's smoke mode: every row (uvc, uvc prune, Torch-Pruning L2 / Taylor, uniform, uvc's
architecture from scratch) trains end to end and lands at the budget by the shared counter; a
second run reloads the cached rows without training; bad settings stop before any training."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "bench_quality.py"
ROWS = {"uvc", "uvc_prune", "tp_l2", "tp_taylor", "uniform", "uvc_scratch"}


def run(*args):
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("quality") / "quality.json"
    done = run("--smoke", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    return out.with_name("quality_smoke.json"), done.stdout


def test_every_row_of_the_quality_benchmark_trains_to_the_budget(smoke):
    path, stdout = smoke
    data = json.loads(path.read_text())
    rows = data["rows"]
    assert {r["row"] for r in rows.values()} == ROWS and len(rows) == len(ROWS)
    dense = data["dense"]["demo_s0_v200"]
    for key, r in rows.items():
        assert 0 <= r["acc"] <= 100 and 0 <= r["acc_before"] <= 100, (key, r)
        assert r["ratio"] <= 0.5 * 1.01, (key, r)
        assert r["params"] < dense["params"] and r["train_seconds"] > 0, (key, r)
        assert (path.with_suffix("") / key / "finetune" / "model" / "arch.json").is_file()
        assert set(data["latency"]["ms"][key]) == {"1", "64"}
    assert "dense_demo" in data["latency"]["ms"]
    by_row = {r["row"]: r for r in rows.values()}
    assert by_row["uvc_scratch"]["plan"] == by_row["uvc"]["plan"]  # the same architecture, retrained
    assert "Torch-Pruning global Taylor + fine-tune" in stdout and "uvc's architecture from scratch" in stdout


def test_the_uniform_row_keeps_the_same_fraction_in_every_layer(smoke):
    path, _ = smoke
    uniform = next(r for r in json.loads(path.read_text())["rows"].values() if r["row"] == "uniform")
    heads = max(1, int(uniform["rho"] * 4 + 0.5))
    neurons = max(1, int(uniform["rho"] * 256 + 0.5))
    # per layer: heads, value dims, neurons, MHSA runs, MLP runs, query/key dims (demo: 4 heads of 16, MLP 256)
    assert uniform["plan"] == [[heads, 16, neurons, 1, 1, 16]] * 6


def test_a_second_run_reloads_the_cached_rows_without_training(smoke):
    path, _ = smoke
    before = json.loads(path.read_text())["rows"]
    done = run("--smoke", "--no-latency", "--out", str(path.with_name("quality.json")))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("cached: ") == len(ROWS) and "training:" not in done.stdout
    assert "stage 1 epoch" not in done.stdout and "stage 2 epoch" not in done.stdout
    assert json.loads(path.read_text())["rows"] == before


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_quality
    threads = torch.get_num_threads()
    yield bench_quality
    torch.set_num_threads(threads)


@pytest.mark.parametrize("args, named", [
    (["--rows", "uvc", "nonsense"], "--rows"),
    (["--budgets", "0"], "--budgets 0"),
    (["--budgets", "0.5", "1.5"], "--budgets 1.5"),
    (["--models", "demo", "--rows", "uniform", "--budgets", "0.02", "--threads", "1"], "--rows uniform --budgets 0.02"),
    (["--qk-keep", "0.3=1.5"], "--qk-keep '0.3=1.5': the fraction must lie in (0, 1]"),
    (["--qk-keep", "half"], "--qk-keep 'half': expected FRACTION or BUDGET=FRACTION"),
])
def test_bad_settings_stop_before_training_and_name_the_setting(bench, capsys, tmp_path, args, named):
    with pytest.raises(SystemExit):
        bench.main([*args, "--out", str(tmp_path / "q.json")])
    err = capsys.readouterr().err
    assert named in err, err
    assert not (tmp_path / "q").exists()  # nothing trained, nothing cached


def test_a_missing_torch_pruning_says_how_to_install_it(bench, capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # import torch_pruning now raises ImportError
    with pytest.raises(SystemExit):
        bench.main(["--rows", "tp_taylor", "--out", str(tmp_path / "q.json")])
    err = capsys.readouterr().err
    assert "--rows tp_taylor" in err and 'pip install "uvc[bench]"' in err, err


def test_the_cache_key_names_every_setting_of_the_uvc_row(bench):
    _, args = bench.parse(["--models", "demo"])
    assert (args.search_fraction, args.fit_budget, args.rewind, args.reconstruct) == (0.125, True, False, False)
    assert args.qk_keep == {0.3: 0.5, None: 1.0}, "half the q/k dims at 0.3, all elsewhere"
    keys = {bench.key_of(bench.parse(extra)[1], "demo", 0.3, 1, row)
            for extra in ([], ["--no-fit-budget"], ["--rewind"], ["--reconstruct"], ["--search-fraction", "0.5"],
                          ["--qk-keep", "1"])
            for row in ("uvc", "uvc_scratch")}
    assert len(keys) == 12, "each setting and row has its own cached result"
    assert bench.key_of(args, "demo", 0.3, 1, "uvc") == \
        "demo_b0.3_s1_uvc_e8_n20000_bs128_vall_f0.125_itaylor_fit_qk_keep=0.5"
    assert bench.key_of(args, "demo", 0.5, 1, "uvc") == "demo_b0.5_s1_uvc_e8_n20000_bs128_vall_f0.125_itaylor_fit"
    _, off = bench.parse(["--no-fit-budget", "--search-fraction", "0.5", "--qk-keep", "1"])
    assert bench.key_of(off, "demo", 0.3, 1, "uvc") == "demo_b0.3_s1_uvc_e8_n20000_bs128_vall_f0.5_itaylor", \
        "rows cached before the fit and --qk-keep existed keep their keys"
    _, mixed = bench.parse(["--qk-keep", "0.75", "0.5=0.25"])
    assert [bench.qk_keep_of(mixed, b) for b in (0.3, 0.5)] == [0.75, 0.25]


def test_search_set_passes_checked_settings_to_the_search_and_names_them_in_the_key(bench, capsys):
    _, args = bench.parse(["--search-set", "prune_dims=false", "distillation_alpha=0.5", "lr_counts=[0.05,0.05,0.05]"])
    assert args.search_set == {"distillation_alpha": 0.5, "lr_counts": (0.05, 0.05, 0.05), "prune_dims": False}
    _, twice = bench.parse(["--search-set", "prune_dims=false", "--search-set", "skip_blocks=false"])
    assert twice.search_set == {"prune_dims": False, "skip_blocks": False}, "a second --search-set adds to the first"
    assert bench.key_of(args, "demo", 0.3, 0, "uvc").endswith(
        "_fit_qk_keep=0.5_distillation_alpha=0.5_lr_counts=[0.05,0.05,0.05]_prune_dims=false")
    assert bench.key_of(args, "demo", 0.3, 0, "tp_l2") == bench.key_of(bench.parse([])[1], "demo", 0.3, 0, "tp_l2")
    for bad, says in [("subset=100", "--search-set subset: not a setting of the search the benchmark leaves open"),
                      ("prune_dim=false", "--search-set prune_dim: not a setting"),
                      ("prune_dims=3", "--search-set prune_dims: expected true or false, got 3"),
                      ("prune_dims", "--search-set 'prune_dims': expected KEY=VALUE"),
                      ("prune_dims=false prune_dims=true", "--search-set prune_dims: given twice"),
                      ("qk_keep=0.5", "--search-set qk_keep: not a setting of the search the benchmark leaves open")]:
        with pytest.raises(SystemExit):
            bench.parse(["--search-set", *bad.split()])
        assert says in capsys.readouterr().err


def test_margins_name_the_best_other_row_and_the_gap_to_dense(bench):
    _, args = bench.parse(["--models", "demo", "--budgets", "0.5", "--seeds", "0", "1", "--rows", "uvc", "tp_l2",
                           "uniform"])
    acc = {("uvc", 0): 91.0, ("uvc", 1): 90.0, ("tp_l2", 0): 89.0, ("tp_l2", 1): 90.5,
           ("uniform", 0): 88.0, ("uniform", 1): 88.0}
    keys = {("demo", 0.5, s, r): f"{r}{s}" for r, s in acc}
    data = {"dense": {bench.dense_key(args, "demo", s): {"acc": 92.0 - s} for s in (0, 1)},
            "rows": {f"{r}{s}": {"acc": a} for (r, s), a in acc.items()}}
    m = bench.margins(args, data, keys)["demo_b0.5"]
    assert m["runner_up"] == "tp_l2"
    assert m["uvc"] == pytest.approx(90.5) and m["lead"] == pytest.approx(90.5 - 89.75)
    assert m["to_dense"] == pytest.approx(90.5 - 91.5)
    _, alone = bench.parse(["--rows", "uvc"])
    assert bench.margins(alone, data, keys) == {}


def test_the_table_flags_rows_outside_the_budget_tolerance(bench, capsys):
    _, args = bench.parse(["--models", "demo", "--budgets", "0.5", "--seeds", "0", "--rows", "uvc", "tp_l2",
                           "uniform"])
    ratios = {"uvc": 0.5, "tp_l2": 0.51, "uniform": 0.438}  # within 1 %, over by 2 %, under by 12 %
    keys = {("demo", 0.5, 0, r): r for r in ratios}
    entry = dict(acc=90.0, acc_before=50.0, params=1000, train_seconds=10.0)
    data = {"dense": {bench.dense_key(args, "demo", 0): {"acc": 91.0, "macs": 10 ** 7, "params": 2000}},
            "rows": {r: dict(entry, ratio=x) for r, x in ratios.items()}}
    bench.print_table(args, data, keys)
    out = capsys.readouterr().out.splitlines()
    row = {r: next(l for l in out if l.startswith(bench.LABELS[r])) for r in ratios}
    assert "budget)" not in row["uvc"]
    assert "(over budget)" in row["tp_l2"] and "(under budget)" in row["uniform"]
