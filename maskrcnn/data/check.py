"""`maskrcnn check-data ANNOTATIONS [--images DIR] [--plot FILE]`: what a COCO dataset holds and
what is wrong with it, before a training run finds out.

    maskrcnn check-data data/train.json --images data/images --plot train_stats.png

prints the number of images (and of those without objects), instances per class, crowd regions,
the box size histogram in COCO's small / medium / large split (box area below 32^2, below 96^2,
above), and every problem: bad image entries and annotations, and with --images missing or
unreadable files (headers only; --decode opens every image fully). The data is read by
`CocoDataset` with its own checks (the ones training and `maskrcnn eval` apply), set to list
every problem rather than stop at the first. Exit status 0: no problem; 1: problems listed;
2: the file cannot be used at all. --plot draws the counts (matplotlib: the [plots] extra).
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cli import HelpFormatter
from ..io import DataError
from .coco import CocoDataset

SIZE_NAMES = ("small", "medium", "large")
SIZE_LIMITS = (32 ** 2, 96 ** 2)  # COCO's area ranges of APs / APm / APl
_LISTED = 20  # problems printed; the rest are counted


@dataclass
class DatasetStats:
    annotation_file: str
    images: int = 0
    images_without_objects: int = 0
    instances_per_class: dict[str, int] = field(default_factory=dict)
    crowd_regions: int = 0
    box_sizes: dict[str, int] = field(default_factory=dict)  # small / medium / large
    box_areas: list[float] = field(default_factory=list)  # w * h of every non-crowd box
    objects_per_image: list[int] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (what, why)
    files_checked: bool = False


def size_name(area: float) -> str:
    """COCO's size class of an area: small < 32^2 <= medium < 96^2 <= large."""
    return SIZE_NAMES[int(np.searchsorted(SIZE_LIMITS, area, side="right"))]


def dataset_stats(annotation_file: str | Path, image_dir: str | Path | None = None, *, decode: bool = False,
                  allow_outside_image_dir: bool = False) -> DatasetStats:
    """Statistics and problems of a COCO file (and, given image_dir, of its image files).
    Raises DataError only where the file cannot be used at all (unreadable JSON, duplicate
    ids, no usable image)."""
    check_files = image_dir is not None
    # without a folder no file is opened, so where file_names point does not matter
    dataset = CocoDataset(annotation_file, image_dir if check_files else Path(annotation_file).parent,
                          skip_bad=True, check_files=check_files,
                          allow_outside_image_dir=allow_outside_image_dir or not check_files)
    if decode and check_files:
        dataset.verify_images()
    stats = DatasetStats(str(annotation_file), images=len(dataset), files_checked=check_files)
    per_class: Counter[int] = Counter()
    for index in range(len(dataset)):
        objects = [a for a in dataset.annotations(index) if not a["iscrowd"]]
        stats.crowd_regions += sum(a["iscrowd"] for a in dataset.annotations(index))
        stats.objects_per_image.append(len(objects))
        per_class.update(a["label"] for a in objects)
        stats.box_areas += [(a["box"][2] - a["box"][0]) * (a["box"][3] - a["box"][1]) for a in objects]
    stats.images_without_objects = stats.objects_per_image.count(0)
    stats.instances_per_class = {name: per_class[k + 1] for k, name in enumerate(dataset.class_names)}
    sizes = Counter(size_name(a) for a in stats.box_areas)
    stats.box_sizes = {name: sizes[name] for name in SIZE_NAMES}
    stats.problems = list(dataset.skipped)
    return stats


