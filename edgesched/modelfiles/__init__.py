"""Model files in, model files out: ONNX slicing, the ONNX cost model, the sliced-model
manifest. Knows nothing of devices, sockets or the scheduler."""
