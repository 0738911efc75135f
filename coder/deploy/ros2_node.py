"""The ROS 2 node: subscribe to a camera, publish ``vision_msgs/Classification`` per frame.

    coder ros2 --ros-args -p artifacts:=coder-artifacts/ViT-B-32__openai -p input_topic:=/camera/image_raw
    python -m coder.deploy.ros2_node --ros-args -p artifacts:=... -p json_topic:=coder/json

This module is only the rclpy glue (the one place rclpy is imported); parameters, the
drop-stale policy and the conversions live in :mod:`coder.deploy.ros2_core` and
:mod:`coder.deploy.ros_msgs`, which are tested without ROS. The Classifier (and its bank of
encoded texts) is loaded once at start; each frame is one encoder call. The subscription uses the
sensor-data QoS (best effort, keep last 1) and a one-slot mailbox: the worker always classifies
the NEWEST frame, so latency stays one inference however fast the camera is.
"""

from __future__ import annotations

import json
import sys
from dataclasses import fields

from ..errors import BackendError, CoderError, FrameError
from .ros2_core import FrameOutput, LatestWorker, NodeConfig, Vocabulary, process_frame
from .ros_msgs import COMPRESSED_TYPE, MsgTypes, vision_info_msg


def _import_ros():
    try:
        import rclpy  # noqa: F401
        from vision_msgs.msg import Classification  # noqa: F401
    except ImportError as e:
        raise BackendError(f"the ROS 2 node needs a sourced ROS 2 install with rclpy and vision_msgs ({e}); e.g. "
                           "`source /opt/ros/humble/setup.bash && sudo apt install ros-humble-vision-msgs`") from None


def build_node():
    """Create the node (after ``rclpy.init``)."""
    from builtin_interfaces.msg import Time
    from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import Header, String
    from vision_msgs.msg import Classification, ObjectHypothesis, VisionInfo

    from ..manifest import default_artifact_dir
    types = MsgTypes(Time, Header, ObjectHypothesis, Classification, VisionInfo)

    class CoderNode(Node):
        def __init__(self):
            super().__init__("coder")
            for f in fields(NodeConfig):  # dynamic typing: `-p tau:=1` (an int) is coerced and checked by NodeConfig
                self.declare_parameter(f.name, f.default, ParameterDescriptor(dynamic_typing=True))
            self.cfg = NodeConfig.from_params({f.name: self.get_parameter(f.name).value for f in fields(NodeConfig)})
            # the default artifact is looked up only without an `artifacts` parameter (none may exist)
            default = "" if self.cfg.artifacts else str(default_artifact_dir())
            clf = self.cfg.classifier_options(default).load()  # once: texts are never re-encoded
            self.vocab = Vocabulary(clf, f"coder CODER ({clf.backend})")  # swapped whole between frames
            db = self.vocab.info
            self.declare_parameter("class_labels", db["labels"])  # the VisionInfo database: class_id values
            self.pub = self.create_publisher(Classification, self.cfg.output_topic, 10)
            self.json_pub = self.create_publisher(String, self.cfg.json_topic, 10) if self.cfg.json_topic else None
            latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
            self.info_pub = self.create_publisher(VisionInfo, self.cfg.vision_info_topic, latched)
            self.info_pub.publish(vision_info_msg(types, db, self.get_clock().now().nanoseconds))
            # Live classes: `ros2 param set /coder classes "['cat','dog']"` or a String "cat,dog" on set_classes_topic.
            self.add_on_set_parameters_callback(self._on_params)
            if self.cfg.set_classes_topic:
                self.create_subscription(String, self.cfg.set_classes_topic, self._on_set_classes, 10)
            msg_cls = CompressedImage if self.cfg.input_msgtype == COMPRESSED_TYPE else Image
            self.worker = LatestWorker(self._handle, self._failed).start()
            self.create_subscription(msg_cls, self.cfg.input_topic, self.worker.submit, qos_profile_sensor_data)
            self.create_timer(10.0, self._report)
            self.get_logger().info(f"classifying {self.cfg.input_topic} ({msg_cls.__name__}) with backend "
                                   f"{clf.backend}, {len(clf.class_names)} classes -> {self.cfg.output_topic}")

        @property
        def clf(self):
            return self.vocab.clf

        def _swap(self, names) -> None:
            info = self.vocab.set_classes(names)  # ConfigError: nothing changed
            self.info_pub.publish(vision_info_msg(types, info, self.get_clock().now().nanoseconds))
            self.get_logger().info(f"classes now {len(info['labels'])} ({info['database_location']}, "
                                   f"database_version {info['database_version']})")

        def _on_params(self, params):
            for p in params:
                if p.name == "classes":
                    try:
                        self._swap(p.value)
                    except CoderError as e:
                        return SetParametersResult(successful=False, reason=str(e))
            return SetParametersResult(successful=True)

        def _on_set_classes(self, msg) -> None:
            try:
                self._swap(msg.data)
            except CoderError as e:
                self.get_logger().error(f"set_classes refused: {e}")

        def _handle(self, msg) -> None:
            out: FrameOutput = process_frame(self.vocab.clf, msg, self.cfg.input_msgtype, self.cfg.input_topic,
                                             self.cfg.top_k, types)
            self.pub.publish(out.classification)
            if self.json_pub is not None:
                self.json_pub.publish(String(data=json.dumps(out.record)))

        def _failed(self, msg, exc: Exception) -> None:
            if isinstance(exc, FrameError):
                self.get_logger().error(str(exc))
            else:
                self.get_logger().error(f"{type(exc).__name__}: {exc}")

        def _report(self) -> None:
            s = self.worker.slot
            self.get_logger().info(f"frames received {s.received}, classified {self.worker.handled}, "
                                   f"dropped as stale {s.dropped}")

        def destroy_node(self):
            self.worker.stop()
            return super().destroy_node()

    return CoderNode()


def main(argv: list[str] | None = None) -> None:
    """``rclpy.init`` with the ROS args, spin until Ctrl-C, shut down cleanly."""
    _import_ros()
    import rclpy

    rclpy.init(args=argv if argv is not None else sys.argv)
    node = None
    try:
        node = build_node()
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    # An entry point like `coder ros2`: an expected failure is one line and its documented exit code.
    from coder.errors import exit_code_for

    try:
        main()
    except CoderError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(exit_code_for(e))
