"""clearmark's networks: a watermark Detector and a background Remover (see ARCHITECTURE.md).

Import what you need from its modules (`networks`, `registry`, `weights`...): this package
itself loads nothing, so that reading the weights' hashes does not pull in torch.
"""
