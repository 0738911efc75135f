"""Launch the coder ROS 2 node:

    ros2 launch $(python -c "import coder.deploy, os; print(os.path.dirname(coder.deploy.__file__))")/launch/coder.launch.py \
        artifacts:=/path/to/coder-artifacts/ViT-B-32__openai input_topic:=/camera/image_raw

coder is a pip package, not an ament package, so the node runs as a process (`coder ros2`), with
every launch argument passed on as a ROS parameter of the node.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration

# name, default, description (the node's parameters; see coder.deploy.ros2_core.NodeConfig)
ARGUMENTS = [
    ("artifacts", "", "artifact directory (default: $CODER_ARTIFACTS, else the newest ./coder-artifacts/*)"),
    ("bank", "", "bank name under <artifacts>/banks (default: the only one)"),
    ("backend", "auto", "auto | cpu | cuda | tensorrt | tensorrt-native"),
    ("precision", "fp32", "fp32 | fp16 | int8 (as exported)"),
    ("tau", "-1.0", "rerank gate; negative: the bank preset"),
    ("top_k", "5", "hypotheses per Classification"),
    ("threads", "0", "ONNX Runtime intra-op threads (0: its default)"),
    ("input_topic", "image", "sensor_msgs/Image or CompressedImage topic"),
    ("input_type", "auto", "auto (compressed if the topic ends in /compressed) | raw | compressed"),
    ("output_topic", "coder/classification", "vision_msgs/Classification topic"),
    ("json_topic", "", "std_msgs/String topic for JSON records (empty: off)"),
    ("vision_info_topic", "coder/vision_info", "vision_msgs/VisionInfo topic (transient local)"),
]


def _node(context):
    """The node process, with each non-empty launch argument as a ROS parameter (an empty one keeps
    the node's default: ``-p name:=`` would pass a null)."""
    cmd = ["coder", "ros2", "--ros-args"]
    for name, _, _ in ARGUMENTS:
        value = LaunchConfiguration(name).perform(context)
        if value != "":
            cmd += ["-p", f"{name}:={value}"]
    return [ExecuteProcess(cmd=cmd, output="screen", emulate_tty=True)]


def generate_launch_description():
    return LaunchDescription([
        *(DeclareLaunchArgument(name, default_value=default, description=text) for name, default, text in ARGUMENTS),
        OpaqueFunction(function=_node),
    ])
