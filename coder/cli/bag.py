"""``coder bag`` (label ROS bags offline, no ROS install) and ``coder ros2`` (the live ROS 2 node)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import typer

from .common import (ADAPTER, ALLOW_FALLBACK, BACKEND, CLASSES, CLASSES_FILE, ENGINE_DIR, FUSED_HEAD, PRECISION,
                     REBUILD_STALE, classifier_options, err, exit_code_for, info, out, progress_bar, say)
from ..errors import InputError

app = typer.Typer()


@app.command()
def bag(
    bags: List[Path] = typer.Argument(..., help="rosbag2 directories, .mcap / .db3 files or ROS 1 .bag files."),
    topic: List[str] = typer.Option(..., "--topic", "-t", help="Image topic (sensor_msgs/Image or CompressedImage); "
                                                               "repeat for several."),
    artifacts: Optional[Path] = typer.Option(None, "--artifacts", "-a",
                                             help="Default: $CODER_ARTIFACTS, else the newest ./coder-artifacts/*."),
    bank: Optional[str] = typer.Option(None, help="Bank name under <artifacts>/banks (default: the only one)."),
    classes: Optional[str] = CLASSES,
    classes_file: Optional[Path] = CLASSES_FILE,
    every: int = typer.Option(1, min=1, help="Classify every Nth frame of each topic."),
    start: Optional[float] = typer.Option(None, help="Skip frames logged earlier than this many seconds after the "
                                                     "bag's first message."),
    end: Optional[float] = typer.Option(None, help="Stop at this many seconds after the bag's first message."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per frame (JSON lines)."),
    out_bag: Optional[Path] = typer.Option(None, "--out-bag", help="Write a rosbag2 (mcap) directory of "
                                                                   "vision_msgs/msg/Classification messages."),
    out_topic: str = typer.Option("/coder/classification", "--out-topic", help="Topic of the --out-bag results."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out-bag."),
    batch_size: int = typer.Option(16, min=1, help="Frames per encoder call (bounds memory)."),
    top_k: int = typer.Option(5, "--top-k", min=1, help="Hypotheses per frame."),
    no_rerank: bool = typer.Option(False, "--no-rerank", help="Stage 1 only."),
    tau: Optional[float] = typer.Option(None, help="Rerank gate (default: the bank preset's published value)."),
    backend: str = BACKEND,
    precision: str = PRECISION,
    engine_dir: Optional[Path] = ENGINE_DIR,
    rebuild_stale: bool = REBUILD_STALE,
    adapter: Optional[Path] = ADAPTER,
    fused_head: bool = FUSED_HEAD,
    allow_fallback: bool = ALLOW_FALLBACK,
) -> None:
    """Classify the image frames of ROS 1 / ROS 2 bags; JSON lines and/or a bag of vision_msgs results."""
    from ..deploy.bag import BagOptions, ClassificationBag, check_out_bag, classify_bags, plan_bags
    from ..deploy.ros_msgs import hypotheses, vision_info
    opts = BagOptions(every, start, end, batch_size, top_k, not no_rerank)
    opts.check()
    options = classifier_options(artifacts, bank, backend, precision, tau, adapter, allow_fallback, fused_head,
                                 engine_dir, rebuild_stale, classes, classes_file)
    if out_bag is not None:  # before anything is opened: an --out-bag over an input would delete the recording
        check_out_bag(out_bag, force, bags)
    plans, failed, warnings = plan_bags(bags, topic)
    for w in warnings:
        say("warning", w)
    for e in failed:
        say("error", e)
    if not plans:
        raise typer.Exit(exit_code_for(InputError()))
    clf = options.load()
    tally = _Tally(errors=len(failed))
    writer = ClassificationBag(out_bag, out_topic, vision_info(clf.bank), force, bags) if out_bag else None
    with clf, (writer or _Null()) as sink, progress_bar("frames") as bar:
        task = bar.add_task(f"labeling ({clf.backend})", total=sum(opts.expected_frames(p) for p in plans) or None)
        for r in classify_bags(clf, plans, opts, tally.bag_error):
            record = tally.add(r, len(clf.class_names), top_k)
            if writer is not None and r.error is None:
                sink.write(r.meta, hypotheses(r.pred, top_k, len(clf.class_names)))
            if as_json:
                sys.stdout.write(json.dumps(record) + "\n")
            bar.advance(task, 1)
        sys.stdout.flush()
    _summary(tally, clf, writer, as_json)
    if tally.errors:
        raise typer.Exit(exit_code_for(InputError()))


@dataclass
class _Tally:
    """Per-topic label counts and the number of errors (frames and unreadable bags)."""

    errors: int = 0
    labels: dict = field(default_factory=dict)  # topic -> Counter of labels
    frame_errors: Counter = field(default_factory=Counter)  # topic -> bad frames

    def bag_error(self, msg: str) -> None:
        self.errors += 1
        say("error", msg)

    def add(self, r, n_classes: int, top_k: int) -> dict:
        """Count one result, print its error line if any, and return its JSON record."""
        from ..deploy.ros_msgs import frame_error_record, frame_record

        counts = self.labels.setdefault(r.meta.topic, Counter())
        if r.error is not None:
            self.errors += 1
            self.frame_errors[r.meta.topic] += 1
            say("error", r.error)
            return frame_error_record(r.bag, r.meta, r.error)
        counts[r.pred.name] += 1
        return frame_record(r.bag, r.meta, r.pred, top_k, n_classes)


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _summary(tally: _Tally, clf, writer, as_json: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    console = err if as_json else out
    t = Table(title=f"coder bag: backend {clf.backend}, tau {clf.tau}")
    for col in ("topic", "frames", "errors", "most frequent labels"):
        t.add_column(col)
    for name, counts in tally.labels.items():
        common = ", ".join(f"{escape(k)} {v}" for k, v in counts.most_common(5))
        t.add_row(escape(name), str(sum(counts.values())), str(tally.frame_errors[name]), common)
    console.print(t)
    if writer is not None:
        msg = f"wrote {writer.path}: {writer.count} vision_msgs/msg/Classification messages on {writer.topic}"
        err.print(escape(msg), soft_wrap=True) if as_json else info(msg)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ros2(ctx: typer.Context) -> None:
    """Run the ROS 2 node (needs a sourced ROS 2 with rclpy and vision_msgs).

    ROS args follow, e.g. `coder ros2 --ros-args -p artifacts:=DIR -p input_topic:=/camera/image_raw`.
    """
    from ..deploy.ros2_node import main as node_main

    node_main(["coder_ros2", *ctx.args])