def format_stats(stats: DatasetStats) -> str:
    instances = sum(stats.instances_per_class.values())
    lines = [f"{stats.annotation_file}: {stats.images} usable images ({stats.images_without_objects} without objects), "
             f"{instances} instances, {stats.crowd_regions} crowd regions"]
    width = max([len("class")] + [len(n) for n in stats.instances_per_class])
    lines.append(f"  {'class':{width}}  instances")
    for name, count in stats.instances_per_class.items():
        lines.append(f"  {name:{width}}  {count:9d}" + ("  (none)" if count == 0 else ""))
    lines.append("  box sizes (area w*h): " + ", ".join(
        f"{name} {stats.box_sizes[name]} ({100 * stats.box_sizes[name] / max(instances, 1):.0f}%)"
        for name in SIZE_NAMES) + "  [small < 32^2 <= medium < 96^2 <= large]")
    if stats.objects_per_image:
        counts = np.asarray(stats.objects_per_image)
        lines.append(f"  objects per image: mean {counts.mean():.1f}, max {counts.max()}")
    if not stats.files_checked:
        lines.append("  image files not checked (give --images DIR)")
    if stats.problems:
        lines.append(f"{len(stats.problems)} problems:")
        lines += [f"  {what}: {why}" for what, why in stats.problems[:_LISTED]]
        if len(stats.problems) > _LISTED:
            lines.append(f"  ... and {len(stats.problems) - _LISTED} more")
    else:
        lines.append("no problems found")
    return "\n".join(lines)


def plot_stats(stats: DatasetStats):
    """A figure of three panels: instances per class, box sizes (sqrt of the area, with COCO's
    32 and 96 px limits), objects per image."""
    from ..plots import _figure

    figure = _figure(13, 4)
    by_class, by_size, by_image = figure.subplots(1, 3)
    names = list(stats.instances_per_class)
    by_class.barh(range(len(names)), list(stats.instances_per_class.values()), color="tab:blue")
    by_class.set_yticks(range(len(names)), names)
    by_class.invert_yaxis()
    by_class.set_xlabel("instances")
    by_class.set_title(f"instances per class ({stats.crowd_regions} crowd regions)")
    sides = np.sqrt(np.asarray(stats.box_areas, dtype=np.float64))
    if sides.size:
        bins = np.geomspace(max(sides.min(), 1.0), max(sides.max(), 2.0), 30)
        by_size.hist(sides, bins=bins, color="tab:green")
        by_size.set_xscale("log")
        low, high = bins[0], max(bins[-1], 96.0)
        ticks = [t for t in (1, 2, 4, 8, 16, 32, 64, 96, 128, 256, 512, 1024, 2048) if low <= t <= high]
        by_size.minorticks_off()
        by_size.set_xticks(ticks, [str(t) for t in ticks])
    for limit in SIZE_LIMITS:
        by_size.axvline(math.sqrt(limit), color="black", linestyle="--", linewidth=1)
    by_size.set_xlabel("box size: sqrt(w * h) px")
    by_size.set_title(" / ".join(f"{n} {stats.box_sizes.get(n, 0)}" for n in SIZE_NAMES))
    counts = np.asarray(stats.objects_per_image, dtype=np.int64)
    if counts.size:
        by_image.hist(counts, bins=np.arange(counts.max() + 2) - 0.5, color="tab:orange")
    by_image.set_xlabel("objects per image")
    by_image.set_title(f"{stats.images} usable images, {stats.images_without_objects} without objects")
    return figure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maskrcnn check-data", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("annotations", help="COCO instances JSON")
    parser.add_argument("--images", help="folder the JSON's file_names are relative to: check every file")
    parser.add_argument("--decode", action="store_true", help="with --images, decode every image fully")
    parser.add_argument("--plot", metavar="FILE", help="draw the statistics into this PNG (the [plots] extra)")
    parser.add_argument("--allow-outside-image-dir", action="store_true",
                        help="follow file_names that are absolute or climb out of --images with '..'")
    args = parser.parse_args(argv)
    try:
        if args.plot:
            from ..io import check_writable

            check_writable(Path(args.plot))
        stats = dataset_stats(args.annotations, args.images, decode=args.decode,
                              allow_outside_image_dir=args.allow_outside_image_dir)
    except (DataError, OSError) as e:
        print(f"maskrcnn check-data: {e}", file=sys.stderr)
        return 2
    print(format_stats(stats))
    if args.plot:
        from ..plots import PlotsUnavailable, save_figure

        try:
            print(f"wrote {save_figure(plot_stats(stats), args.plot)}")
        except PlotsUnavailable as e:
            print(f"maskrcnn check-data: {e}", file=sys.stderr)
            return 2
    return 1 if stats.problems else 0
