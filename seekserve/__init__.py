"""SeekServe: a self-hosted LLM inference server, wire-compatible with the DeepSeek API."""

from seekserve.sampling_params import SamplingParams

__version__ = "0.1.0"


def __getattr__(name: str):  # LLM pulls in torch and the engine: import it on first use
    if name == "LLM":
        from seekserve.llm import LLM

        return LLM
    raise AttributeError(name)


__all__ = ["LLM", "SamplingParams", "__version__"]
