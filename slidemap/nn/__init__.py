"""Networks, their training task, normalisation, devices and inference engines (torch, ONNX)."""
