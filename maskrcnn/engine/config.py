"""Training configuration: a YAML file plus `key=value` overrides, checked before anything runs.

    cfg = load_config("shapes_cpu.yaml", ["solver.base_lr=0.01", "data.train_annotations=a.json", "data.train_images=a"])

A config has four sections. `model` is a preset name plus any `ModelConfig` option (torchvision's
keyword names); the number of classes and their names come from the training data, never from
the config. `data`, `solver` and `train` are the dataclasses below. Every key and every value is
validated up front, so a typo fails in the first second with the key's name and the known keys,
not hours into a run.

Values in overrides are parsed as YAML: `solver.steps=[600,800]`, `train.eval_period=0`,
`model.weights=null`.
"""
from __future__ import annotations

import difflib
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..io import DataError, read_text
from ..modeling.build import PRESETS, ModelConfig
from ..modeling.config_checks import ModelConfigError

PACKAGED_CONFIGS = Path(__file__).resolve().parent.parent / "configs"

# Model options that the data decides (DETR #23, #108: class counts baked into builders).
_FROM_DATA = ("num_classes", "class_names")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key."""


@dataclass
class DataConfig:
    train_annotations: str = ""  # COCO instances JSON
    train_images: str = ""  # folder the JSON's file_names are relative to
    val_annotations: str | None = None  # periodic evaluation; none if unset
    val_images: str | None = None
    hflip_prob: float = 0.5
    num_workers: int = 2  # DataLoader worker processes per training process
    skip_bad: bool = False  # drop bad annotations/images (and count them) instead of stopping
    check_files: bool = True  # every image's existence, header and size checked before training starts
    allow_outside_image_dir: bool = False  # follow absolute / `..` file_names out of the image folder


@dataclass
class SolverConfig:
    batch_size: int = 16  # images per iteration, summed over all processes
    max_iter: int = 90000
    base_lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    schedule: str = "step"  # "step" (x gamma at each of `steps`) or "cosine" (to 0 at max_iter)
    steps: list[int] = field(default_factory=lambda: [60000, 80000])
    gamma: float = 0.1
    warmup_iters: int = 1000
    warmup_factor: float = 0.001  # lr starts at base_lr * warmup_factor
    warmup_method: str = "linear"  # "linear" or "constant"
    clip_grad_norm: float | None = None  # max total L2 norm of the gradients; None: no clipping
    amp: bool = True  # float16 autocast + GradScaler on CUDA; ignored on CPU


@dataclass
class TrainConfig:
    output_dir: str = "output"
    seed: int = 0
    device: str = "auto"  # "auto" (CUDA, else MPS, else CPU), "cpu", "cuda", "cuda:N", "mps"
    checkpoint_period: int = 5000  # iterations between checkpoints (and one at the end)
    keep_checkpoints: int = 3  # the last K periodic checkpoints stay on disk
    eval_period: int = 0  # iterations between evaluations on data.val_*; 0: only at the end
    eval_batch_size: int = 4
    log_period: int = 20  # iterations between metric records (JSON lines, TensorBoard)
    progress: bool = True  # rank 0: a bar on a terminal, else a plain line every 30 s
    tensorboard: bool = True
    plots: bool = True  # results.png and plots/ at the end (needs matplotlib, the [plots] extra)
    num_threads: int = 0  # torch CPU threads per process; 0 leaves torch's default


@dataclass
class Config:
    model: dict[str, Any]
    data: DataConfig
    solver: SolverConfig
    train: TrainConfig

    @property
    def preset(self) -> str:
        return self.model["preset"]

    def model_overrides(self) -> dict[str, Any]:
        """ModelConfig options on top of the preset (without preset and weights)."""
        return {k: v for k, v in self.model.items() if k not in ("preset", "weights")}

    def to_dict(self) -> dict[str, Any]:
        return {"model": dict(self.model), "data": asdict(self.data), "solver": asdict(self.solver),
                "train": asdict(self.train)}


_SECTIONS = {"data": DataConfig, "solver": SolverConfig, "train": TrainConfig}


def resolve_config_path(path: str | Path) -> Path:
    """A file path, or the name of a config shipped in the package (`shapes_cpu.yaml`)."""
    p = Path(path)
    if p.is_file():
        return p
    for candidate in (PACKAGED_CONFIGS / p.name, PACKAGED_CONFIGS / f"{p.name}.yaml"):
        if candidate.is_file():
            return candidate
    shipped = ", ".join(sorted(c.name for c in PACKAGED_CONFIGS.glob("*.yaml")))
    raise ConfigError(f"config file {path} not found (configs shipped with maskrcnn: {shipped})")


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (or start from defaults when path is None) and apply overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = resolve_config_path(path)
        try:
            raw = yaml.safe_load(read_text(path, what="config file")) or {}
        except DataError as e:  # not UTF-8 (nor UTF-16/32 with a byte-order mark), or unreadable
            raise ConfigError(str(e)) from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (model, data, solver, train)")
    for item in overrides:
        key, value = parse_override(item)
        section, _, name = key.partition(".")
        if not isinstance(raw.get(section, {}), dict):
            raise ConfigError(f"section {section!r} is not a mapping")
        raw.setdefault(section, {})[name] = value
    return build_config(raw, source=str(path) if path else "defaults")


def parse_override(item: str) -> tuple[str, Any]:
    """'solver.base_lr=0.01' -> ('solver.base_lr', 0.01). Values are read as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value (e.g. solver.base_lr=0.01)")
    key, text = item.split("=", 1)
    key = key.strip()
    if key.count(".") != 1 or not all(key.split(".")):
        raise ConfigError(f"override key {key!r} must be section.key (e.g. solver.max_iter), one dot")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from None
    return key, value


