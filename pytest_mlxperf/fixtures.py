"""The fixture users touch: ``mlxperf`` loads models and measures them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest

from pytest_mlxperf.backends import BackendUnavailable, LoadedModel
from pytest_mlxperf.backends.worker import USER_ERRORS
from pytest_mlxperf.interop import pytest_benchmark as bridge
from pytest_mlxperf.measuring.workload import Workload
from pytest_mlxperf.serving.bench import ServeWorkload
from pytest_mlxperf.serving.server import Server
from pytest_mlxperf.session import PerfResult, PerfSession
from pytest_mlxperf.settings.config import Settings, SettingsError, with_marker
from pytest_mlxperf.store.baseline import BaselineError

T = TypeVar("T")
DEFAULT_MODEL = "synth:tiny"
# errors whose message says all a user needs: shown without the plugin's traceback
CLEAR_ERRORS = (*USER_ERRORS, BaselineError)
SESSION_KEY = pytest.StashKey[PerfSession]()
RESULTS_KEY = pytest.StashKey[list[PerfResult]]()
SETTINGS_KEY = pytest.StashKey[Settings]()
# tests whose pytest-benchmark fixture timed nothing (pytest-benchmark disabled): not gated
NOT_GATED_KEY = pytest.StashKey[list[str]]()


def fail_with_message(exc: BaseException) -> NoReturn:
    """Fail the test with the error's message alone: no traceback, and without the error being
    handled as the failure's context (pytest would print the message twice)."""
    raise pytest.fail.Exception(str(exc), pytrace=False) from None


def skip_or_fail(call: Callable[[], T]) -> T:
    """``call()``, skipping the test where what it needs is not installed (the message names
    the install command) and failing it with the message alone on a user's error."""
    try:
        return call()
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    except CLEAR_ERRORS as exc:
        fail_with_message(exc)


def item_settings(item: pytest.Item) -> Settings:
    """The session settings overridden by the test's closest ``mlxperf`` marker."""
    if SETTINGS_KEY not in item.stash:
        session = item.config.stash[SESSION_KEY]
        marker = item.get_closest_marker("mlxperf")
        if marker is not None and marker.args:
            raise TypeError(
                f"mlxperf marker on {item.nodeid} takes keyword arguments only, got {marker.args!r}"
            )
        kwargs = marker.kwargs if marker is not None else {}
        item.stash[SETTINGS_KEY] = with_marker(session.settings, kwargs, item.nodeid)
    return item.stash[SETTINGS_KEY]


