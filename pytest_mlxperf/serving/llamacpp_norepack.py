"""llama-cpp-python's own server with llama.cpp's weight repacking off: ``python -m
pytest_mlxperf.serving.llamacpp_norepack ARGS`` is ``python -m llama_cpp.server ARGS`` with
every model loaded as with llama-server's ``--no-repack``.

That server has no flag for it. This runs the real one, its ``__main__`` unchanged, in a
process whose model parameters default to ``use_extra_bufts = False``
(``backends.llamacpp.repacking``): the same program, arguments and code path, only the
weights stay as the file has them.
"""

from __future__ import annotations

import runpy

from pytest_mlxperf.backends.llamacpp import repacking

if __name__ == "__main__":
    with repacking(False):
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
