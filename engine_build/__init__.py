"""Turn clearmark's models into engines and run them behind one interface.

    engine = load_engine("detector", backend="auto", device="cpu")
    probs = engine.run(batch)          # np.float32 N x C x H x W in, N x C' x H x W out
    engine.key                         # kind:weights-sha256[:12]:backend:details (job record)

Backends: tensorrt (trt_backend), onnxruntime (ort_backend), torch (torch_backend); ONNX
export in onnx_export; the TensorRT engine cache in trt_cache; input shapes (profiles,
the GPU remover's crop buckets) in profiles; how cache files are written (whole, under a
build lock) in files. Create engines in the process that uses them (a Celery worker
*child*): the TensorRT/CUDA probes initialise CUDA, which does not survive fork.
`load_engine(..., build=False)` only loads what `clearmark engines build` made.
"""

from clearmark.engine_build.base import BackendUnavailable, Engine, EngineNotBuilt, load_engine

__all__ = ["BackendUnavailable", "Engine", "EngineNotBuilt", "load_engine"]
