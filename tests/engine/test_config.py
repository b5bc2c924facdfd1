"""Config loading: YAML + key=value overrides, and the errors users get for mistakes."""
from pathlib import Path

import pytest

from maskrcnn.engine.config import PACKAGED_CONFIGS, ConfigError, load_config, parse_override


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_overrides_are_parsed_as_yaml_and_applied(tmp_path):
    cfg = load_config(write(tmp_path, "solver:\n  base_lr: 0.1\n"), [
        "solver.base_lr=0.01", "solver.steps=[10, 20]", "solver.clip_grad_norm=null",
        "train.progress=false", "model.min_size=[96, 128]", "data.val_annotations=v.json", "data.val_images=v",
    ])
    assert cfg.solver.base_lr == 0.01
    assert cfg.solver.steps == [10, 20]
    assert cfg.solver.clip_grad_norm is None
    assert cfg.train.progress is False
    assert cfg.model["min_size"] == [96, 128]
    assert cfg.data.val_annotations == "v.json"


def test_yaml_1_1_exponent_without_dot_is_a_float(tmp_path):
    # PyYAML reads `1e-4` as a string; a float field must still accept it.
    cfg = load_config(write(tmp_path, "solver:\n  weight_decay: 1e-4\n"))
    assert cfg.solver.weight_decay == pytest.approx(1e-4)


@pytest.mark.parametrize("override, message", [
    ("solver.base_lr", "must look like section.key=value"),
    ("base_lr=0.1", "must be section.key"),
    ("solver.lr.x=1", "must be section.key"),
    ("optim.base_lr=0.1", "unknown section"),
    ("solver.base_rl=0.1", "did you mean 'base_lr'"),
    ("solver.max_iter=ten", "solver.max_iter: expected an integer, got 'ten'"),
    ("solver.max_iter=2.5", "expected an integer"),
    ("train.progress=maybe", "expected true or false"),
    ("solver.steps=5", "solver.steps: expected a list"),
    ("solver.schedule=linear", "solver.schedule must be 'step' or 'cosine'"),
    ("solver.steps=[20, 10]", "solver.steps must be increasing"),
    ("model.num_classes=5", "comes from the training data"),
    ("model.preset=resnet9000", "is not a preset"),
    ("model.anchor_size=[8]", "did you mean 'anchor_sizes'"),
    ("data.val_annotations=v.json", "set both or neither"),
    ("solver.base_lr=[0.1", "not valid YAML"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "solver: [unclosed\n"))
    with pytest.raises(ConfigError, match="unknown section"):
        load_config(write(tmp_path, "slover:\n  base_lr: 0.1\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "solver: 3\n"))


def test_parse_override_keeps_equals_signs_in_values():
    assert parse_override("train.output_dir=runs/a=b") == ("train.output_dir", "runs/a=b")


def test_packaged_configs_load_by_name():
    names = sorted(p.name for p in PACKAGED_CONFIGS.glob("*.yaml"))
    assert {"maskrcnn_R50_FPN_coco_1x.yaml", "shapes_cpu.yaml"} <= set(names)
    for name in names:
        load_config(name)  # validates every key and value


def test_coco_config_has_the_papers_schedule():
    cfg = load_config("maskrcnn_R50_FPN_coco_1x.yaml")
    s = cfg.solver
    assert (s.max_iter, s.batch_size, s.base_lr, s.steps, s.gamma) == (90000, 16, 0.02, [60000, 80000], 0.1)
    assert (s.warmup_iters, s.warmup_factor, s.warmup_method) == (1000, 0.001, "linear")
    assert (s.momentum, s.weight_decay) == (0.9, 1e-4)
    assert cfg.preset == "maskrcnn_resnet50_fpn" and cfg.model["min_size"][-1] == 800


def test_repo_root_configs_symlink_points_at_the_package():
    root = Path(__file__).resolve().parents[2] / "configs"
    if root.exists():
        assert root.resolve() == PACKAGED_CONFIGS.resolve()
