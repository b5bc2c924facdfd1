"""`maskrcnn train`: the training loop, readable top to bottom.

    maskrcnn train --config shapes_cpu.yaml data.train_annotations=A.json data.train_images=DIR train.output_dir=out
    maskrcnn train --config shapes_cpu.yaml data.train_annotations=A.json data.train_images=DIR train.output_dir=out --resume
    torchrun --nproc_per_node=8 -m maskrcnn train --config maskrcnn_R50_FPN_coco_1x.yaml data.train_annotations=...

Each iteration: forward -> sum the five losses -> NaN guard -> backward -> optional gradient
clipping -> SGD step -> LR schedule step. Checkpoints every `train.checkpoint_period`
iterations (see checkpointer.py for why they survive a kill at any instant), evaluation every
`train.eval_period`, metrics to metrics.jsonl, TensorBoard and the progress bar.

Exact resume: everything random is restored or recomputed from the seed. The data order and
each sample's augmentation are functions of (seed, stream position) (sampler.py); RPN/RoI
sampling and multi-scale choice use torch's RNG, saved per process in every checkpoint. On CPU
a run interrupted and resumed ends with bit-identical weights to one that never stopped.

With torchrun (RANK/WORLD_SIZE set) the model is wrapped in DistributedDataParallel, NCCL on
CUDA and gloo on CPU; `solver.batch_size` is the total over all processes; only rank 0 writes.
"""
from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint.native import save_model
from ..cli import HelpFormatter
from ..device import DeviceError, resolve_device
from ..io.progress import progress_bar
from ..data import CocoDataset, DataError, RandomHorizontalFlip, collate_fn, write_json_atomic
from ..io import check_writable, describe_os_error
from ..modeling.build import PRESETS, ModelConfig, build_model
from ..modeling.mask_rcnn import MaskRCNN
from . import distributed
from .checkpointer import Checkpointer, capture_rng_state, load_initial_weights, restore_rng_state
from .divergence import LossHistory, nan_message
from .config import Config, ConfigError, config_yaml, load_config, require_data
from .metrics import MetricsWriter
from .sampler import SeededSamples, TrainingSampler
from .solver import LRScheduler, build_optimizer


RANDOM_WEIGHTS_WARNING = (
    "WARNING: training from RANDOM weights: model.weights is not set. That suits the synthetic "
    "shapes demo; on real data it needs far more iterations and data to get anywhere. To fine-tune "
    "from COCO weights: --config finetune_coco_to_custom.yaml, or model.weights=torchvision:maskrcnn_resnet50_fpn"
)


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names the iteration, the loss terms and the
    last good checkpoint (which is left as it was)."""


@dataclass
class TrainResult:
    model: MaskRCNN  # the trained model (unwrapped from DDP), in train mode
    iteration: int
    output_dir: Path
    final_weights: Path | None  # model_final.safetensors (rank 0 only)
    eval_results: dict[str, Any] = field(default_factory=dict)
    skipped: int = 0  # bad images / annotations dropped under data.skip_bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="maskrcnn train", description="Train Mask R-CNN from a YAML config.", formatter_class=HelpFormatter,
        epilog="Overrides: section.key=value, e.g. solver.base_lr=0.01 train.output_dir=runs/a. "
               "Configs shipped with maskrcnn can be named without a path: --config shapes_cpu.yaml.",
    )
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in train.output_dir")
    parser.add_argument("--accept-changed-run", action="store_true",
                        help="with --resume: continue even though solver.batch_size, train.seed or the training "
                             "data differ from the checkpoint's (the run is then not the one that was started)")
    parser.add_argument("--skip-bad", action="store_true", help="skip bad images/annotations and report how many")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (the file with the overrides applied) as YAML and exit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_intermixed_args(argv)  # flags may come after the key=value overrides
    try:
        cfg = load_config(args.config, args.overrides)
        if args.skip_bad:
            cfg.data.skip_bad = True
        if args.print_config:
            print(config_yaml(cfg), end="")
            return 0
        result = train(cfg, resume=args.resume, accept_changed_run=args.accept_changed_run)
    except NonFiniteLossError as e:
        print(f"maskrcnn train: {e}", file=sys.stderr)
        return 3
    except (ConfigError, DataError, FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"maskrcnn train: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        raise  # `maskrcnn train ... | head`: the CLI ends quietly, as a closed pipe should
    except OSError as e:  # disk full, permission denied, read-only file system: say so, with the path
        print(f"maskrcnn train: {describe_os_error(e, e.filename) if e.filename else e.strerror or e}", file=sys.stderr)
        return 2
    if result.final_weights is not None:
        print(f"done: {result.iteration} iterations; weights {result.final_weights}")
    return 0


def train(cfg: Config, *, resume: bool = False, accept_changed_run: bool = False) -> TrainResult:
    """Train as `cfg` says; joins (and leaves) the process group when launched by torchrun.

    resume: continue from the last checkpoint in train.output_dir. It is refused (ConfigError)
    when the batch size, the seed or the training data (annotation file contents, image list)
    differ from the checkpoint's, unless `accept_changed_run`."""
    info = distributed.env_info()
    device = select_device(cfg.train.device, info)
    distributed.init(device, info)
    try:
        return _train(cfg, resume, info, device, accept_changed_run)
    finally:
        distributed.shutdown()


