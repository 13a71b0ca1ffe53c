"""Loads, routes and unloads model versions; the worker's only mutable state.

Two sources drive it: a local model repository (``REPO/<model>/<version>/model.*``
plus optional ``REPO/<model>/config.{json,yaml}``) and the control plane's
snapshots (through :class:`~lmaas.server.sync` calling the ModelHost methods).
Loads run in a thread, one at a time, never on the request path; a version
takes traffic only after it loaded and warmed (make before break), and an
unloaded version first drains its in-flight requests.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from lmaas.protos.errors import FailedPrecondition, InvalidArgument, ModelNotFound, NotFound, Unavailable
from lmaas.server.autotune import Autotuner
from lmaas.server.backends import BackendError, find_model_file, load_backend
from lmaas.server.backends.llm import is_llm_dir, local_digest
from lmaas.server.config import ModelConfig, dump_config, load_config, parse_config
from lmaas.server.memory import MemoryTracker, malloc_trim
from lmaas.server.metrics import WorkerMetrics
from lmaas.server.models import LLMVersion, ModelVersion
from lmaas.server.routing import HeldModel, Route, pick_version
from lmaas.server.uploads import UploadArea

__all__ = ["ModelManager", "ModelState", "UnknownModel"]

log = logging.getLogger("lmaas.worker")

ESTIMATE_FACTOR = 1.5  # a lazy version never loaded here: its artifact's size x this (then its measured figure)


@dataclass(slots=True)
class _Lazy:
    """A lazy version: downloaded and verified, loaded on the first request that needs it."""

    path: Path
    config: ModelConfig
    digest: str


@dataclass(slots=True)
class ModelState:
    """Repository index entry: a version that is not (or not yet) serving, and why."""

    state: str  # READY | LOADING | UNAVAILABLE | UNLOADING
    reason: str = ""


class UnknownModel(ModelNotFound):
    """A model (or version) this worker does not serve, in Triton's wording, which its clients and examples match on.
    It travels as ModelNotFound (with the name and version) to our clients."""

    def __init__(self, name: str, version: str | int | None = None) -> None:
        suffix = f" version {version}" if version else ""
        super().__init__(name, version, message=f"Request for unknown model: '{name}'{suffix} is not found")


class ModelManager:
    def __init__(
        self,
        metrics: WorkerMetrics,
        repository: Path | None = None,
        drain_timeout: float = 30.0,
        memory: MemoryTracker | None = None,
        lazy_wait: float = 10.0,
        autotune: bool = False,
    ) -> None:
        self.metrics = metrics
        # Load-time self-tune of ONNX versions (lmaas worker --autotune, the default there): server/autotune.py
        self.autotuner = Autotuner(metrics.registry) if autotune else None
        self.memory = memory or MemoryTracker()  # what each loaded version took (measured around its load)
        self.repository = repository
        self.drain_timeout = drain_timeout
        self._models: dict[str, dict[int, ModelVersion]] = {}
        self._routes: dict[str, Route] = {}
        self._states: dict[tuple[str, int], ModelState] = {}
        self._load_lock = asyncio.Lock()
        self._draining: dict[tuple[str, int], ModelVersion] = {}  # unloaded, still draining: a re-deploy revives
        self._drains: set[asyncio.Task[None]] = set()
        self.on_change: list[object] = []  # callables(name) notified when readiness changes
        self._uploads: UploadArea | None = None  # models sent as files (RepositoryModelLoad)
        self.lazy_wait = lazy_wait  # seconds a request waits for a lazy version's load, then UNAVAILABLE
        self._lazy: dict[tuple[str, int], _Lazy] = {}  # registered lazy versions, loaded or not
        self._lazy_loads: dict[tuple[str, int], asyncio.Task[ModelVersion]] = {}
        self._used: dict[tuple[str, int], float] = {}  # last request for each lazy version (LRU)
        self._measured: dict[tuple[str, int], int] = {}  # bytes a lazy version took when last loaded

    # ---- lookups (request path) ----

    def get(self, name: str, version: str = "", *, key: str = "") -> ModelVersion:
        """The version a request names, or the routed one when it names none (sticky by conversation ``key``).

        A lazy version that is not loaded starts loading and the call gets UNAVAILABLE with a retry hint (paths
        that can wait, as ModelInfer, call :meth:`wake` first)."""
        try:
            return self._get(name, version, key=key)
        except NotFound:
            if self._lazy and (keys := self._lazy_targets(name, version)):
                now = time.monotonic()
                for k in keys:
                    self._used[k] = now
                    self._lazy_load(k)
                raise self._loading(name, keys) from None
            raise

    def _get(self, name: str, version: str = "", *, key: str = "") -> ModelVersion:
        versions = self._models.get(name)
        if not versions:
            raise UnknownModel(name)
        if version:
            try:
                mv = versions.get(int(version))
            except ValueError:
                raise InvalidArgument(  # Triton's wording
                    f"failed to get model version from specified version string '{version}' "
                    "(details: not an integer), version should be an integral value > 0"
                ) from None
            if mv is None:
                raise UnknownModel(name, version)
            return mv
        chosen = pick_version(self._routes.get(name), versions, key=key)  # type: ignore[arg-type]
        assert chosen is not None
        return versions[chosen]

    def ready(self, name: str, version: str = "") -> bool:
        try:
            self._get(name, version)  # a readiness probe never starts a lazy load
        except (NotFound, InvalidArgument):
            return False
        return True

    def loaded(self) -> list[ModelVersion]:
        return [mv for versions in self._models.values() for mv in versions.values()]

    def index(self) -> list[tuple[str, int, ModelState]]:
        rows = {(mv.name, mv.version): ModelState("READY") for mv in self.loaded()}
        for key, state in self._states.items():
            rows.setdefault(key, state)
        return [(n, v, s) for (n, v), s in sorted(rows.items())]

    # ---- loading ----

    async def load(
        self, name: str, version: int, path: Path, config: ModelConfig, digest: str = "",
        *, room: Callable[[], Awaitable[None]] | None = None,
    ) -> ModelVersion:
        """Load and warm one version beside the others, then let it take traffic.

        A version that is still draining after an unload (a rollback right after a rollout) is taken back as it
        is: loaded and warm already, at once. ``room`` runs under the load lock first (a lazy load's eviction).
        """
        if (revived := self._revive(name, version, digest)) is not None:
            return revived
        async with self._load_lock:
            if (revived := self._revive(name, version, digest)) is not None:
                return revived
            current = self._models.get(name, {}).get(version)
            if current is not None and (not digest or current.digest == digest):
                return current
            self._states[(name, version)] = ModelState("LOADING")
            if room is not None:
                await room()
            started = time.perf_counter()
            try:
                mv = await asyncio.to_thread(self._build_measured, name, version, path, config, digest)
            except (BackendError, InvalidArgument) as exc:
                self._states[(name, version)] = ModelState("UNAVAILABLE", str(exc))
                log.warning("load failed model=%s version=%d error=%s", name, version, exc)
                raise FailedPrecondition(f"failed to load '{name}' version {version}: {exc}") from exc
            mv.start()
            old = self._models.setdefault(name, {}).get(version)
            self._models[name][version] = mv  # atomic flip: one dict assignment on the event loop
            self._draining.pop((name, version), None)  # another digest drains on; it must not come back
            self._states.pop((name, version), None)
            elapsed = time.perf_counter() - started
            self.metrics.load_duration.labels(name).observe(elapsed)
            log.info("loaded model=%s version=%d platform=%s seconds=%.3f", name, version, mv.backend.platform, elapsed)
        self._notify(name)
        if old is not None:
            self._start_drain(old, revivable=False)
        return mv

    def _revive(self, name: str, version: int, digest: str) -> ModelVersion | None:
        """Take a draining version back into service (one event-loop step); None if there is none to take."""
        key = (name, version)
        mv = self._draining.get(key)
        if mv is None or (digest and mv.digest != digest) or version in self._models.get(name, {}):
            return None
        del self._draining[key]
        if not mv.revive():  # already closing: load it anew
            return None
        self._models.setdefault(name, {})[version] = mv
        self._states.pop(key, None)
        log.info("revived model=%s version=%d (it was draining)", name, version)
        self._notify(name)
        return mv

    def _start_drain(self, mv: ModelVersion, *, revivable: bool = True) -> asyncio.Task[None]:
        key = (mv.name, mv.version)
        if revivable:
            self._draining[key] = mv
            self._states[key] = ModelState("UNLOADING")
        task = asyncio.create_task(self._drain(mv), name=f"lmaas-drain-{mv.name}-v{mv.version}")
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)
        return task

    async def _drain(self, mv: ModelVersion) -> None:
        key = (mv.name, mv.version)
        closed = await mv.drain_and_close(self.drain_timeout)
        if self._draining.get(key) is mv:
            del self._draining[key]
        if not closed:
            return  # revived: serving again
        if mv.version not in self._models.get(mv.name, {}):
            self._states[key] = ModelState("UNAVAILABLE", "unloaded")
        log.info("unloaded model=%s version=%d", mv.name, mv.version)
        gc.collect()
        malloc_trim()  # glibc keeps freed heap otherwise: RSS would ratchet up over load/unload cycles
        if mv.version not in self._models.get(mv.name, {}):  # else a reload of it holds the figure now
            self.memory.forget(mv.name, mv.version)
            if self.autotuner is not None:
                self.autotuner.forget(mv.name, mv.version)

    def _build_measured(self, name: str, version: int, path: Path, config: ModelConfig, digest: str) -> ModelVersion:
        with self.memory.measure(name, version):  # loads run one at a time: the RSS growth is this version's
            return self._build(name, version, path, config, digest)

    def _build(self, name: str, version: int, path: Path, config: ModelConfig, digest: str) -> ModelVersion:
        if path.is_dir():  # a multi-file version: from the repository or the artifact cache
            if config.backend == "llm" or is_llm_dir(path):
                return self._build_llm(name, version, path, config, digest)  # type: ignore[return-value]
            file = find_model_file(path)
            if file is None:
                raise BackendError(f"version directory {path.name}/ holds neither a model file nor an LLM")
            path = file
        backend = load_backend(path, config)
        # not for a lazy version: its load is a cold request's wait, and an eviction would repeat the tune
        if self.autotuner is not None and backend.platform == "onnxruntime_onnx" and (name, version) not in self._lazy:
            backend, config = self.autotuner.tune_onnx(name, version, backend, path, config)
        mv = ModelVersion(name, version, backend, config, self.metrics.for_model(name, version), digest)
        if self.autotuner is not None:
            self.autotuner.apply(mv)
        try:
            mv.warm()
        except Exception as exc:
            backend.close()
            raise BackendError(f"warm-up failed: {exc}") from exc
        return mv

    def _build_llm(self, name: str, version: int, path: Path, config: ModelConfig, digest: str) -> LLMVersion:
        from lmaas.server.backends.llm import load_llm

        llm_metrics = self.metrics.for_llm(name, version)
        engine = load_llm(path, config, name=name, version=version, digest=digest, metrics=llm_metrics)
        mv = LLMVersion(name, version, engine, config, self.metrics.for_model(name, version), llm_metrics, digest)
        try:
            mv.warm()
        except Exception as exc:
            engine.close()
            raise BackendError(f"warm-up failed: {exc}") from exc
        return mv

    async def unload(self, name: str, version: int | None = None) -> None:
        """Stop routing to a version (or all of a model) at once, then wait while it drains and is freed.

        Everything up to the wait happens before the first ``await``: a caller that runs this as a task (the
        sync) sees the version gone once the task took its first step. The drain itself is the manager's task,
        so cancelling the caller never cuts it; a re-deploy meanwhile revives the version instead.
        """
        versions = self._models.get(name, {})
        targets = list(versions) if version is None else [version]
        if version is None:
            targets += [v for n, v in self._lazy if n == name and v not in versions]
        for v in targets:
            self._lazy.pop((name, v), None)
            self._used.pop((name, v), None)
            if (pending := self._lazy_loads.get((name, v))) is not None:
                pending.cancel()  # unassigned while it loads: it must not come in after this unload
        gone = [versions.pop(v) for v in targets if v in versions]
        if not versions:
            self._models.pop(name, None)
            self._routes.pop(name, None)
        for v in targets:
            self._states.pop((name, v), None)
        self._notify(name)
        drains = [self._start_drain(mv) for mv in gone]
        if drains:
            await asyncio.shield(asyncio.gather(*drains))

    async def close(self) -> None:
        for name in list(self._models):
            await self.unload(name)
        if self._drains:  # drains the sync started in the background
            await asyncio.gather(*list(self._drains), return_exceptions=True)

    def _notify(self, name: str) -> None:
        for cb in self.on_change:
            cb(name)  # type: ignore[operator]

    # ---- the model repository ----

    def repository_models(self) -> list[str]:
        if self.repository is None:
            return []
        return sorted(p.name for p in self.repository.iterdir() if p.is_dir() and not p.name.startswith("."))

    async def load_from_repository(
        self, name: str, config_override: str | None = None, files: dict[str, bytes] | None = None
    ) -> list[int]:
        """Load every version directory of ``REPO/name`` (or of the ``files`` the client sent, Triton's file
        override); versions no longer present are unloaded."""
        if files:
            if self._uploads is None:
                self._uploads = UploadArea(self)
            model_dir = await asyncio.to_thread(self._uploads.write, name, files)
        elif self.repository is None:
            raise FailedPrecondition("this worker has no model repository")
        else:
            model_dir = self.repository / name
        if "/" in name or name.startswith(".") or not model_dir.is_dir():
            raise UnknownModel(name)
        config = parse_config(config_override, source="parameter") if config_override else load_config(model_dir)
        found = {}
        for child in model_dir.iterdir():
            if not (child.is_dir() and child.name.isdigit()):
                continue
            if (file := find_model_file(child)) is not None:
                found[int(child.name)] = file
            elif is_llm_dir(child):  # an LLM version is recognised by its files: config.json + *.safetensors
                found[int(child.name)] = child
        if not found:
            raise FailedPrecondition(f"failed to load '{name}': no version directory holds a model file")
        errors = []
        for version, file in sorted(found.items()):
            try:
                # A local "digest": a reload is a no-op unless the file or the config changed.
                digest = (
                    local_digest(file, dump_config(config))
                    if file.is_dir()
                    else f"{file}:{file.stat().st_mtime_ns}:{dump_config(config)}"
                )
                await self.load(name, version, file, config, digest=digest)
            except FailedPrecondition as exc:
                errors.append(exc.message)
        for version in set(self._models.get(name, {})) - set(found):
            await self.unload(name, version)
        if errors:
            raise FailedPrecondition("; ".join(errors))
        return sorted(found)

    async def load_repository(self) -> None:
        """Startup: load everything in the repository; a broken model is logged, not fatal."""
        for name in self.repository_models():
            try:
                await self.load_from_repository(name)
            except (FailedPrecondition, NotFound, InvalidArgument) as exc:
                log.error("model %s not loaded: %s", name, exc)

    # ---- the control plane's view (ModelHost) ----

    def held(self) -> list[HeldModel]:
        """Loaded versions, and lazy ones (downloaded, loaded on demand)."""
        held = [HeldModel(mv.name, mv.version, mv.digest) for mv in self.loaded()]
        loaded = {(h.name, h.version) for h in held}
        return held + [HeldModel(n, v, lz.digest) for (n, v), lz in sorted(self._lazy.items()) if (n, v) not in loaded]

    async def ensure_loaded(self, name: str, version: int, path: Path, config_json: str, digest: str) -> None:
        self._lazy.pop((name, version), None)  # deployed eagerly now: never evicted
        await self.load(name, version, path, parse_config(config_json, source="snapshot"), digest)

    # ---- lazy versions: loaded on first request, unloaded (LRU, idle) for room ----

    def lazy(self) -> set[tuple[str, int]]:
        """The registered lazy versions, loaded or not."""
        return set(self._lazy)

    @property
    def has_lazy(self) -> bool:
        return bool(self._lazy)

    async def register_lazy(self, name: str, version: int, path: Path, config_json: str, digest: str) -> None:
        """Hold a version to load on its first request (its config is checked now: a bad one NACKs the deploy).
        A version already loaded stays loaded, and may now be unloaded when idle to make room."""
        config = parse_config(config_json, source="snapshot")
        self._lazy[(name, version)] = _Lazy(path, config, digest)
        if version not in self._models.get(name, {}) and (name, version) not in self._lazy_loads:
            self._states[(name, version)] = ModelState("UNAVAILABLE", "lazy: loads on its first request")

    async def wake(self, name: str, version: str = "") -> None:
        """Before a request: load the lazy version(s) it may need, waiting up to ``lazy_wait`` seconds (then
        UNAVAILABLE with a retry hint; the load goes on), and mark them used for the LRU order."""
        keys = self._lazy_targets(name, version)
        if not keys:
            return
        now = time.monotonic()
        waits = []
        for key in keys:
            self._used[key] = now
            if key[1] not in self._models.get(name, {}):
                waits.append(self._lazy_load(key))
        if not waits:
            return
        done, pending = await asyncio.wait(waits, timeout=self.lazy_wait)
        for task in done:
            if task.cancelled():  # unassigned while it loaded
                raise UnknownModel(name, version)
            task.result()  # a failed load fails the request (FAILED_PRECONDITION, as at deploy time)
        if pending:
            raise self._loading(name, keys)

    @staticmethod
    def _loading(name: str, keys: list[tuple[str, int]]) -> Unavailable:
        versions = ", ".join(str(v) for _, v in keys)
        return Unavailable(
            f"model '{name}' version {versions} is loading (lazy: loaded on first request); retry in a few seconds"
        )

    def _lazy_targets(self, name: str, version: str) -> list[tuple[str, int]]:
        if version:
            try:
                number = int(version)
            except ValueError:
                return []  # get() says what is wrong
            return [(name, number)] if (name, number) in self._lazy else []
        route = self._routes.get(name)
        if route is None:
            return []
        wanted = [route.stable] + ([route.canary] if route.canary and route.canary_weight > 0 else [])
        return [(name, v) for v in wanted if (name, v) in self._lazy]

    def _lazy_load(self, key: tuple[str, int]) -> asyncio.Task[ModelVersion]:
        """The load of a lazy version: one per version however many requests wait for it."""
        task = self._lazy_loads.get(key)
        if task is None:
            task = asyncio.create_task(self._load_lazy(key), name=f"lmaas-lazy-load-{key[0]}-v{key[1]}")
            self._lazy_loads[key] = task
            task.add_done_callback(lambda t: self._lazy_load_done(key, t))
        return task

    def _lazy_load_done(self, key: tuple[str, int], task: asyncio.Task[ModelVersion]) -> None:
        if self._lazy_loads.get(key) is task:
            del self._lazy_loads[key]
        if not task.cancelled() and task.exception() is not None:  # retrieved: the waiters may have gone
            log.warning("lazy load of model=%s version=%d failed: %s", key[0], key[1], task.exception())

    async def _load_lazy(self, key: tuple[str, int]) -> ModelVersion:
        name, version = key
        spec = self._lazy.get(key)
        if spec is None:
            raise UnknownModel(name, version)
        mv = await self.load(name, version, spec.path, spec.config, spec.digest, room=lambda: self._make_room(key))
        self.metrics.lazy_loads.labels(name, str(version)).inc()
        if (figure := self.memory.get(name, version)) is not None:
            self._measured[key] = figure.bytes
        return mv

    def _estimate(self, key: tuple[str, int]) -> int:
        """Bytes a lazy version will take: measured at its last load here, else from its artifact's size."""
        if key in self._measured:
            return self._measured[key]
        path = self._lazy[key].path
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        return int(sum(p.stat().st_size for p in files) * ESTIMATE_FACTOR)

    async def _make_room(self, key: tuple[str, int]) -> None:
        """Unload idle lazy versions, least recently used first, until ``key`` fits under the memory limit."""
        need = await asyncio.to_thread(self._estimate, key)
        while self.memory.used() + need > self.memory.capacity:
            victim = self._idle_lru(exclude=key)
            if victim is None:
                log.warning("loading model=%s version=%d: %d bytes needed, no idle lazy version to unload",
                            key[0], key[1], need)
                return
            await self._evict(victim)

    def _idle_lru(self, exclude: tuple[str, int]) -> ModelVersion | None:
        """The least recently used loaded lazy version with nothing in flight (no request, no open stream)."""
        idle = [
            mv for mv in self.loaded()
            if (mv.name, mv.version) in self._lazy and (mv.name, mv.version) != exclude and mv.inflight == 0
        ]
        return min(idle, key=lambda mv: self._used.get((mv.name, mv.version), 0.0), default=None)

    async def _evict(self, mv: ModelVersion) -> None:
        """Unload a lazy version to make room; it stays registered and loads again on its next request."""
        versions = self._models.get(mv.name, {})
        if versions.get(mv.version) is not mv:
            return
        del versions[mv.version]  # one step on the event loop: no request can take it after this
        if not versions:
            self._models.pop(mv.name, None)  # its route stays: the next request loads it again
        self.metrics.evictions.labels(mv.name, str(mv.version)).inc()
        log.info("unloading model=%s version=%d to make room (least recently used idle lazy version)",
                 mv.name, mv.version)
        self._notify(mv.name)
        await self._start_drain(mv, revivable=False)
        self._states[(mv.name, mv.version)] = ModelState("UNAVAILABLE", "lazy: unloaded for room, loads on demand")

    def set_routes(self, routes: dict[str, Route]) -> None:
        self._routes = dict(routes)
        for name in routes:
            self._notify(name)
