"""The settings of every stage, defined once: type, default, unit, help and command-line
spellings of each. The CLI's flags, ``--config`` files (JSON or TOML) and the Python stage
functions (`uvc.torch.pipeline.compress` and the rest) all go through these definitions, so a
default cannot differ between them. No torch here: the CLI builds its parser from this module.

    from uvc.settings import COMPRESS
    settings = COMPRESS.resolve({"budget": 0.4})      # every key checked, defaults filled in
    COMPRESS.table()                                  # the Markdown table README shows

The solver's settings (and their defaults) come from the Swift core (`uvc.solver.DEFAULTS`).
"""
from __future__ import annotations

import dataclasses
import json
import numbers
import tomllib
from pathlib import Path
from typing import Any, Iterable

from .cost import CONVENTIONS
from .solver import _CONFIG, DEFAULTS as SOLVER_DEFAULTS
from .usdc import GROUPINGS

__all__ = ["Setting", "Stage", "STAGES", "COMPRESS", "FINETUNE", "USDC_SEARCH", "USDC_FINETUNE", "DEMO",
           "PRUNE", "REQUIRED", "GATE_KINDS", "PRUNE_CRITERIA", "COMPRESS_IMPORTANCE", "STATIC_MODES", "BUDGET_MODES", "DISTILLATION_TYPES", "SETTINGS_FILE",
           "load_config"]

# Choices the torch adapter implements (it imports them from here). The gate menu of seed 002
# §3.2: FC; FC+LN+ReLU+FC; Conv1d over tokens; FC+BN+ReLU+FC.
GATE_KINDS = ("linear", "mlp_ln", "conv1d", "mlp_bn")
STATIC_MODES = ("sample", "softmax")
# Importance criteria of one-shot pruning (`uvc.torch.prune`).
PRUNE_CRITERIA = ("activation", "magnitude", "taylor")
# Group importance criteria of the UVC search (`uvc.torch.importance.CRITERIA`).
COMPRESS_IMPORTANCE = ("proj", "group", "taylor")
BUDGET_MODES = ("penalty", "dual")
DISTILLATION_TYPES = ("none", "soft", "hard")
# Where a stage writes the settings it ran with (pass it back with --config to reproduce the run).
SETTINGS_FILE = "settings.json"


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED = _Required()

