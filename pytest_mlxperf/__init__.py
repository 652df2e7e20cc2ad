"""pytest-mlxperf: performance regression tests for local LLM inference (MLX and llama.cpp).

Importing this package imports no backend: ``mlx`` and ``llama_cpp`` are loaded lazily.
"""

__version__ = "0.2.0"