def select_device(name: str, info: distributed.DistInfo) -> torch.device:
    """`train.device` by the package's one rule (maskrcnn.device); under torchrun "auto" and
    "cuda" mean this process's GPU."""
    try:
        device = resolve_device(name, local_rank=info.local_rank)
    except DeviceError as e:
        raise ConfigError(f"train.device: {e}") from None
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def build_datasets(cfg: Config) -> tuple[CocoDataset, CocoDataset | None]:
    d = cfg.data
    files = dict(skip_bad=d.skip_bad, check_files=d.check_files, allow_outside_image_dir=d.allow_outside_image_dir)
    train_set = CocoDataset(d.train_annotations, d.train_images, transforms=RandomHorizontalFlip(d.hflip_prob), **files)
    val_set = CocoDataset(d.val_annotations, d.val_images, **files) if d.val_annotations else None
    if d.skip_bad:
        # Find unreadable images now, in this process: skips found later inside DataLoader
        # workers could not be counted, and in evaluation a bad image would be replaced by its
        # neighbour, whose detections would then be counted twice.
        for dataset in (train_set, val_set):
            if dataset is not None:
                dataset.verify_images()
    return train_set, val_set


def build_training_model(cfg: Config, train_set: CocoDataset) -> MaskRCNN:
    """The preset plus config overrides; classes, their names and their numbering (labels
    1..K, as the dataset gives them, also for Detectron2 presets) from the training data."""
    if cfg.model_overrides().get("first_label", 1) != 1:
        raise ConfigError("model.first_label: training numbers the classes 1..K as the dataset does "
                          "(first_label 0, Detectron2's class index, is for its released checkpoints)")
    options = {**PRESETS[cfg.preset], **cfg.model_overrides(),
               "num_classes": train_set.num_classes + 1, "class_names": train_set.class_names,
               "first_label": 1}
    options.update(keypoint_options(options, train_set))
    return build_model(ModelConfig.from_dict(options))


# Options that change what the network is, named beside the preset in the training log: a preset
# name alone would misname, say, maskrcnn_resnet18_small trained with model.depth=50.
_ARCHITECTURE_OPTIONS = ("architecture", "variant", "depth", "groups", "width_per_group", "backbone_norm",
                         "head_norm", "mask_on", "mask_loss", "mask_head", "class_agnostic_masks", "roi_extractor")


def describe_model(cfg: Config) -> str:
    """The preset's name, plus the architecture options the config sets to other values."""
    preset = ModelConfig.from_dict(PRESETS[cfg.preset])
    changed = [f"{key}={value}" for key, value in cfg.model_overrides().items()
               if key in _ARCHITECTURE_OPTIONS and getattr(preset, key) != value]
    return cfg.preset + (f" ({', '.join(changed)})" if changed else "")


def data_fingerprint(dataset: CocoDataset) -> dict[str, str]:
    """SHA-256 of the annotation file's bytes and of the image list (file names in dataset
    order): what a resumed run must train on to continue the same run."""
    names = "\n".join(str(dataset.image_info(i)["file_name"]) for i in range(len(dataset)))
    return {"annotations_sha256": hashlib.sha256(Path(dataset.annotation_file).read_bytes()).hexdigest(),
            "images_sha256": hashlib.sha256(names.encode("utf-8")).hexdigest(), "num_images": str(len(dataset))}


