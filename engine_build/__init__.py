"""Turn clearmark's models into engines and run them behind one interface.

    engine = load_engine("detector", backend="auto", device="cpu")
    probs = engine.run(batch)          # np.float32 N x C x H x W in, N x C' x H x W out
"""
from engine_build.base import Engine, load_engine

__all__ = ["Engine", "load_engine"]