# Value types: a Python type, or "floats" / "ints" / "strs" (a tuple of them).
_SEQUENCES = {"floats": float, "ints": int, "strs": str}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting of a stage.

    Args:
        name: the key in Python and config files; the CLI flag is ``--`` + name with ``-``.
        type: int, float, bool, str, dict (JSON on the command line), or "floats" / "ints" /
            "strs" (a tuple; comma-separated or space-separated on the command line).
        default: the default, `REQUIRED`, or None (optional: the setting may be left out).
        help: what it does.
        unit: of the value (MACs, epochs, steps, images, ...), or "".
        flags: more command-line spellings (the original UVC scripts' names).
        choices: the allowed values (of each element, for a tuple).
        binary: a bool given as ``0``/``1`` on the command line (the original scripts' style)
            rather than as ``--name`` / ``--no-name``.
    """

    name: str
    type: Any
    default: Any
    help: str
    unit: str = ""
    flags: tuple[str, ...] = ()
    choices: tuple | None = None
    binary: bool = False

    @property
    def cli_flags(self) -> tuple[str, ...]:
        return ("--" + self.name.replace("_", "-"), *(f for f in self.flags if f != "--" + self.name.replace("_", "-")))

    def check(self, value: Any, where: str) -> Any:
        """``value`` as this setting's type; TypeError / ValueError naming ``where``."""
        if value is None and (self.default is None or self.type is dict and self.default == {}):
            return None if self.default is None else {}
        kind = self.type
        if kind in _SEQUENCES:
            element = _SEQUENCES[kind]
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
                if kind == "floats" and isinstance(value, numbers.Real) and not isinstance(value, bool):
                    value = (value,)
                else:
                    raise TypeError(f"{where}: expected a list of {element.__name__}, got {type(value).__name__}")
            out = tuple(_scalar(element, v, where) for v in value)
            for v in out:
                self._check_choice(v, where)
            return out
        if kind is dict:
            if not isinstance(value, dict):
                raise TypeError(f"{where}: expected a dict (JSON object), got {type(value).__name__}")
            return dict(value)
        out = _scalar(kind, value, where)
        self._check_choice(out, where)
        return out

    def _check_choice(self, value: Any, where: str) -> None:
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{where}: must be one of {', '.join(map(str, self.choices))}; got {value!r}")

    def shown_default(self) -> str:
        d = self.default
        if d is REQUIRED:
            return "required"
        if d is None:
            return "—"
        if isinstance(d, bool):
            return ("1" if d else "0") if self.binary else str(d).lower()
        if isinstance(d, tuple):
            return ",".join(map(str, d))
        return json.dumps(d) if isinstance(d, dict) else str(d)


def _scalar(kind: type, value: Any, where: str) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{where}: expected an int, got {value!r}")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise TypeError(f"{where}: expected a string, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Stage:
    """The settings of one stage, by name (see `Setting`).

    Args:
        name: the command (``compress``, ``usdc-search``, ...).
        help: one line on what the stage does.
        settings: its settings, in the order the CLI and README list them.
    """

    name: str
    help: str
    settings: tuple[Setting, ...]

    def __post_init__(self) -> None:
        names = [s.name for s in self.settings]
        assert len(names) == len(set(names)), f"{self.name}: a setting is defined twice"

    def __getitem__(self, name: str) -> Setting:
        for s in self.settings:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.settings)

    def defaults(self) -> dict:
        return {s.name: s.default for s in self.settings if s.default is not REQUIRED}

    def resolve(self, given: dict, *, source: str = "settings") -> dict:
        """Every setting of the stage: ``given`` (checked: known keys, types, choices) over the
        defaults. ``source`` names where ``given`` came from in errors."""
        if not isinstance(given, dict):
            raise TypeError(f"{source}: expected a dict of settings, got {type(given).__name__}")
        unknown = sorted(set(given) - set(self.names))
        if unknown:
            raise ValueError(f"{source}: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for "
                             f"uvc {self.name}; known: {', '.join(self.names)}")
        out = {}
        for s in self.settings:
            if s.name in given:
                out[s.name] = s.check(given[s.name], f"{source}: {s.name}")
            elif s.default is REQUIRED:
                raise ValueError(f"{source}: uvc {self.name} needs {s.name!r} ({s.help})")
            else:
                out[s.name] = dict(s.default) if isinstance(s.default, dict) else s.default
        return out

    def save(self, settings: dict, folder: str | Path) -> Path:
        """Writes the resolved ``settings`` to ``folder``/settings.json (what ``--config`` reads back)."""
        path = Path(folder) / SETTINGS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({k: settings[k] for k in self.names if k in settings}, indent=1) + "\n")
        return path

    def table(self) -> str:
        """The stage's settings as a Markdown table (README's configuration section)."""
        rows = [f"| setting | flags | type | default | unit | what |", "|---|---|---|---|---|---|"]
        for s in self.settings:
            kind = s.type if isinstance(s.type, str) else s.type.__name__
            if s.binary:
                kind = "0/1"
            if s.choices:
                kind += ": " + " / ".join(map(str, s.choices))
            flags = ", ".join(f"`{f}`" for f in s.cli_flags)
            rows.append(f"| `{s.name}` | {flags} | {kind} | {s.shown_default()} | {s.unit} | "
                        f"{s.help.replace('|', '/')} |")
        return "\n".join(rows)