def check_same_run(state: dict[str, Any], current: dict[str, Any], checkpoint: Path) -> None:
    """Raise ConfigError listing what differs between a checkpoint's run and this config."""
    labels = {"batch_size": "solver.batch_size", "seed": "train.seed", "data": "the training data"}
    changed = []
    for key, label in labels.items():
        if key in state and state[key] != current[key]:
            was, now = state[key], current[key]
            if key == "data":
                what = [k for k in now if was.get(k) != now[k]]
                changed.append(f"{label} ({', '.join(w.replace('_sha256', '') for w in what)} changed since the "
                               f"checkpoint; {current['data_source']})")
            else:
                changed.append(f"{label} (checkpoint {was}, config now {now})")
    if changed:
        raise ConfigError(f"--resume from {checkpoint}: this is not the run that was checkpointed: "
                          f"{'; '.join(changed)}. Restore the old settings, start a new train.output_dir, or pass "
                          "--accept-changed-run to continue anyway (the data order and schedule then differ "
                          "from an uninterrupted run)")


def keypoint_options(options: dict, train_set: CocoDataset) -> dict:
    """A keypoint branch for data with keypoints (their number, names and skeleton from the
    data), unless the config turns it off with num_keypoints: 0."""
    names, asked = train_set.keypoint_names, options.get("num_keypoints")
    if names is None:
        if asked:
            raise ConfigError(f"model.num_keypoints={asked} but {train_set.annotation_file} has no category "
                              "with 'keypoints' names")
        return {}
    if asked == 0:
        return {}
    if asked is not None and asked != len(names):
        raise ConfigError(f"model.num_keypoints={asked} but {train_set.annotation_file} names {len(names)} keypoints")
    return {"num_keypoints": len(names), "keypoint_names": names, "keypoint_skeleton": train_set.keypoint_skeleton}


