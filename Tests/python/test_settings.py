"""One definition per stage: CLI flags, config files and Python keywords map to the same
settings with the same defaults; a run's saved settings reproduce it; README's tables are
generated from the definitions."""
import argparse
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

import uvc
from uvc import settings as S
from uvc.cli import _stage_settings, build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def _subparser(name: str) -> argparse.ArgumentParser:
    actions = build_parser()._subparsers._group_actions[0]
    return actions.choices[name]


@pytest.mark.parametrize("stage", list(S.STAGES.values()), ids=list(S.STAGES))
def test_every_flag_is_one_setting_with_the_stage_default(stage):
    parser = _subparser(stage.name)
    dests = {}
    for action in parser._actions:
        if action.dest in ("help", "config"):
            continue
        assert action.dest in stage.names, f"--{action.dest} of uvc {stage.name} is no setting"
        for flag in action.option_strings:
            assert flag not in dests, f"{flag} is spelled twice"
            dests[flag] = action.dest
        if stage[action.dest].choices and stage[action.dest].type in (str,):
            assert tuple(action.choices) == stage[action.dest].choices
    assert set(dests.values()) == set(stage.names), "every setting has a flag"
    given = {s.name: "x" for s in stage.settings if s.default is S.REQUIRED}
    resolved = _stage_settings(parser.parse_args(sum((["--" + k, v] for k, v in given.items()), [])))
    assert resolved == {**stage.defaults(), **given}


def test_python_keyword_defaults_are_the_settings_defaults():
    from uvc.torch.distill import DistillationLoss
    from uvc.torch.usdc import USDCFinetune, USDCSearch

    def defaults(fn):
        return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}

    for fn, stage in ((USDCSearch.__init__, S.USDC_SEARCH), (USDCFinetune.__init__, S.USDC_FINETUNE)):
        shared = {k: v for k, v in defaults(fn).items() if k in stage.names}
        assert len(shared) >= 4
        for k, v in shared.items():
            assert stage[k].default == v, f"{fn.__qualname__}({k}={v!r}) but uvc {stage.name} --{k} defaults to " \
                                          f"{stage[k].default!r}"
    assert defaults(USDCSearch.__init__)["target"] == S.USDC_SEARCH["target"].default
    loss = defaults(DistillationLoss.__init__)
    assert (loss["kind"], loss["alpha"], loss["tau"]) == tuple(
        S.COMPRESS[k].default for k in ("distillation_type", "distillation_alpha", "distillation_tau"))
    # The solver's settings are the core's, names and defaults.
    for name, value in uvc.solver.DEFAULTS.items():
        assert S.COMPRESS[name].default == value
    assert S.COMPRESS["gate_granularity"].choices == ("block", "part")


def test_config_files_json_and_toml_flags_win_and_bad_keys_are_named(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('budget = 0.3\nzlr-schedule = [1, 2]\nmodel_kwargs = { num_classes = 3 }\nprune_heads = false\n')
    parser = _subparser("compress")
    s = _stage_settings(parser.parse_args(["--config", str(toml), "--budget", "0.4"]))
    assert (s["budget"], s["zlr_schedule"], s["model_kwargs"], s["prune_heads"]) == (0.4, (1.0, 2.0),
                                                                                     {"num_classes": 3}, False)
    js = tmp_path / "run.json"
    js.write_text(json.dumps({"budget": 0.3, "glr": 0.2, "learning-rate": "fast"}))
    with pytest.raises(ValueError, match=r"--config .*run.json: unknown setting glr for uvc compress; known: model, "):
        _stage_settings(parser.parse_args(["--config", str(js)]))
    js.write_text(json.dumps({"learning_rate": "fast"}))
    with pytest.raises(TypeError, match=r"run.json: learning_rate: expected a number, got 'fast'"):
        _stage_settings(parser.parse_args(["--config", str(js)]))
    js.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        _stage_settings(parser.parse_args(["--config", str(js)]))
    with pytest.raises(ValueError, match=r"grouping: must be one of halving, sample, batch, mixed; got 'random'"):
        S.USDC_SEARCH.resolve({"grouping": "random"})
    with pytest.raises(ValueError, match="needs 'model'"):
        S.FINETUNE.resolve({})
    assert main(["compress", "--config", str(js)]) == 2  # the CLI says so instead of a traceback


def test_a_runs_saved_settings_reproduce_it(tmp_path, tiny_checkpoint):
    from conftest import TINY
    first, second = tmp_path / "first", tmp_path / "second"
    flags = ["--model", "vit_tiny_patch16_224", "--model-kwargs", json.dumps(TINY), "--checkpoint", tiny_checkpoint,
             "--subset", "128", "--eval-subset", "64", "--batch-size", "64", "--num_epochs", "1", "--warmup_epochs",
             "0.25", "--zlr_schedule_list", "1", "--budget", "0.6", "--seed", "5", "--device", "cpu", "--no-progress"]
    assert main(["compress", *flags, "--output_dir", str(first)]) == 0
    saved = json.loads((first / S.SETTINGS_FILE).read_text())
    assert saved["budget"] == 0.6 and saved["seed"] == 5 and saved["zlr_schedule"] == [1.0]
    assert main(["compress", "--config", str(first / S.SETTINGS_FILE), "--output-dir", str(second)]) == 0
    assert (first / "plan.json").read_text() == (second / "plan.json").read_text()
    a, b = (json.loads((d / "summary_stage1.json").read_text()) for d in (first, second))
    assert a == b
    assert (first / "stage1" / "log.jsonl").read_text().count("\n") == 1


def test_readme_lists_the_generated_settings_tables():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "settings_tables.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    readme = (ROOT / "README.md").read_text()
    for stage in S.STAGES.values():
        assert f"#### `uvc {stage.name}`" in readme


def test_flops_counts_any_supported_timm_vit(capsys):
    assert main(["flops", "vit_small_patch16_384", "--num-classes", "10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    spec = uvc.ViTSpec.from_name("vit_small_patch16_224").replace(image_size=(384, 384), num_classes=10)
    assert out["macs"] == uvc.count(spec).macs
    with pytest.raises(SystemExit, match="not a timm model name"):
        main(["flops", "no_such_vit"])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["flops", "runs/missing/plan.json"])

