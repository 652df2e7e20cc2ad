"""The cache of built models: where it lives, the key of an artifact, and building each artifact
at most once.

Every artifact is cached under a key that hashes its full spec (shape, seed, format,
quantization, group size, dtype, factory version). Backend versions are deliberately not part of
the key: an upgrade gate must measure the same bytes under a new mlx / llama.cpp, and
``spec.json`` in each folder records the versions that built it plus a sha256 of the weights.
A build runs under a file lock into a temporary folder that is renamed into place, so that
concurrent test processes share one build and a killed one leaves nothing that looks like a model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

from pytest_mlxperf.synth.shapes import ModelShape

FACTORY_VERSION = 2  # 2: MLX folders keep the factory's tokenizer files
CACHE_ENV = "MLXPERF_CACHE_DIR"


class Artifact(NamedTuple):
    """What a builder returns: the model (folder or .gguf file), and whether this call built it
    (False: it came from the cache)."""

    path: Path
    built: bool


def default_cache_dir() -> Path:
    """Cache root: $MLXPERF_CACHE_DIR, else the user cache dir (~/.cache/pytest-mlxperf)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    try:
        from platformdirs import user_cache_dir
    except ImportError:
        return Path.home() / ".cache" / "pytest-mlxperf"
    return Path(user_cache_dir("pytest-mlxperf"))


def model_spec(kind: str, shape: ModelShape, seed: int, **extra: Any) -> dict[str, Any]:
    """The identity of an artifact: everything its bytes depend on, hashed into its cache key."""
    return {
        "factory_version": FACTORY_VERSION,
        "kind": kind,
        "shape": asdict(shape),
        "seed": seed,
        **extra,
    }


def _sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _versions(*dists: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist in dists:
        with contextlib.suppress(PackageNotFoundError):
            found[dist] = version(dist)
    return found


def materialize(
    cache_dir: Path | None,
    label: str,
    spec: dict[str, Any],
    build: Callable[[Path], list[str]],
    dists: tuple[str, ...],
) -> Artifact:
    """The folder of ``spec``, and whether this call built it: at most once across processes.

    ``build(tmp)`` creates the folder ``tmp`` and returns the names of its weight files. The
    folder is built under a unique temporary name next to the target and renamed into place
    (atomic), with ``spec.json`` written last, under a file lock: a concurrent caller waits and
    reuses, and a half-written folder of a killed build is never taken for a model.
    """
    from filelock import FileLock

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    quant = f"-{spec['quant']}" if "quant" in spec else ""
    target = root / f"{spec['kind']}-{label}{quant}-{key}"
    if (target / "spec.json").is_file():
        return Artifact(target, False)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "spec.json").is_file():
            return Artifact(target, False)
        # Holding the lock, anything else under this name is debris of a killed build.
        for debris in [target, *root.glob(target.name + ".tmp-*")]:
            shutil.rmtree(debris, ignore_errors=True)
        tmp = root / f"{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            start = time.perf_counter()
            weights = build(tmp)
            record = {
                "spec": spec,
                "label": label,
                "weights": weights,
                "weights_sha256": _sha256_files([tmp / name for name in weights]),
                "param_count": ModelShape(**spec["shape"]).param_count(),
                "build_seconds": round(time.perf_counter() - start, 3),
                "built_with": _versions(*dists),
            }
            (tmp / "spec.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return Artifact(target, True)


def read_spec(path: Path) -> dict[str, Any]:
    """The ``spec.json`` record of a built model folder or of the .gguf file inside one."""
    folder = path.parent if path.is_file() else path
    return json.loads((folder / "spec.json").read_text())
