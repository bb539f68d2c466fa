"""A trained NCA taken out of nca to run elsewhere: its step as an ONNX graph, checked
against the PyTorch step."""
