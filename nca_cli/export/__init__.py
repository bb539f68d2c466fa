"""A trained NCA taken out of nca to run elsewhere: its step as an ONNX graph, as C99, or as
a WebGL page, each checked against the PyTorch step."""


class ExportError(RuntimeError):
    """The run cannot be exported in this format, or the export does not match PyTorch."""
