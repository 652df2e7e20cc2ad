"""Where a model comes from: a local MLX folder, a GGUF file, a Hugging Face repo id resolved
only from the local cache (never downloaded), or a synthetic preset (``synth:tiny@4bit``).

A source resolves to a local path plus the model's identity: what must match for two results
to be comparable. The identity uses a content hash, never the absolute path, so a baseline
recorded in one checkout or cache folder still matches in another.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_mlxperf.host.packages import INSTALL_HINTS

SYNTH_PREFIX = "synth:"
_CHUNK = 1 << 20


class SourceError(ValueError):
    """A model source cannot be resolved; the message names it and says what to do."""


@dataclass(frozen=True)
class ResolvedSource:
    source: str
    path: Path
    name: str
    weights_hash: str | None = None

    def content_hash(self) -> str:
        """A synthetic model's recorded weights hash; otherwise a fast content hash: small
        files whole, weight files by size and their first and last MiB (hashing gigabytes on
        every run would cost more than the measurement)."""
        if self.weights_hash is not None:
            return self.weights_hash[:16]
        if self.path.is_file():
            files = {self.path.name: self.path}
        else:
            files = {str(p.relative_to(self.path)): p for p in self.path.rglob("*") if p.is_file()}
        digest = hashlib.sha256()
        for rel, file in sorted(files.items()):
            size = file.stat().st_size
            digest.update(f"{rel}:{size}".encode())
            with file.open("rb") as f:
                if size <= 4 * _CHUNK:
                    digest.update(f.read())
                else:
                    digest.update(f.read(_CHUNK))
                    f.seek(-_CHUNK, 2)
                    digest.update(f.read(_CHUNK))
        return digest.hexdigest()[:16]

    def identity(self, backend: str, **extra: Any) -> dict[str, Any]:
        return {"backend": backend, "name": self.name, "hash": self.content_hash(), **extra}


def _from_hf_cache(repo_id: str, filename: str | None) -> Path:
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:
        raise SourceError(
            f"model {repo_id!r} looks like a Hugging Face repo id, but huggingface_hub is not "
            f"installed: {INSTALL_HINTS['mlx']}"
        ) from exc
    try:
        if filename is not None:
            return Path(hf_hub_download(repo_id, filename, local_files_only=True))
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as exc:
        what = f"{repo_id}/{filename}" if filename else repo_id
        raise SourceError(
            f"model {what!r} is not in the local Hugging Face cache and pytest-mlxperf never "
            f"downloads; fetch it first with: hf download {repo_id}"
            + (f" {filename}" if filename else "")
        ) from exc


def resolve(backend: str, source: str, cache_dir: Path | None = None) -> ResolvedSource:
    """Turn a user's model source into a local path, building synthetic models on demand.

    Forms: ``synth:PRESET`` or ``synth:PRESET@QUANT``; an existing path (MLX folder or
    ``.gguf`` file); ``org/name`` (HF cache, MLX) or ``org/name:FILE.gguf`` (HF cache, GGUF).
    """
    if source.startswith(SYNTH_PREFIX):
        from pytest_mlxperf import synth

        preset, _, quant = source[len(SYNTH_PREFIX) :].partition("@")
        path = synth.build(backend, preset, quant or None, cache_dir=cache_dir)
        # the spec's hash of the weights alone: the build's timing and tool versions, also in
        # the folder, must not make two builds of the same bytes incomparable
        return ResolvedSource(source, path, source, synth.read_spec(path)["weights_sha256"])
    path = Path(source).expanduser()
    if path.exists():
        if backend == "llamacpp" and not path.is_file():
            raise SourceError(f"model path {source!r} is a folder; llama.cpp needs a .gguf file")
        if backend == "mlx" and not (path / "config.json").is_file():
            raise SourceError(f"model path {source!r} is not an MLX model folder (no config.json)")
        return ResolvedSource(source, path, path.name)
    repo_id, _, filename = source.partition(":")
    if repo_id.count("/") == 1 and not source.startswith((".", "/", "~")):
        resolved = _from_hf_cache(repo_id, filename or None)
        return ResolvedSource(source, resolved, source)
    raise SourceError(
        f"model {source!r} not found: not an existing path, a Hugging Face repo id "
        f"('org/name', or 'org/name:FILE.gguf' for llama.cpp) or '{SYNTH_PREFIX}PRESET'"
    )