class MlxPerf:
    """Load models (once per session) and measure them; each measurement is judged against its
    baseline and a regression fails the test that made it."""

    def __init__(self, item: pytest.Item) -> None:
        self._item = item
        self._session = item.config.stash[SESSION_KEY]
        self.settings = item_settings(item)

    def load(
        self, backend: str, source: str = DEFAULT_MODEL, *, repack: bool | None = None
    ) -> LoadedModel:
        """Load ``source`` with ``backend`` ("mlx" or "llamacpp"). ``source`` is a local MLX
        folder, a ``.gguf`` file, a Hugging Face repo id present in the local cache
        (``org/name``, or ``org/name:FILE.gguf``), or a synthetic model (``synth:tiny``,
        ``synth:llama-3.2-1b@4bit``, ``synth:tiny@Q8_0``). A backend that is not installed
        skips the test with the command that installs it. ``repack``: llama.cpp's weight
        repacking (default ``--mlxperf-repack``, else llama.cpp's own: on); off, it is part of
        the model's identity."""
        return skip_or_fail(lambda: self._session.load(backend, source, repack))

    def serve(
        self,
        backend: str,
        source: str = DEFAULT_MODEL,
        *args: str,
        repack: bool | None = None,
    ) -> Server:
        """Start ``backend``'s OpenAI-compatible server ("mlx": ``mlx_lm.server``, "llamacpp":
        llama-cpp-python's) on ``source`` (any source ``load`` takes) on 127.0.0.1 with a free
        port, once per session; ``args`` go to its command line. It is stopped at the end of
        the session, and started again if it died. Measure it with ``measure``; its ``url``
        and ``complete`` serve a pipeline timed with ``time``. A server whose packages are not
        installed skips the test with the install command. ``repack`` as for ``load``
        (llama-cpp-python's server has no flag for it: ``serving.llamacpp_norepack``)."""
        return skip_or_fail(lambda: self._session.serve(backend, source, args, repack))

    def connect(self, url: str, model: str | None = None) -> Server:
        """A server someone else runs (ollama, LM Studio, llama.cpp's ``llama-server``, ...)
        at ``url``; ``model`` names the model where it serves more than one. Its identity is
        what it reports of itself, so it is never compared with a local measurement."""
        return skip_or_fail(lambda: self._session.connect(url, model))

    def measure(
        self,
        model: LoadedModel | Server,
        workload: Workload | ServeWorkload | None = None,
        *,
        name: str | None = None,
        **workload_fields: Any,
    ) -> PerfResult:
        """Measure ``model`` on a workload (a ``Workload`` or its fields as keyword arguments,
        e.g. ``prompt_tokens=512, generation_tokens=128``) and judge it against the baseline.
        A ``Server`` takes a ``ServeWorkload`` or its fields (``prompt_tokens``,
        ``generation_tokens``, ``concurrency``, ``requests``, ``seed``)."""
        kind = ServeWorkload if isinstance(model, Server) else Workload
        if workload is not None and workload_fields:
            raise TypeError("pass either a workload or workload fields, not both")
        if workload is not None and not isinstance(workload, kind):
            raise TypeError(f"a {type(model).__name__} is measured with a {kind.__name__}")
        unknown = sorted(set(workload_fields) - set(kind.field_names()))
        if unknown:
            raise TypeError(
                f"unknown workload field(s) {', '.join(unknown)}; "
                f"known: {', '.join(kind.field_names())}"
            )
        nodeid = self._item.nodeid
        if isinstance(model, Server):
            serve_workload = workload or ServeWorkload(**workload_fields)
            return self._record(
                lambda: self._session.run_server(nodeid, model, serve_workload, self.settings, name)
            )
        return self._record(
            lambda: self._session.run(
                nodeid, model, workload or Workload(**workload_fields), self.settings, name
            )
        )

    def finetune(
        self, model: LoadedModel, dataset: str | Path, *, name: str | None = None, **fields: Any
    ) -> PerfResult:
        """Measure a short LoRA fine-tuning run (QLoRA when the model is quantized) of an MLX
        model with mlx-lm's own trainer on ``dataset`` (a jsonl file or a folder with
        ``train.jsonl``): ``iterations_per_s``, ``trained_tps`` and ``peak_memory``. Fields of
        ``pytest_mlxperf.backends.finetune.FinetuneWorkload`` (``batch_size``, ``num_layers``,
        ``grad_checkpoint``, ``max_seq_length``, ``iterations``, ...) are keyword arguments."""
        from pytest_mlxperf.backends.finetune import FinetuneWorkload

        return self._record(
            lambda: self._session.finetune(
                self._item.nodeid,
                model,
                FinetuneWorkload(dataset=str(dataset), **fields),
                self.settings,
                name,
            )
        )

    def time(
        self, fn: Callable[..., Any], *args: Any, name: str | None = None, **kwargs: Any
    ) -> PerfResult:
        """Time ``fn(*args, **kwargs)`` (warm-up, then the repetitions) and gate its
        ``duration`` per call like any other metric: your own pipeline around a model, or a
        function of microseconds, calibrated into rounds of many calls as pytest-benchmark
        does (``pytest_mlxperf.measuring.callables``)."""
        return self._record(
            lambda: self._session.time(self._item.nodeid, fn, args, kwargs, self.settings, name)
        )

    def _record(self, gate: Callable[[], PerfResult]) -> PerfResult:
        """Run a gated measurement; keep its result for the test's verdict and the report."""
        result = skip_or_fail(gate)
        self._item.stash.setdefault(RESULTS_KEY, []).append(result)
        return result


def gate_benchmark(item: pytest.Item, fixture: Any) -> None:
    """Gate what pytest-benchmark's ``benchmark`` fixture timed in this test: its rounds become
    a ``duration`` measurement, judged, stored and reported like any other, and a regression
    fails the test (``pytest_benchmark_bridge``). A fixture that timed nothing because
    pytest-benchmark is disabled is listed in the summary instead."""
    if not bridge.has_rounds(fixture):
        if fixture.disabled:
            item.config.stash.setdefault(NOT_GATED_KEY, []).append(item.nodeid)
        return
    try:
        perf = MlxPerf(item)
    except SettingsError as exc:
        fail_with_message(exc)
    blocks = perf.settings.repetitions
    take, retimable = bridge.take_measurements(fixture, item.nodeid, blocks)
    settings = perf.settings if retimable else dataclasses.replace(perf.settings, confirm=0)
    key = bridge.benchmark_key(item.nodeid)
    result = perf._record(lambda: perf._session.gate(item.nodeid, key, take, None, settings))
    result.notes.insert(0, bridge.timing_note(fixture, blocks))


@pytest.fixture
def mlxperf(request: pytest.FixtureRequest) -> MlxPerf:
    """Measure local-LLM inference performance; see ``MlxPerf``."""
    try:
        return MlxPerf(request.node)
    except SettingsError as exc:
        fail_with_message(exc)
