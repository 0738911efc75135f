"""The rclpy glue of the ROS 2 node, run against stand-in rclpy/message modules.

The stand-ins only record calls; they check that the glue wires parameters, QoS, publishers and
the newest-frame worker together as intended — NOT that rclpy accepts it (nothing here ran on a
ROS machine; see the README).
"""

import shutil
import sys
import time
import types
from types import SimpleNamespace as NS

import numpy as np
import pytest


class _Msg:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def _msg_module(name, *classes):
    mod = types.ModuleType(name)
    for c in classes:
        setattr(mod, c, type(c, (_Msg,), {}))
    return mod


class _Node:
    """Records what the node declares, publishes and subscribes to."""

    overrides: dict = {}

    def __init__(self, name):
        self.name, self.params, self.pubs, self.subs, self.timers = name, {}, {}, {}, []

    def declare_parameter(self, name, value=None, descriptor=None):
        self.params[name] = (self.overrides.get(name, value), descriptor)

    def get_parameter(self, name):
        return NS(value=self.params[name][0])

    def create_publisher(self, cls, topic, qos):
        pub = NS(cls=cls, topic=topic, qos=qos, sent=[])
        pub.publish = pub.sent.append
        self.pubs[topic] = pub
        return pub

    def create_subscription(self, cls, topic, callback, qos):
        self.subs[topic] = NS(cls=cls, callback=callback, qos=qos)

    def add_on_set_parameters_callback(self, callback):
        self.param_callback = callback

    def create_timer(self, period, callback):
        self.timers.append((period, callback))

    def get_clock(self):
        return NS(now=lambda: NS(nanoseconds=5 * 10**9))

    def get_logger(self):
        return NS(info=lambda m: None, error=lambda m: self.__dict__.setdefault("errors", []).append(m))

    def destroy_node(self):
        return True


@pytest.fixture
def fake_ros(monkeypatch):
    rclpy = types.ModuleType("rclpy")
    rclpy.node = types.ModuleType("rclpy.node")
    rclpy.node.Node = _Node
    rclpy.qos = types.ModuleType("rclpy.qos")
    rclpy.qos.qos_profile_sensor_data = "SENSOR_DATA"
    rclpy.qos.DurabilityPolicy = NS(TRANSIENT_LOCAL="TRANSIENT_LOCAL")
    rclpy.qos.QoSProfile = lambda depth, durability: ("QoS", depth, durability)
    rcl_interfaces = types.ModuleType("rcl_interfaces")
    rcl_interfaces.msg = _msg_module("rcl_interfaces.msg", "ParameterDescriptor", "SetParametersResult")
    mods = {"rclpy": rclpy, "rclpy.node": rclpy.node, "rclpy.qos": rclpy.qos, "rcl_interfaces": rcl_interfaces,
            "rcl_interfaces.msg": rcl_interfaces.msg}
    for pkg, classes in {"builtin_interfaces": ["Time"], "std_msgs": ["Header", "String"],
                         "sensor_msgs": ["Image", "CompressedImage"],
                         "vision_msgs": ["Classification", "ObjectHypothesis", "VisionInfo"]}.items():
        mods[pkg] = types.ModuleType(pkg)
        mods[pkg + ".msg"] = _msg_module(pkg + ".msg", *classes)
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return mods


@pytest.fixture(scope="module")
def art(tiny_artifact, tmp_path_factory):
    from coder.text_bank.bank import build_bank
    from coder.text_bank.texts import init_texts

    out = tmp_path_factory.mktemp("nodeglue") / "art"
    shutil.copytree(tiny_artifact, out, ignore=shutil.ignore_patterns("banks"))
    build_bank(out, init_texts("cifar10"))
    return out


