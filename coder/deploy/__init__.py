"""Deployment targets built on the torch-free runtime (model servers, batch pipelines, robot nodes)."""