def load_config(path: str | Path) -> dict:
    """The settings in a JSON or TOML (``.toml``) file; keys may use ``-`` for ``_``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"--config {path}: cannot read it ({e.strerror or e})") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise ValueError(f"--config {path}: not valid {kind} ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a table of settings, got {type(data).__name__}")
    return {k.replace("-", "_"): v for k, v in data.items()}


# ---- The settings, grouped as the stages share them --------------------------------------

def _model(default: Any = "demo") -> tuple[Setting, ...]:
    return (
        Setting("model", str, default, "'demo' (the shipped Fashion-MNIST ViT), a timm model name (built with "
                "pretrained=False) or a folder written by an earlier stage", flags=("--model_type",)),
        Setting("checkpoint", str, None, "weights for --model (safetensors or a torch state dict)",
                flags=("--model_path",)),
        Setting("model_kwargs", dict, {}, "more keyword arguments for timm.create_model (JSON), e.g. "
                '{"drop_path_rate": 0.1}'),
        Setting("num_classes", int, None, "classes of the model's head (default: the checkpoint's, else timm's)"),
        Setting("img_size", int, None, "input image size (default: the checkpoint's, else timm's)", "pixels"),
    )


def _teacher() -> tuple[Setting, ...]:
    return (
        Setting("model", str, REQUIRED, "the folder written by the search stage (its stage1_model/)"),
        Setting("teacher", str, "demo", "the dense teacher: 'demo' or a timm model name"),
        Setting("teacher_checkpoint", str, None, "weights of --teacher"),
        Setting("model_kwargs", dict, {}, "more keyword arguments for timm.create_model of the teacher (JSON)"),
        Setting("num_classes", int, None, "classes of the teacher's head (default: its checkpoint's, else timm's)"),
        Setting("img_size", int, None, "the teacher's image size (default: its checkpoint's, else timm's)", "pixels"),
    )


def _training(stage: int, output_dir: str) -> tuple[Setting, ...]:
    return (
        Setting("data", str, "fashion-mnist", "'fashion-mnist' or an ImageFolder root with train/ and val/"),
        Setting("data_dir", str, None, "folder with the Fashion-MNIST IDX files (default: the Debian package's)"),
        Setting("subset", int, None, "train on this many images of a seeded shuffle per epoch", "images"),
        Setting("eval_subset", int, None, "evaluate on this many test images (default: all)", "images"),
        Setting("train_batch_size", int, 128, "images per optimizer step", "images", flags=("--batch-size",)),
        Setting("eval_batch_size", int, 500, "images per evaluation batch", "images"),
        Setting("learning_rate", float, 1e-4 if stage == 1 else 5e-4, "AdamW learning rate of the weights (cosine "
                "schedule)", flags=("--lr",)),
        Setting("weight_decay", float, 0.0 if stage == 1 else 0.05, "AdamW weight decay"),
        Setting("distillation_type", str, "soft", "distillation from the dense teacher", choices=DISTILLATION_TYPES),
        Setting("distillation_alpha", float, 0.1, "weight of the distillation term"),
        Setting("distillation_tau", float, 1.0, "temperature of soft distillation"),
        Setting("seed", int, 0, "every random choice flows from this seed"),
        Setting("output_dir", str, output_dir, "where the stage writes its checkpoint, log, model and settings"),
        Setting("resume", bool, False, "continue the run in --output-dir from its checkpoint"),
        Setting("checkpoint_every", int, 100, "optimizer steps between checkpoints", "steps"),
        Setting("stop_after", int, None, "stop after this many optimizer steps (resume later with --resume)",
                "steps"),
        Setting("device", str, None, "cpu, cuda, cuda:1 ... (default: cuda if available)"),
        Setting("progress", bool, True, "progress bars"),
    )


_SOLVER_HELP = {
    "prune_heads": ("attention heads may be removed", ""),
    "prune_dims": ("value/proj dims may be removed", ""),
    "prune_neurons": ("MLP neurons may be removed", ""),
    "skip_blocks": ("block parts (MHSA, MLP) may be skipped", ""),
    "gate_granularity": ("one skip gate per block (as UVC) or one per MHSA / MLP part", ""),
    "gate_sampler": ("how a gate is sampled: Gumbel-softmax, its one-draw sigmoid form, or soft-L0", ""),
    "straight_through": ("forward the hard 0/1 gate sample", ""),
    "warmup_epochs": ("weight-only training before the search starts", "epochs"),
    "lr_counts": ("largest step of the removal counts per optimizer step (one value, or heads, dims, neurons)",
                  "fraction of a layer's groups"),
    "hysteresis": ("how far past a half-way point a count moves before the integer count follows", "groups"),
    "gate_lr": ("learning rate of the gate logits", ""),
    "gating_weight": ("weight of the budget term in the gate gradient", ""),
    "gating_interval": ("optimizer steps averaged per gate update", "steps"),
    "gate_momentum": ("momentum of the gate update", ""),
    "gate_init": ("initial log-odds that a block part runs", ""),
    "z_lr": ("learning rate of the budget dual z", ""),
    "zlr_gamma": ("factor of the z learning rate at each zlr_schedule epoch", ""),
    "z_grad_clip": ("bound on |MACs ratio − budget| per z step", ""),
    "z_init": ("initial z", ""),
    "dual_lr": ("learning rate of the group duals", ""),
    "dual_init": ("initial group duals", ""),
    "tau": ("gate sampling temperature", ""),
    "tau_decay": ("factor of tau per search epoch", ""),
    "tau_min": ("lower bound of tau", ""),
    "eps": ("soft-L0 ε", ""),
    "eps_decay": ("factor of ε per search epoch", ""),
    "prune_tokens": ("learn how many tokens each block keeps (the rest fused into one by attention)", ""),
    "lr_tokens": ("largest step of a block's token removal per optimizer step", "fraction of the patches"),
    "budget_damping": ("ρ of the augmented-Lagrangian budget term", ""),
    "qk_keep": ("query/key dims every kept head keeps, priced from the first step (those whose query and key "
                "rows have the largest norm product, fixed for the search); 1 keeps all, as UVC",
                "fraction of a head's q/k dims"),
    "zlr_schedule": ("epochs at which the z learning rate is multiplied by zlr_gamma", "epochs"),
}
# The original UVC scripts' spellings.
_SOLVER_FLAGS = {"skip_blocks": ("--enable_block_gating",), "prune_tokens": ("--enable_patch_gating",),
                 "gate_lr": ("--glr",), "zlr_schedule": ("--zlr_schedule_list",),
                 **{n: ("--" + n,) for n in ("prune_heads", "prune_dims", "prune_neurons", "gate_granularity",
                                              "gating_weight", "warmup_epochs", "z_grad_clip", "eps_decay")}}


def _solver() -> tuple[Setting, ...]:
    """The solver's settings, with the core's names, kinds, choices and defaults."""
    out = []
    for e in _CONFIG:
        name = e["name"]
        if name == "budget":
            continue
        kind = {"flag": bool, "choice": str, "int": int}.get(e["kind"], float if e["count"] == 1 else "floats")
        help_text, unit = _SOLVER_HELP[name]
        out.append(Setting(name, kind, SOLVER_DEFAULTS[name], help_text, unit, flags=_SOLVER_FLAGS.get(name, ()),
                           choices=tuple(e["choices"]) or None, binary=kind is bool))
    help_text, unit = _SOLVER_HELP["zlr_schedule"]
    out.append(Setting("zlr_schedule", "floats", SOLVER_DEFAULTS["zlr_schedule"], help_text, unit,
                       flags=_SOLVER_FLAGS["zlr_schedule"]))
    return tuple(out)


def _usdc_budget() -> tuple[Setting, ...]:
    return (
        Setting("target", float, 0.6, "wanted average MACs over the dense MACs, gate networks included",
                "fraction of MACs"),
        Setting("gamma", float, 100.0, "weight of the resource loss γ·(F − target)²"),
        Setting("budget_mode", str, "penalty", "penalty: the paper's γ·(F − target)²; dual: z·(F − target), z by "
                "dual ascent", choices=BUDGET_MODES),
        Setting("dual_lr", float, 1.0, "step of z per optimizer step (dual mode)"),
        Setting("gate_lr", float, 0.03, "learning rate of the gate networks"),
        Setting("convention", str, "uvc", "what the MACs count", choices=tuple(sorted(CONVENTIONS))),
        Setting("latency_table", str, None, "a latency table made by `uvc profile` for this model at the batch size "
                "and on the device you deploy on: the budget counts its ms (--target, --static-target: fractions of "
                "its dense latency; the gate networks are timed there)"),
    )


COMPRESS = Stage("compress", "stage 1: search the architecture under the budget and export it", (
    *_model(),
    Setting("budget", float, 0.5, "fraction of the dense MACs to keep, in (0, 1]", "fraction of MACs"),
    Setting("budget_macs", float, None, "the budget in absolute MACs (overrides --budget)", "MACs"),
    Setting("budget_latency", float, None, "the budget as a fraction of the dense latency of --latency-table "
            "(replaces --budget; widths snap to the table's grid)", "fraction of ms"),
    Setting("latency_table", str, None, "a latency table made by `uvc profile` for this model at the batch size and "
            "on the device you deploy on (needed by --budget-latency)"),
    Setting("num_epochs", int, 30, "epochs of the search, warm-up included", "epochs", flags=("--num_epochs",
                                                                                             "--epochs")),
    Setting("convention", str, "uvc", "what the budget counts", choices=tuple(sorted(CONVENTIONS))),
    Setting("fit_budget", bool, True, "fit the exported plan to the budget: trim it where the search ended over the "
            "budget, then widen it while a value dim or neuron still fits; only the kinds the search prunes move (the "
            "exported model then differs from the searched, masked one where it moved; --no-fit-budget: export the search's committed counts as they "
            "are)"),
    Setting("enable_pruning", bool, True, "0: remove no heads, value dims or neurons (whatever --prune-* say)",
            flags=("--enable_pruning",), binary=True),
    *_solver(),
    Setting("importance", str, "taylor", "what the solver scores each value dim and neuron by: proj (squared norm of "
            "its attn.proj / mlp.fc2 input column), group (squared norm of all its coupled weights: qkv's v row, "
            "fc1 rows, biases, the column) or taylor (first-order loss change: absolute Σ w·∂L/∂w over those weights, "
            "moving average over steps)",
            choices=COMPRESS_IMPORTANCE),
    Setting("rewind", bool, False, "export the searched plan with the dense model's weights, as they were before "
            "the search trained and shrank them, instead of the search's own (the start of stage 2; with "
            "--reconstruct, refit from there)"),
    Setting("reconstruct", bool, False, "refit the exported model's proj / fc2 columns by least squares against the "
            "dense model on --calibration training images (the start of stage 2)"),
    Setting("calibration", int, 1024, "training images the reconstruction fits on", "images"),
    *_training(1, "runs/uvc"),
))

FINETUNE = Stage("finetune", "stage 2: fine-tune the exported architecture with distillation", (
    *_teacher(),
    Setting("epochs", int, 120, "epochs of fine-tuning", "epochs"),
    *_training(2, "runs/uvc"),
))

USDC_SEARCH = Stage("usdc-search", "USDC stage 1: search static keep probabilities and dynamic group gates under "
                    "the budget, prune the static part, keep the best gates", (
    *_model(),
    Setting("num_epochs", int, 2, "epochs of the search", "epochs", flags=("--num_epochs", "--epochs")),
    Setting("static", bool, True, "search static keep probabilities of heads, neuron groups and block parts",
            binary=True),
    Setting("dynamic", bool, True, "search dynamic gates", binary=True),
    Setting("grouping", str, "mixed", "how training batches are cut for the gates: mixed (half the batch in halving "
            "groups, half per sample), USDC's halving groups, per sample, per batch", choices=GROUPINGS),
    Setting("static_mode", str, "sample", "the forward pass multiplies by a straight-through keep sample, or by a0 "
            "as in the paper", choices=STATIC_MODES),
    Setting("arch_lr", float, 0.1, "learning rate of the architecture logits"),
    Setting("gate_kinds", "strs", GATE_KINDS, "the gate network menu", choices=GATE_KINDS),
    Setting("gate_hidden", int, 16, "hidden width of the gate networks"),
    Setting("gate_kernel", int, 3, "kernel size of the conv1d gate"),
    Setting("gate_init", float, 2.0, "initial log-odds that a block part runs"),
    Setting("keep_init", float, 0.95, "initial static keep probability"),
    Setting("neuron_group_size", int, 8, "MLP neurons per static keep decision", "neurons"),
    Setting("tau", float, 1.0, "temperature of the gate and static samples"),
    Setting("static_target", float, None, "also pull the static part alone to this ratio of the dense MACs",
            "fraction of MACs"),
    Setting("static_tau", "floats", (1.0, 0.05), "temperature of the static samples: start, end (annealed)"),
    *_usdc_budget(),
    *_training(1, "runs/usdc"),
))

USDC_FINETUNE = Stage("usdc-finetune", "USDC stage 2: fine-tune the pruned model with its dynamic gates", (
    *_teacher(),
    Setting("epochs", int, 2, "epochs of fine-tuning", "epochs"),
    *_usdc_budget(),
    *_training(2, "runs/usdc"),
))

PRUNE = Stage("prune", "one-shot: score, allocate the budget with the cost model, export and refit by least "
              "squares, no training", (
    *_model(),
    Setting("budget", float, 0.5, "fraction of the dense MACs to keep, in (0, 1]", "fraction of MACs"),
    Setting("convention", str, "uvc", "what the budget counts", choices=tuple(sorted(CONVENTIONS))),
    Setting("criterion", str, "activation", "importance of each head, value dim and neuron: activation energy (no "
            "labels), weight magnitude, or first-order Taylor (labels)", choices=PRUNE_CRITERIA),
    Setting("calibration", int, 1024, "training images to score and fit on", "images"),
    Setting("reconstruct", bool, True, "refit the kept proj / fc2 columns and biases by ridge least squares"),
    Setting("ridge", float, 1e-3, "ridge of the fits, relative to the mean diagonal of each Gram matrix"),
    Setting("data", str, "fashion-mnist", "'fashion-mnist' or an ImageFolder root with train/ and val/"),
    Setting("data_dir", str, None, "folder with the Fashion-MNIST IDX files (default: the Debian package's)"),
    Setting("batch_size", int, 256, "images per calibration batch", "images"),
    Setting("eval_subset", int, None, "evaluate on this many test images (default: all)", "images"),
    Setting("eval_batch_size", int, 500, "images per evaluation batch", "images"),
    Setting("evaluate", bool, True, "measure the dense and the pruned model's accuracy on the test split"),
    Setting("seed", int, 0, "every random choice flows from this seed"),
    Setting("output_dir", str, "runs/prune", "where the pruned model, plan, summary and settings go"),
    Setting("device", str, None, "cpu, cuda, cuda:1 ... (default: cuda if available)"),
    Setting("progress", bool, True, "progress bars"),
))

DEMO = Stage("demo", "compress the shipped Fashion-MNIST ViT end to end (UVC to a budget, or USDC's comparison)", (
    Setting("method", str, "uvc", "uvc: UVC to the budget; usdc: static, dynamic and static + dynamic at the same "
            "average MACs", choices=("uvc", "usdc")),
    Setting("budget", float, None, "fraction of the dense MACs to keep (uvc 0.5, usdc 0.6)", "fraction of MACs"),
    Setting("search_epochs", int, None, "epochs of stage 1 (uvc 4, usdc 2)", "epochs"),
    Setting("finetune_epochs", int, None, "epochs of stage 2 (uvc 4, usdc 2)", "epochs"),
    Setting("subset", int, None, "training images per epoch (uvc 20000, usdc 10000; 60000 = all)", "images"),
    Setting("output_dir", str, None, "where everything goes (runs/demo, runs/usdc_demo)"),
    Setting("seed", int, 0, "every random choice flows from this seed"),
    Setting("device", str, None, "cpu, cuda, ... (default cpu)"),
    Setting("tokens", bool, False, "uvc: also learn how many tokens each block keeps"),
    Setting("budget_latency", float, None, "budget a fraction of the dense CPU latency instead of MACs (profiles "
            "the demo model first, into <output_dir>/latency.json; usdc: every row, gate networks timed too)",
            "fraction of ms"),
    Setting("latency_batch_size", int, 1, "the batch size the latency table is measured at", "images"),
    Setting("gate_granularity", str, SOLVER_DEFAULTS["gate_granularity"], "uvc: one skip gate per block (as UVC) or "
            "one per MHSA / MLP part (finer steps for a latency budget that skips parts)",
            choices=next(tuple(e["choices"]) for e in _CONFIG if e["name"] == "gate_granularity")),
    Setting("methods", "strs", None, "usdc: the rows to run (default all)",
            flags=("--usdc-methods",), choices=("uvc", "static", "dynamic", "usdc", "usdc_sample", "usdc_mixed")),
    Setting("batch_sizes", "ints", None, "usdc: inference batch sizes (1, 8, 256)", "images"),
    Setting("eval_subset", int, None, "usdc: test images to evaluate (default all)", "images"),
    Setting("gamma", float, None, "usdc: weight of the resource loss (100)"),
    Setting("budget_mode", str, None, "usdc: budget term (penalty)", choices=BUDGET_MODES),
    Setting("static_target", float, None, "usdc: the static part's ratio of the dense MACs in static + dynamic "
            "runs (0.75)", "fraction of MACs"),
))

STAGES: dict[str, Stage] = {s.name: s for s in (COMPRESS, FINETUNE, PRUNE, USDC_SEARCH, USDC_FINETUNE, DEMO)}
