"""framecast: long videos from video diffusion transformers, across many GPUs, streamed as made."""

__version__ = "0.1.0"
__all__ = ["Engine", "load_config", "__version__"]


def __getattr__(name):  # lazy: `import framecast` stays cheap (no torch until used)
    if name == "Engine":
        from framecast.engine.engine import Engine
        return Engine
    if name == "load_config":
        from framecast.config import load_config
        return load_config
    raise AttributeError(f"module 'framecast' has no attribute {name!r}")
