"""Model files in, model files out: ONNX slicing, the ONNX cost model, the sliced-model
manifest, and shapes through a model (shaping.py: tensor ranges, each slice's input shapes).
Knows nothing of devices, sockets or the scheduler."""