def _train(cfg: Config, resume: bool, info: distributed.DistInfo, device: torch.device,
           accept_changed_run: bool = False) -> TrainResult:
    require_data(cfg)
    s, t = cfg.solver, cfg.train
    if s.batch_size % info.world_size:
        raise ConfigError(f"solver.batch_size={s.batch_size} must be divisible by the {info.world_size} processes")
    per_rank = s.batch_size // info.world_size
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    # Each process gets its own model RNG stream (RPN / RoI sampling); data order is shared.
    torch.manual_seed(t.seed + info.rank)
    np.random.seed((t.seed + info.rank) % 2**32)
    random.seed(t.seed + info.rank)
    out = Path(t.output_dir)
    if info.is_main:  # an unwritable output folder found now, not at the first checkpoint
        check_writable(out, folder=True)

    def log(message: str, file=None) -> None:  # rank 0 only; tqdm.write keeps the bar intact
        if info.is_main:
            tqdm.write(message, file=file)

    train_set, val_set = build_datasets(cfg)
    fingerprint = data_fingerprint(train_set)
    model = build_training_model(cfg, train_set).to(device)
    distributed.sync_batch_norm(model, device, info)  # "sync_bn" layers, when there are several processes
    optimizer = build_optimizer(model, s)
    scheduler = LRScheduler(optimizer, s)
    use_amp = s.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    # COCO category ids travel with the weights, so predictions can be written as COCO results.
    metadata = {"category_ids": {str(k): v for k, v in train_set.label_to_category_id.items()}}
    checkpointer = Checkpointer(out, keep=t.keep_checkpoints, metadata=metadata)

    start_iter = 0
    record = checkpointer.latest()
    if any(distributed.all_gather_object(record is not None and not resume)):
        raise RuntimeError(f"{out} already holds checkpoints; pass --resume to continue that run, "
                           "or choose another train.output_dir")
    if resume and record is not None:
        # on the CPU: RNG states must be CPU tensors; the optimizer moves its own state to the params
        state = checkpointer.load(record, model, map_location="cpu")
        if not accept_changed_run:
            check_same_run(state, {"batch_size": s.batch_size, "seed": t.seed, "data": fingerprint,
                                   "data_source": str(train_set.annotation_file)}, record["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_iter = record["iteration"]
        checkpointer.protect = record.get("healthy")
        rng = state["rng"]
        if len(rng) == info.world_size:
            restore_rng_state(rng[info.rank])
        else:
            log(f"warning: checkpoint saved by {len(rng)} processes, resuming with {info.world_size}: "
                "the run continues but is not bit-identical to an uninterrupted one", file=sys.stderr)
        log(f"resumed from {record['model']} at iteration {start_iter}")
    else:
        if resume:
            log(f"no checkpoint in {out}; starting from iteration 0")
        if cfg.model["weights"]:
            log(load_initial_weights(model, cfg.model["weights"]))
        else:
            log(RANDOM_WEIGHTS_WARNING, file=sys.stderr)

    train_model: torch.nn.Module = model
    if info.distributed:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = TrainingSampler(len(train_set), seed=t.seed, rank=info.rank, world_size=info.world_size,
                              start=start_iter * per_rank)
    # The loader's own generator: creating its iterator would otherwise draw a worker base seed
    # from torch's global RNG, shifting the model's RNG stream on every resume.
    loader_rng = torch.Generator()
    loader_rng.manual_seed(t.seed)
    loader = DataLoader(SeededSamples(train_set, t.seed), batch_size=per_rank, sampler=sampler,
                        num_workers=cfg.data.num_workers, collate_fn=collate_fn, generator=loader_rng,
                        pin_memory=device.type == "cuda")
    metrics = MetricsWriter(out, enabled=info.is_main, tensorboard=t.tensorboard)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        checkpointer.remove_temporaries()
        write_json_atomic(cfg.to_dict(), out / "config.json")
        if resume:
            metrics.truncate_after(start_iter)
    evaluator = _make_evaluator(train_set, val_set, model) if val_set is not None else None

    def save_checkpoint(done: int) -> None:
        rng = distributed.all_gather_object(capture_rng_state())  # every process's RNG
        if info.is_main:
            checkpointer.save(done, model, {
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": rng, "world_size": info.world_size,
                "batch_size": s.batch_size, "seed": t.seed, "data": fingerprint,
            })

    def evaluate(done: int) -> dict[str, Any]:
        results = _evaluate(model, val_set, evaluator, t.eval_batch_size, device)
        if info.is_main and results:
            metrics.write(done, {f"{iou}/{m}": v for iou, r in results.items() for m, v in r.items() if m != "per_class"})
            log(f"iteration {done}: " + ", ".join(f"{iou} AP {r['AP']:.3f} AP50 {r['AP50']:.3f}" for iou, r in results.items()))
        return results

    log(f"training {describe_model(cfg)} on {len(train_set)} images, {train_set.num_classes} classes, "
        f"batch {s.batch_size} on {info.world_size} x {device.type}, iterations {start_iter}..{s.max_iter}"
        + (f"; {len(train_set.skipped)} bad images/annotations skipped" if cfg.data.skip_bad else ""))
    train_model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    bar = progress_bar(s.max_iter, "train", initial=start_iter, enabled=info.is_main and t.progress,
                       dynamic_ncols=True, mininterval=1.0)
    window: dict[str, float] = {}  # loss sums since the last metrics record
    window_count = 0
    window_start = time.perf_counter()
    data_iter = iter(loader)
    eval_results: dict[str, Any] = {}
    history = LossHistory()  # for the NaN guard's choice of checkpoint (divergence.py)
    saved: set[int] = {start_iter} if start_iter else set()  # checkpoints of this run (and the resumed one)
    for it in range(start_iter, s.max_iter):
        done = it + 1  # iterations completed after this step; checkpoints and logs use it
        images, targets = next(data_iter)
        images = [img.to(device, non_blocking=True) for img in images]
        targets = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in tg.items()}
                   for tg in targets]

        with torch.autocast(device_type=device.type, dtype=torch.float16) if use_amp else nullcontext():
            losses = train_model(images, targets).losses
        loss = sum(losses.values())

        # NaN guard, before backward so no bad gradient reaches the weights. The mean over
        # processes is NaN everywhere if it is NaN anywhere, so all processes stop together.
        values = distributed.all_reduce_mean(torch.stack([v.detach().float() for v in losses.values()]))
        history.add(done, float(values.sum()))
        if not torch.isfinite(values).all():
            bar.close()
            metrics.close()
            message = (nan_message(done, dict(zip(losses, values.tolist())), checkpointer, history, start_iter + 1, s)
                       if info.is_main else f"non-finite loss at iteration {done}")
            raise NonFiniteLossError(message)
        if done - 1 in saved and not history.is_high(done):
            checkpointer.protect = done - 1  # its weights gave a normal loss: keep it until a newer one does

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        grad_norm = None
        if s.clip_grad_norm is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, s.clip_grad_norm))
        scaler.step(optimizer)
        scaler.update()
        lr = optimizer.param_groups[0]["lr"]  # the lr this step used
        scheduler.step()

        bar.update(1)
        if info.is_main:
            for k, v in zip(losses, values.tolist()):
                window[k] = window.get(k, 0.0) + v
            window["loss"] = window.get("loss", 0.0) + float(values.sum())
            window_count += 1
            if done % t.log_period == 0 or done == s.max_iter:
                elapsed = time.perf_counter() - window_start
                record = {k: v / window_count for k, v in window.items()}
                record.update(lr=lr, time=elapsed / window_count,
                              eta_seconds=elapsed / window_count * (s.max_iter - done))
                if grad_norm is not None:
                    record["grad_norm"] = grad_norm
                metrics.write(done, record)
                heads = "".join(f" {name} {record[f'loss_{name}']:.3f}" for name in ("mask", "keypoint")
                                if f"loss_{name}" in record)
                bar.set_postfix_str(f"loss {record['loss']:.3f}{heads} lr {lr:.2g}")
                window, window_count, window_start = {}, 0, time.perf_counter()
        if done % t.checkpoint_period == 0 or done == s.max_iter:
            save_checkpoint(done)
            saved.add(done)
        if evaluator is not None and t.eval_period and done % t.eval_period == 0 and done != s.max_iter:
            eval_results = evaluate(done)
    bar.close()

    final_weights = None
    if info.is_main:
        final_weights = save_model(model, out / "model_final.safetensors", extra={**metadata, "iteration": s.max_iter})
    if evaluator is not None:
        eval_results = evaluate(s.max_iter)
        if info.is_main and eval_results:
            write_json_atomic(eval_results, out / "eval_final.json")
    if info.is_main and t.plots:
        metrics.flush()
        log(_write_plots(out, evaluator if eval_results else None, eval_results, metrics.tensorboard, s.max_iter))
    skipped = len(train_set.skipped)
    if cfg.data.skip_bad:
        log(f"skipped {skipped} bad images/annotations" + (f" (listed in {out / 'skipped.json'})" if skipped else ""))
        if info.is_main and skipped:
            write_json_atomic([{"item": w, "reason": r} for w, r in train_set.skipped], out / "skipped.json")
    metrics.close()
    return TrainResult(model=model, iteration=s.max_iter, output_dir=out, final_weights=final_weights,
                       eval_results=eval_results, skipped=skipped)


