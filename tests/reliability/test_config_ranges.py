"""Every config value is range-checked up front: ConfigError naming the key, before anything is
written; ModelConfig itself refuses out-of-range options (ModelConfigError naming the option)."""
import pytest

from maskrcnn.engine import train as train_module
from maskrcnn.engine.config import ConfigError, load_config
from maskrcnn.modeling.build import ModelConfig
from maskrcnn.modeling.config_checks import CHECKS, ModelConfigError


@pytest.mark.parametrize("override, message", [
    ("model.min_size=-5", "model.min_size must be a positive integer"),
    ("model.min_size=[512, 0]", "model.min_size must be a positive integer"),
    ("model.max_size=0", "model.max_size must be an integer >= 1"),
    ("model.box_score_thresh=1.5", "model.box_score_thresh must be a number in [0, 1], got 1.5"),
    ("model.box_nms_thresh=-0.1", "model.box_nms_thresh must be a number in [0, 1]"),
    ("model.rpn_nms_thresh=.nan", "model.rpn_nms_thresh must be a number in [0, 1], got nan"),
    ("model.rpn_score_thresh=.inf", "model.rpn_score_thresh must be a number in [0, 1], got inf"),
    ("model.rpn_bg_iou_thresh=0.9", "model.rpn_bg_iou_thresh must be <= rpn_fg_iou_thresh"),
    ("model.box_positive_fraction=2", "model.box_positive_fraction must be a number in [0, 1]"),
    ("model.box_detections_per_img=0", "model.box_detections_per_img must be an integer >= 1"),
    ("model.rpn_batch_size_per_image=-1", "model.rpn_batch_size_per_image must be an integer >= 1"),
    ("model.image_std=[1, 0, 1]", "model.image_std must be 3 finite numbers > 0"),
    ("model.image_mean=[0.4, 0.4]", "model.image_mean must be 3 finite numbers"),
    ("model.anchor_sizes=[]", "model.anchor_sizes must be a non-empty list of numbers > 0"),
    ("model.aspect_ratios=[0.5, -1]", "model.aspect_ratios must be a non-empty list of numbers > 0"),
    ("model.trainable_backbone_layers=6", "model.trainable_backbone_layers must be an integer in 0..5"),
    ("model.pixel_scale=0", "model.pixel_scale must be a finite number > 0"),
    ("model.roi_sampling_ratio=-2", "model.roi_sampling_ratio must be an integer >= 0"),
    ("model.input_format=RGBA", "model.input_format must be 'RGB' or 'BGR'"),
    ("model.mask_paste=nearest", "model.mask_paste must be 'torchvision' or 'detectron2'"),
    ("model.bbox_reg_weights=[10, 10, 5, .nan]", "model.bbox_reg_weights must be 4 finite numbers > 0"),
    ("model.min_size=big", "model.min_size"),  # wrong type
    ("model.roi_aligned=1", "model.roi_aligned: expected true or false"),  # wrong type
    ("solver.base_lr=0", "solver.base_lr must be a finite number > 0"),
    ("solver.base_lr=-0.1", "solver.base_lr must be a finite number > 0"),
    ("solver.base_lr=.nan", "solver.base_lr must be a finite number > 0, got nan"),
    ("solver.base_lr=.inf", "solver.base_lr must be a finite number > 0, got inf"),
    ("solver.base_lr=fast", "solver.base_lr: expected a number, got 'fast'"),
    ("solver.batch_size=0", "solver.batch_size must be >= 1, got 0"),
    ("solver.batch_size=-4", "solver.batch_size must be >= 1, got -4"),
    ("solver.momentum=1.0", "solver.momentum must be in [0, 1)"),
    ("solver.weight_decay=-1e-4", "solver.weight_decay must be a finite number >= 0"),
    ("solver.gamma=.nan", "solver.gamma must be a finite number > 0, got nan"),
    ("solver.warmup_factor=.nan", "solver.warmup_factor must be in (0, 1], got nan"),
    ("solver.warmup_iters=-1", "solver.warmup_iters must be >= 0"),
    ("solver.steps=[0, 10]", "solver.steps must be iterations >= 1"),
    ("solver.clip_grad_norm=.nan", "solver.clip_grad_norm must be a finite number > 0 or null, got nan"),
    ("solver.clip_grad_norm=0", "solver.clip_grad_norm must be a finite number > 0 or null"),
    ("solver.max_iter=0", "solver.max_iter must be >= 1"),
    ("train.eval_batch_size=0", "train.eval_batch_size must be >= 1"),
    ("train.num_threads=-1", "train.num_threads must be >= 0"),
    ("train.checkpoint_period=0", "train.checkpoint_period must be >= 1"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints must be >= 1"),
    ("train.output_dir=''", "train.output_dir must not be empty"),
    ("data.hflip_prob=1.5", "data.hflip_prob must be in [0, 1], got 1.5"),
    ("data.hflip_prob=.nan", "data.hflip_prob must be in [0, 1], got nan"),
    ("data.num_workers=-1", "data.num_workers must be >= 0"),
    ("data.check_files=maybe", "data.check_files: expected true or false"),
])
def test_out_of_range_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert type(info.value) is ConfigError
    assert message in str(info.value)


def test_a_bad_value_stops_train_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  min_size: -5\n")
    code = train_module.main(["--config", str(config), f"train.output_dir={out}",
                              "data.train_annotations=a.json", "data.train_images=i"])
    assert code == 2
    assert "model.min_size must be a positive integer or a non-empty list of them, got -5" in capsys.readouterr().err
    assert not out.exists()
    assert config.read_text() == "model:\n  min_size: -5\n"


def test_the_valid_edges_are_accepted():
    cfg = load_config(None, ["model.box_score_thresh=0", "model.rpn_nms_thresh=1", "solver.momentum=0",
                             "solver.weight_decay=0", "data.hflip_prob=1", "model.roi_sampling_ratio=0",
                             "model.norm_eps=0", "data.check_files=false", "data.allow_outside_image_dir=true"])
    assert cfg.data.check_files is False and cfg.data.allow_outside_image_dir is True


@pytest.mark.parametrize("option, value", [
    ("min_size", -5), ("min_size", True), ("box_score_thresh", float("nan")), ("mask_head_channels", 2.5),
    ("variant", "v3"), ("depth", 51), ("first_label", 2), ("anchor_offset", float("inf")),
    ("class_names", ["a", 3]), ("roi_aligned", 0),
])
def test_model_config_refuses_out_of_range_options_by_name(option, value):
    with pytest.raises(ModelConfigError) as info:
        ModelConfig(**{option: value})
    assert type(info.value) is ModelConfigError
    assert info.value.key == option and str(info.value).startswith(f"{option} must be")


def test_every_model_config_option_has_a_check():
    from dataclasses import fields

    assert {f.name for f in fields(ModelConfig)} == set(CHECKS)
