"""Training configuration: a YAML file plus `key=value` overrides, checked before anything runs.

    cfg = load_config("configs/shapes_cpu.yaml", ["solver.base_lr=0.01", "train.output_dir=out"])

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
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..modeling.build import PRESETS, ModelConfig

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
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda"
    checkpoint_period: int = 5000  # iterations between checkpoints (and one at the end)
    keep_checkpoints: int = 3  # the last K periodic checkpoints stay on disk
    eval_period: int = 0  # iterations between evaluations on data.val_*; 0: only at the end
    eval_batch_size: int = 4
    log_period: int = 20  # iterations between metric records (JSON lines, TensorBoard)
    progress: bool = True  # tqdm progress bar on rank 0
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
            raw = yaml.safe_load(path.read_text()) or {}
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
    checks = [
        (s.batch_size >= 1, "solver.batch_size must be >= 1"),
        (s.max_iter >= 1, "solver.max_iter must be >= 1"),
        (s.base_lr > 0, "solver.base_lr must be > 0"),
        (s.schedule in ("step", "cosine"), f"solver.schedule must be 'step' or 'cosine', got {s.schedule!r}"),
        (s.warmup_method in ("linear", "constant"),
         f"solver.warmup_method must be 'linear' or 'constant', got {s.warmup_method!r}"),
        (0 < s.warmup_factor <= 1, "solver.warmup_factor must be in (0, 1]"),
        (s.warmup_iters >= 0, "solver.warmup_iters must be >= 0"),
        (list(s.steps) == sorted(s.steps), f"solver.steps must be increasing, got {s.steps}"),
        (s.clip_grad_norm is None or s.clip_grad_norm > 0, "solver.clip_grad_norm must be > 0 or null"),
        (t.checkpoint_period >= 1, "train.checkpoint_period must be >= 1"),
        (t.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1"),
        (t.eval_period >= 0, "train.eval_period must be >= 0 (0: evaluate only at the end)"),
        (t.log_period >= 1, "train.log_period must be >= 1"),
        (t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:"),
         f"train.device must be auto, cpu or cuda, got {t.device!r}"),
        (d.num_workers >= 0, "data.num_workers must be >= 0"),
        (0.0 <= d.hflip_prob <= 1.0, "data.hflip_prob must be in [0, 1]"),
        ((d.val_annotations is None) == (d.val_images is None),
         "data.val_annotations and data.val_images go together: set both or neither"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    try:  # option types were checked above; this catches what ModelConfig itself rejects
        ModelConfig.from_dict({**PRESETS[cfg.preset], **cfg.model_overrides()})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model: {e}") from None


def require_data(cfg: Config) -> None:
    """Training needs data paths; checked when a run starts, not when a config is parsed."""
    if not cfg.data.train_annotations or not cfg.data.train_images:
        raise ConfigError("data.train_annotations and data.train_images must be set "
                          "(in the YAML or as data.train_annotations=PATH on the command line)")