def _write_plots(out: Path, evaluator, eval_results: dict, tensorboard, iteration: int) -> str:
    """RUN/results.png (training curves) and, after an evaluation, RUN/plots/; returns the
    line to log. Plotting never fails a finished run: a problem is reported and skipped."""
    from ..plots import PlotsUnavailable, write_eval_plots, write_training_curves

    try:
        written = [write_training_curves(out, tensorboard)]
        if evaluator is not None:
            written += write_eval_plots(out / "plots", evaluator, eval_results, tensorboard=tensorboard,
                                        step=iteration)
    except PlotsUnavailable as e:
        return str(e)
    except Exception as e:  # a plot is a nicety; the weights and numbers are already written
        return f"plots skipped: {type(e).__name__}: {e}"
    return f"plots: {written[0]}" + (f" and {len(written) - 1} files in {out / 'plots'}" if len(written) > 1 else "")


def _make_evaluator(train_set: CocoDataset, val_set: CocoDataset, model: MaskRCNN):
    from ..evaluation import COCOEvaluator
    from ..evaluation.evaluate import default_iou_types

    # The model's labels are the training set's; the validation set must share its categories.
    if val_set.category_ids != train_set.category_ids:
        raise ConfigError(f"{val_set.annotation_file} has categories {val_set.category_ids} but the training "
                          f"data {train_set.annotation_file} has {train_set.category_ids}")
    return COCOEvaluator(val_set.annotation_file, label_to_category_id=train_set.label_to_category_id,
                         class_names=train_set.class_names, iou_types=default_iou_types(model))


def _evaluate(model: MaskRCNN, val_set: CocoDataset, evaluator, batch_size: int, device: torch.device) -> dict:
    from ..evaluation.evaluate import run_evaluation

    return run_evaluation(model, val_set, evaluator, batch_size=batch_size, device=device)
