"""Deployment targets built on the torch-free runtime (ROS, Ray, Triton)."""