def test_node_wiring(fake_ros, art, monkeypatch):
    from coder.deploy import ros2_node
    from coder.samples import synthetic_scene

    monkeypatch.setattr(_Node, "overrides", {"artifacts": str(art), "input_topic": "/cam/image_raw", "top_k": 2,
                                             "json_topic": "coder/json"})
    node = ros2_node.build_node()
    try:
        assert all(d.dynamic_typing for _, d in list(node.params.values())[:12])
        assert node.params["class_labels"][0][:2] == ["airplane", "automobile"]
        sub = node.subs["/cam/image_raw"]
        assert sub.cls is fake_ros["sensor_msgs.msg"].Image and sub.qos == "SENSOR_DATA"
        [info] = node.pubs["coder/vision_info"].sent
        assert node.pubs["coder/vision_info"].qos == ("QoS", 1, "TRANSIENT_LOCAL") and info.database_version >= 0
        px = np.asarray(synthetic_scene(1, (40, 30)))
        image = fake_ros["sensor_msgs.msg"].Image
        frame = lambda sec, enc="rgb8": image(header=NS(stamp=NS(sec=sec, nanosec=0), frame_id="cam"),  # noqa: E731
                                              height=30, width=40, encoding=enc, step=120, is_bigendian=0,
                                              data=px.tobytes())
        sent = node.pubs["coder/classification"].sent
        jsent = node.pubs["coder/json"].sent  # published last for each frame, so the waits below watch it

        def wait(done):
            deadline = time.time() + 60  # a bound: each wait ends as soon as its condition holds
            while not done() and time.time() < deadline:
                time.sleep(0.01)

        sub.callback(frame(1))
        wait(lambda: len(jsent) == 1)
        sub.callback(frame(2, "nv12"))  # unsupported: logged, the node goes on
        wait(lambda: node.__dict__.get("errors"))
        sub.callback(frame(3))
        wait(lambda: len(jsent) == 2)
        assert [m.header.stamp.sec for m in sent] == [1, 3] and len(sent[-1].results) == 2
        assert sent[-1].results[0].class_id in node.params["class_labels"][0]
        assert node.errors[0].startswith("/cam/image_raw @ 2.000000000: unsupported encoding 'nv12'")
        assert '"stamp_ns": 3000000000' in jsent[-1].data
        # Live classes: a parameter change, then a String on coder/set_classes; bad lists are refused.
        ok = node.param_callback([NS(name="classes", value=["cat", "dog", "zebra"])])
        assert ok.successful
        infos = node.pubs["coder/vision_info"].sent
        assert len(infos) == 2 and infos[1].database_version == infos[0].database_version + 1
        assert infos[1].database_location.endswith("@" + node.clf.bank_sha256[:16])
        sub.callback(frame(4))
        wait(lambda: len(jsent) == 3)
        assert sent[-1].results[0].class_id in ("cat", "dog", "zebra")
        assert not node.param_callback([NS(name="classes", value=["cat", "Cat"])]).successful
        node.subs["coder/set_classes"].callback(fake_ros["std_msgs.msg"].String(data="cat,dog"))
        assert node.clf.class_names == ("cat", "dog") and len(infos) == 3
        node.subs["coder/set_classes"].callback(fake_ros["std_msgs.msg"].String(data=""))
        assert "set_classes refused" in node.errors[-1] and node.clf.class_names == ("cat", "dog")
    finally:
        node.destroy_node()
        assert not node.worker._thread.is_alive()


@pytest.mark.parametrize("bad", [{"top_k": float("inf")}, {"top_k": "1e400"}, {"tau": float("nan")}])
def test_non_finite_parameters_stop_the_node_with_a_usage_error(fake_ros, art, monkeypatch, bad):
    """`top_k: inf` once crashed the node (OverflowError, exit 70) and `tau: nan` was accepted: ConfigError, exit 2,
    before the classifier is loaded."""
    from coder.deploy import ros2_node
    from coder.errors import ConfigError, exit_code_for

    monkeypatch.setattr(_Node, "overrides", {"artifacts": str(art), **bad})
    with pytest.raises(ConfigError) as e:
        ros2_node.build_node()
    assert exit_code_for(e.value) == 2 and str(e.value).startswith(f"parameter {next(iter(bad))}: ")
