"""Tests that need the real hardware (TensorRT and a CUDA GPU); they skip cleanly elsewhere."""
