"""A server to measure: one the fixture started (``serve``) or one a user runs (``connect``), its
identity, and prompts of an exact length in its own tokens.

Identity: a started server is its backend's model identity (content hash included) plus the
server program and its arguments; a connected one is what it reports of itself (model name, a
digest where offered, the server program: the kind of started server it was recognized as,
else its ``Server`` header's program name) plus the kind of host its URL names. A connected
server's backend is ``remote``, so it is never compared with a local measurement; a recognized
one is held to what is known of its program (``ServerKind``) as a started one is.

Exact prompts: the prompt is a run of words that are each one token of the server's tokenizer
(found by asking it: its tokenize endpoint where it has one, otherwise the ``usage`` of a
one-token completion), after whatever the server adds (BOS). Every prompt has a word order of
its own, drawn from a generator seeded afresh for each ``Server`` object, so a server's prompt
cache cannot serve one request from another, nor from an earlier run of the suite (a server
someone else runs keeps its cache between runs).
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import json
import os
import random
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pytest_mlxperf.host import cpus as confinement  # serve's ``cpus`` is the cores
from pytest_mlxperf.serving.client import Client
from pytest_mlxperf.serving.errors import ServerError
from pytest_mlxperf.serving.launch import SERVER_KINDS, ServerKind, ServerProcess

COMPLETIONS = "/v1/completions"
# packages a started server of each backend needs (looked up, never imported here)
SERVER_MODULES = {
    "mlx": ("mlx_lm",),
    "llamacpp": ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context"),
}
# common English words: a tokenizer's vocabulary has many of them as single tokens
_WORDS = (
    "the of and to in is that it for was on are as with be at by this have from or one had not "
    "but what all were when we there can an your which their said if do will each about how up "
    "out them then she many some so these would other into has more her two like him see time "
    "could no make than first been its who now people my made over did down only way find use "
    "may long little very after words called just where most know"
)
_MIN_WORDS = 4


@dataclass(frozen=True)
class Tokenizer:
    """How to ask a server for a text's token count: an endpoint and its request/answer
    shapes, or ``None`` for the ``usage`` of a one-token completion."""

    path: str
    field: str  # the request field that carries the text
    extra: tuple[tuple[str, Any], ...] = ()


# llama-cpp-python's server, then llama.cpp's own (with BOS, as a completion adds it)
TOKENIZERS = (
    Tokenizer("/extras/tokenize", "input"),
    Tokenizer("/tokenize", "content", (("add_special", True),)),
)


def host_kind(url: str) -> str:
    """``loopback``, ``private`` (LAN), or ``public``: where the server runs, as far as its URL
    says; part of a connected server's identity."""
    host = urlsplit(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise ServerError(f"cannot resolve the host of {url}: {exc}") from None
    ips = [ipaddress.ip_address(a.split("%")[0]) for a in addresses]
    if all(ip.is_loopback for ip in ips):
        return "loopback"
    return "private" if all(ip.is_private for ip in ips) else "public"


class Server:
    """A server to measure: where it is, what it serves, how to talk to it.

    ``backend`` is ``mlx-server`` or ``llamacpp-server`` for a started server and ``remote``
    for a connected one; ``process`` is the started server's process (``None`` otherwise);
    ``kind`` is the server program where it is known: a started server's, or the one a
    connected server was recognized as (``recognize``)."""

    def __init__(
        self,
        backend: str,
        url: str,
        model: str | None,
        identity: dict[str, Any],
        timeout: float,
        process: ServerProcess | None = None,
        eos_ids: tuple[int, ...] = (),
        tokenizer: Tokenizer | None = None,
        local_tokenizer: Any = None,
        kind: ServerKind | None = None,
    ) -> None:
        self.backend = backend
        self.kind = process.kind if process is not None else kind
        self.url = url
        self.model = model
        self.identity = identity
        self.process = process
        self.eos_ids = eos_ids
        self.tokenizer = tokenizer
        # the started model's own tokenizer (``tokenizers.Tokenizer``), read from its folder
        self.local_tokenizer = local_tokenizer
        self.load_time = process.start_time if process is not None else None
        self.client = Client(url, timeout, self._diagnose, log_note=self._log_note)
        self._single_words: tuple[list[str], int] | None = None
        self._prompt_rng = random.Random(os.urandom(16))

    def _diagnose(self) -> str | None:
        """Why a started server is gone, ``None`` while it runs. A killed server's connections
        break while the kernel tears it down, a moment before it can be reaped: it is given
        a second to be seen exiting."""
        if self.process is None:
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.process.wait(1.0)
        return None if self.process.alive else self.process.exit_report()

    def _log_note(self) -> str:
        """The end of a started server's log (``ServerProcess.log_note``), for an error."""
        return self.process.log_note() if self.process is not None else ""

    @property
    def overshoots(self) -> bool:
        """May generate past max_tokens (``ServerKind.overshoots``): counted, not refused."""
        return self.kind is not None and self.kind.overshoots

    @property
    def alive(self) -> bool:
        return self.process is None or self.process.alive

    @property
    def build(self) -> dict[str, Any]:
        """What a started server's library said of its build (``ServerProcess.build``), as
        ``LoadedModel.build``; nothing is known of a connected one's."""
        return dict(self.process.build) if self.process is not None else {}

    def restart(self) -> None:
        """Replace a started server's process with a fresh one (a new port; this object, and
        so a pipeline that holds it, follows): after a crash, or to re-take a measurement in
        a new process, since processes differ more than repetitions."""
        if self.process is None:
            raise ServerError(f"{self.url} was started by someone else: it cannot be restarted")
        self.client.close()
        self.process = self.process.restarted()
        self.url = self.process.url
        self.client = Client(self.url, self.client.timeout, self._diagnose, log_note=self._log_note)

    def close(self) -> None:
        """Stop a started server (a connected one is left running) and close the client."""
        self.client.close()
        if self.process is not None:
            self.process.stop()

    def request_body(self, prompt: str, max_tokens: int, **fields: Any) -> dict[str, Any]:
        """A completion request for exactly ``max_tokens`` tokens: EOS is suppressed every way
        the known servers accept (``ignore_eos``: llama.cpp's server, vLLM; ``min_tokens``:
        llama-cpp-python; a ``logit_bias`` against the EOS ids where they are known: mlx-lm),
        and ``usage`` is asked for in the stream."""
        body: dict[str, Any] = {
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "ignore_eos": True,
            "min_tokens": max_tokens,
            "cache_prompt": False,  # llama.cpp's server: process every prompt
            **fields,
        }
        if self.model is not None:
            body["model"] = self.model
        if self.eos_ids:
            body["logit_bias"] = {str(i): -1e9 for i in self.eos_ids}
        if body.get("stream"):
            body["stream_options"] = {"include_usage": True}
        return body

    def complete(self, prompt: str, max_tokens: int = 64, **fields: Any) -> str:
        """The text of a plain (non-streamed) completion: for a pipeline timed with
        ``mlxperf.time``. Extra request fields (``temperature``, ``stop``, ...) override."""
        answer = self.client.post(COMPLETIONS, self.request_body(prompt, max_tokens, **fields))
        try:
            return str(answer["choices"][0]["text"])
        except (KeyError, IndexError, TypeError):
            raise ServerError(
                f"{self.url}{COMPLETIONS} answered without choices[0].text: {str(answer)[:300]}"
            ) from None

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` becomes as a completion prompt on this server (BOS included): by
        the started model's own tokenizer file, the server's tokenize endpoint, or the
        ``usage`` of a one-token completion (which must count the whole prompt: mlx-lm 0.26's
        server counts its prompt cache in, and is refused)."""
        if self.local_tokenizer is not None:
            return len(self.local_tokenizer.encode(text).ids)
        if self.tokenizer is not None:
            t = self.tokenizer
            answer = self.client.post(t.path, {t.field: text, **dict(t.extra)})
            return len(answer["tokens"])
        body = self.request_body(text, 1)
        del body["min_tokens"], body["ignore_eos"]  # a prompt count needs one token of any kind
        usage = self.client.post(COMPLETIONS, body).get("usage") or {}
        if "prompt_tokens" not in usage:
            raise ServerError(
                f"{self.url} has no tokenize endpoint and reports no usage.prompt_tokens: "
                "a prompt of an exact length cannot be built or checked"
            )
        return int(usage["prompt_tokens"])

    def single_token_words(self) -> tuple[list[str], int]:
        """Words that are one token each when written with a leading space, and the tokens the
        server adds to any prompt (BOS): found once, with a few token counts."""
        if self._single_words is None:
            one = self.count_tokens(" the")
            per_word = self.count_tokens(" the the") - one
            if per_word != 1:
                raise ServerError(
                    f"{self.url}: ' the' is {per_word} tokens of this server's tokenizer; an "
                    "exact-length prompt needs single-token words"
                )
            added = one - 1
            found: list[str] = []
            groups = [_WORDS.split()]
            while groups:  # bisect: a group whose count is its length is all single tokens
                group = groups.pop()
                if self.count_tokens("".join(" " + w for w in group)) - added == len(group):
                    found += group
                elif len(group) > 1:
                    groups += [group[: len(group) // 2], group[len(group) // 2 :]]
            if len(found) < _MIN_WORDS:
                raise ServerError(
                    f"{self.url}: only {len(found)} common English words are single tokens of "
                    "this server's tokenizer; an exact-length prompt cannot be built"
                )
            self._single_words = (sorted(found), added)
        return self._single_words

    def prompt(self, tokens: int) -> str:
        """A prompt of exactly ``tokens`` tokens on this server, in a word order never sent
        before."""
        words, added = self.single_token_words()
        count = tokens - added
        if count < 1:
            raise ServerError(
                f"prompt_tokens={tokens} is too short: {self.url} adds {added} tokens to any prompt"
            )
        return "".join(" " + self._prompt_rng.choice(words) for _ in range(count))


def _eos_ids(model_path: Path) -> tuple[int, ...]:
    """The EOS token ids of an MLX model folder (config.json, generation_config.json)."""
    ids: set[int] = set()
    for name in ("config.json", "generation_config.json"):
        with contextlib.suppress(OSError, ValueError):
            value = json.loads((model_path / name).read_text()).get("eos_token_id")
            ids.update([value] if isinstance(value, int) else value or [])
    return tuple(sorted(ids))


def _quantization(backend: str, path: Path) -> dict[str, Any] | str | None:
    """The model's quantization as the in-process backends record it, read from its files:
    MLX's config.json (bits, group size); a GGUF's file type (``Q4_K_M``), where the gguf
    package is installed. ``None`` for an unquantized MLX model or an unreadable file."""
    if backend == "mlx":
        from pytest_mlxperf.backends.mlx import quantization

        with contextlib.suppress(OSError, ValueError):
            return quantization(json.loads((path / "config.json").read_text()))
        return None
    try:
        import gguf

        field = gguf.GGUFReader(path).fields["general.file_type"]
        return gguf.LlamaFileType(int(field.parts[field.data[0]][0])).name.removeprefix("MOSTLY_")
    except (ImportError, KeyError, ValueError, OSError):
        return None


def _local_tokenizer(path: Path) -> Any:
    """An MLX model folder's ``tokenizer.json`` as a ``tokenizers.Tokenizer``, which counts a
    prompt as the server's Hugging Face tokenizer does (BOS from its post-processor); ``None``
    where the file or the package is missing."""
    file = path / "tokenizer.json"
    try:
        from tokenizers import Tokenizer as HFTokenizer
    except ImportError:
        return None
    try:
        return HFTokenizer.from_file(str(file))
    except Exception:  # tokenizers raises a bare Exception for a missing or unreadable file
        return None


# mlx_lm.server before 0.28.4 reports a streamed completion's usage wrongly: prompt_tokens
# counts the prompt's cached part twice (the whole prompt plus the part it processed), and
# 0.26-0.27 count the last generated token twice (seen on 0.26.4 and 0.28.3; 0.28.4, 0.29.1,
# 0.30.7 and 0.32.2 count right). A request's work could not be checked, so it is not measured.
MLX_SERVER_USAGE_FIXED = "0.28.4"


def check_server_available(backend: str, versions: Mapping[str, str] | None = None) -> None:
    """Raise ``ValueError`` for an unknown backend, ``BackendUnavailable`` when the server's
    packages are not installed (looked up, not imported) or are a release whose counts cannot
    be trusted. ``versions``: the installed packages (``machine.package_versions()``)."""
    from pytest_mlxperf.backends import BackendUnavailable
    from pytest_mlxperf.host.machine import package_versions
    from pytest_mlxperf.host.packages import INSTALL_HINTS, below

    if backend not in SERVER_KINDS:
        raise ValueError(
            f"unknown server backend {backend!r}; known: {', '.join(SERVER_KINDS)} "
            "(use mlxperf.connect for a server you run yourself)"
        )
    missing = [m for m in SERVER_MODULES[backend] if importlib.util.find_spec(m) is None]
    if missing or importlib.util.find_spec("httpx") is None:
        raise BackendUnavailable(
            f"the {SERVER_KINDS[backend].name} server cannot run here (missing: "
            f"{', '.join(missing or ['httpx'])}); install it with: {INSTALL_HINTS['server']}"
        )
    old = backend == "mlx" and below(
        package_versions() if versions is None else versions, "mlx-lm", MLX_SERVER_USAGE_FIXED
    )
    if old:
        raise BackendUnavailable(
            f"mlx_lm.server of mlx-lm {old} reports wrong token counts in a streamed completion's "
            "usage (the cached part of the prompt counted twice), so the work of a request "
            f"cannot be checked; servers are measured from mlx-lm {MLX_SERVER_USAGE_FIXED} on: "
            f'pip install "mlx-lm>={MLX_SERVER_USAGE_FIXED}"'
        )


def serve(
    backend: str,
    source: str,
    args: tuple[str, ...] = (),
    *,
    cache_dir: Path | None = None,
    timeout: float = 600.0,
    cpus: frozenset[int] | None = None,
    repack: bool | None = None,
) -> Server:
    """Start ``backend``'s server on ``source`` (any model source ``mlxperf.load`` takes) on
    127.0.0.1 and wait until it is ready; ``args`` go to the server's command line; ``cpus``:
    the cores it is confined to (recorded in its identity as a count); ``repack``: llama.cpp's
    weight repacking (``None``: its default; off, part of the identity)."""
    from pytest_mlxperf.backends import check_repack
    from pytest_mlxperf.backends.sources import resolve

    check_server_available(backend)
    repack = check_repack(backend, repack)
    kind = SERVER_KINDS[backend]
    resolved = resolve(backend, source, cache_dir)
    process = ServerProcess(
        kind, resolved.path, tuple(args), start_timeout=timeout, cores=cpus, repack=repack
    )
    # the server's version is provenance, like a backend's: an upgrade compares the two
    identity = resolved.identity(
        f"{backend}-server",
        server=kind.name,
        server_args=list(args),
        quantization=_quantization(backend, resolved.path),
        **confinement.identity(cpus),
        **({"repack": False} if repack is False else {}),
    )
    return Server(
        f"{backend}-server",
        process.url,
        None,
        identity,
        timeout,
        process=process,
        eos_ids=_eos_ids(resolved.path) if backend == "mlx" else (),
        tokenizer=TOKENIZERS[0] if backend == "llamacpp" else None,
        local_tokenizer=_local_tokenizer(resolved.path) if backend == "mlx" else None,
    )


def _listed_models(client: Client) -> list[dict[str, Any]]:
    answer = client.get("/v1/models")
    data = answer.get("data") if isinstance(answer, dict) else None
    return [m for m in data or [] if isinstance(m, dict) and "id" in m]


def recognize(entry: Mapping[str, Any], tokenizer: Tokenizer | None) -> ServerKind | None:
    """The kind of started server (``SERVER_KINDS``) a connected one is, from what it says of
    itself (``entry``: its model's ``/v1/models`` entry; ``tokenizer``: the endpoint it
    answered at), so that what is known of that program holds for it too
    (``ServerKind.overshoots``); ``None`` for any other. llama-cpp-python's server has its own
    ``/extras/tokenize`` and lists its models ``owned_by: "me"``."""
    if tokenizer == TOKENIZERS[0] and entry.get("owned_by") == "me":
        return SERVER_KINDS["llamacpp"]
    return None


def connect(url: str, model: str | None = None, *, timeout: float = 600.0) -> Server:
    """A server someone else runs, at ``url`` (``http://host:port``): ``model`` is the model
    name to request, needed where the server lists more than one."""
    url = url.rstrip("/").removesuffix("/v1")
    if urlsplit(url).scheme not in ("http", "https"):
        raise ServerError(f"server URL {url!r} must start with http:// or https://")
    probe = Client(url, timeout)
    try:
        listed = _listed_models(probe)
        names = [m["id"] for m in listed]
        if model is None and names:
            if len(names) != 1:
                raise ServerError(
                    f"{url} serves {len(names)} models ({', '.join(names) or 'none listed'}); "
                    "say which with model="
                )
            model = names[0]
        elif names and model not in names:
            raise ServerError(f"{url} does not serve {model!r}; it lists: {', '.join(names)}")
        tokenizer = next(
            (
                t
                for t in TOKENIZERS
                if "tokens" in (probe.probe(t.path, {t.field: "a", **dict(t.extra)}) or {})
            ),
            None,
        )
        entry = next((m for m in listed if m["id"] == model), {})
        kind = recognize(entry, tokenizer)
        header = probe.server_header("/v1/models")
        identity: dict[str, Any] = {
            "backend": "remote",
            "name": model or "(the server's default model)",
            "server": kind.name if kind is not None else header or "unknown",
            "host": host_kind(url),
        }
        if isinstance(entry.get("meta"), dict):  # llama.cpp's server: parameters, size
            identity["meta"] = entry["meta"]
        tags = probe.get("/api/tags")  # ollama: the model's digest
        for tagged in (tags or {}).get("models", []) if isinstance(tags, dict) else []:
            if isinstance(tagged, dict) and model in (tagged.get("name"), tagged.get("model")):
                identity["digest"] = tagged.get("digest")
    finally:
        probe.close()
    return Server("remote", url, model, identity, timeout, tokenizer=tokenizer, kind=kind)