def _unknown(kind: str, name: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown {kind} {name!r}{hint}; known: {', '.join(sorted(known))}")


def build_config(raw: dict[str, Any], source: str = "config") -> Config:
    unknown = [k for k in raw if k not in ("model", *_SECTIONS)]
    if unknown:
        raise _unknown(f"section in {source}:", unknown[0], ["model", *_SECTIONS])
    sections = {}
    for name, cls in _SECTIONS.items():
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {name!r} must be a mapping, got {values!r}")
        hints = typing.get_type_hints(cls)
        known = [f.name for f in fields(cls)]
        kwargs = {}
        for key, value in values.items():
            if key not in hints:
                raise _unknown(f"key in section {name!r}:", key, known)
            kwargs[key] = coerce(value, hints[key], f"{name}.{key}")
        sections[name] = cls(**kwargs)
    model = _build_model_section(raw.get("model") or {}, source)
    cfg = Config(model=model, **sections)
    validate(cfg)
    return cfg


def _build_model_section(values: dict[str, Any], source: str) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: section 'model' must be a mapping")
    hints = typing.get_type_hints(ModelConfig)
    known = ["preset", "weights", *(k for k in hints if k not in _FROM_DATA)]
    out: dict[str, Any] = {"preset": "maskrcnn_resnet50_fpn", "weights": None}
    for key, value in values.items():
        if key in _FROM_DATA:
            raise ConfigError(f"model.{key} comes from the training data's categories; remove it from the config")
        if key == "preset":
            if value not in PRESETS:
                raise ConfigError(f"model.preset {value!r} is not a preset; choose one of {', '.join(PRESETS)}")
            out[key] = value
        elif key == "weights":
            out[key] = coerce(value, str | None, "model.weights")
        elif key in hints:
            value = coerce(value, hints[key], f"model.{key}")
            out[key] = list(value) if isinstance(value, tuple) else value  # YAML/JSON friendly
        else:
            raise _unknown("key in section 'model':", key, known)
    return out


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against a type hint, converting only where YAML is ambiguous (1e-4 is a
    string in YAML 1.1; an int where a float is expected is fine)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {hint}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item_type = args[0] if args else Any
        items = [coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ConfigError(f"{key}: expected {hint}, got {value!r}")


def validate(cfg: Config) -> None:
    """Cross-field checks with messages that name the key."""
    s, t, d = cfg.solver, cfg.train, cfg.data
    finite = math.isfinite
    checks = [
        (s.batch_size >= 1, f"solver.batch_size must be >= 1, got {s.batch_size}"),
        (s.max_iter >= 1, f"solver.max_iter must be >= 1, got {s.max_iter}"),
        (finite(s.base_lr) and s.base_lr > 0, f"solver.base_lr must be a finite number > 0, got {s.base_lr}"),
        (finite(s.momentum) and 0 <= s.momentum < 1, f"solver.momentum must be in [0, 1), got {s.momentum}"),
        (finite(s.weight_decay) and s.weight_decay >= 0,
         f"solver.weight_decay must be a finite number >= 0, got {s.weight_decay}"),
        (not s.nesterov or s.momentum > 0, "solver.nesterov needs solver.momentum > 0"),
        (s.schedule in ("step", "cosine"), f"solver.schedule must be 'step' or 'cosine', got {s.schedule!r}"),
        (finite(s.gamma) and s.gamma > 0, f"solver.gamma must be a finite number > 0, got {s.gamma}"),
        (s.warmup_method in ("linear", "constant"),
         f"solver.warmup_method must be 'linear' or 'constant', got {s.warmup_method!r}"),
        (0 < s.warmup_factor <= 1, f"solver.warmup_factor must be in (0, 1], got {s.warmup_factor}"),
        (s.warmup_iters >= 0, f"solver.warmup_iters must be >= 0, got {s.warmup_iters}"),
        (all(step >= 1 for step in s.steps), f"solver.steps must be iterations >= 1, got {s.steps}"),
        (list(s.steps) == sorted(s.steps), f"solver.steps must be increasing, got {s.steps}"),
        (s.clip_grad_norm is None or (finite(s.clip_grad_norm) and s.clip_grad_norm > 0),
         f"solver.clip_grad_norm must be a finite number > 0 or null, got {s.clip_grad_norm}"),
        (t.checkpoint_period >= 1, f"train.checkpoint_period must be >= 1, got {t.checkpoint_period}"),
        (t.keep_checkpoints >= 1, f"train.keep_checkpoints must be >= 1, got {t.keep_checkpoints}"),
        (t.eval_period >= 0, f"train.eval_period must be >= 0 (0: evaluate only at the end), got {t.eval_period}"),
        (t.eval_batch_size >= 1, f"train.eval_batch_size must be >= 1, got {t.eval_batch_size}"),
        (t.log_period >= 1, f"train.log_period must be >= 1, got {t.log_period}"),
        (t.num_threads >= 0, f"train.num_threads must be >= 0 (0: torch's default), got {t.num_threads}"),
        (t.device in ("auto", "cpu", "cuda", "mps") or t.device.startswith("cuda:"),
         f"train.device must be auto, cpu, cuda, cuda:N or mps, got {t.device!r}"),
        (bool(t.output_dir), "train.output_dir must not be empty"),
        (d.num_workers >= 0, f"data.num_workers must be >= 0, got {d.num_workers}"),
        (0.0 <= d.hflip_prob <= 1.0, f"data.hflip_prob must be in [0, 1], got {d.hflip_prob}"),
        ((d.val_annotations is None) == (d.val_images is None),
         "data.val_annotations and data.val_images go together: set both or neither"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    try:  # option types were checked above; this catches what ModelConfig itself rejects
        ModelConfig.from_dict({**PRESETS[cfg.preset], **cfg.model_overrides()})
    except ModelConfigError as e:
        raise ConfigError(f"model.{e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model: {e}") from None


def config_yaml(cfg: Config) -> str:
    """The resolved config as YAML, loadable again with `load_config` (`train --print-config`):
    sections as blocks, lists on one line (`steps: [60000, 80000]`)."""
    return yaml.dump(cfg.to_dict(), Dumper=_ConfigDumper, sort_keys=False)


class _ConfigDumper(yaml.SafeDumper):
    pass


_ConfigDumper.add_representer(
    list, lambda dumper, value: dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True))


def require_data(cfg: Config) -> None:
    """Training needs data paths; checked when a run starts, not when a config is parsed."""
    missing = [f"data.{k}" for k in ("train_annotations", "train_images") if not getattr(cfg.data, k)]
    if missing:
        raise ConfigError(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: configs shipped with "
            "maskrcnn carry no dataset paths; give yours on the command line, e.g. "
            "data.train_annotations=data/train.json data.train_images=data/train "
            "(and data.val_annotations=... data.val_images=... to evaluate)")
