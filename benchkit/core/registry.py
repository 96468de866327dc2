"""One small registry per component family, with entry-point plugins.

Register a component next to its config dataclass::

    @TOKENIZERS.register("vq", config=VQConfig)
    class VQTokenizer(nn.Module):
        def __init__(self, cfg: VQConfig) -> None: ...

``TOKENIZERS.create("vq", codebook_size=512)`` checks option names and types against ``VQConfig`` and calls
``VQTokenizer(VQConfig(codebook_size=512))``. Keyword arguments that are not config fields but are keyword
parameters of the constructor (``spec=``, ``num_classes=``) are passed through as build context.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from benchkit.core.errors import ConfigError, UnknownComponentError, suggest
from benchkit.core.options import build_dataclass

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """A registered component: its factory, config dataclass and origin."""

    name: str
    factory: Callable[..., Any]
    config: type | None
    module: str
    source: str  # "builtin" or the plugin's distribution name

    @property
    def summary(self) -> str:
        """First line of the factory's docstring."""
        return (inspect.getdoc(self.factory) or "").strip().splitlines()[0] if inspect.getdoc(self.factory) else ""

    def options(self) -> dict[str, Any]:
        """Option name -> default (``None`` entries have no default)."""
        if self.config is None:
            return {}
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self.config):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
            else:
                out[f.name] = None
        return out


class Registry(Generic[T]):
    """Name -> factory map for one family; built-ins load from ``builtin_module``, plugins from ``group``."""

    def __init__(self, family: str, builtin_module: str, group: str) -> None:
        self.family, self.builtin_module, self.group = family, builtin_module, group
        self._entries: dict[str, Entry] = {}
        self._loaded = False
        self._loading = False
        self.plugins: dict[str, str] = {}  # distribution -> status

    def register(self, name: str | None = None, *, config: type | None = None) -> Callable[[Any], Any]:
        """Decorator: register a class or function under ``name`` (default: its ``__name__``)."""

        def deco(obj: Any) -> Any:
            key = name or obj.__name__
            if key in self._entries:
                other = self._entries[key]
                if other.factory is obj or (
                    other.module == obj.__module__ and other.factory.__qualname__ == obj.__qualname__
                ):
                    return obj  # the same object imported twice
                raise ValueError(f"{self.family} {key!r} registered twice: {other.module} and {obj.__module__}")
            source = self._current_source or "builtin"
            self._entries[key] = Entry(key, obj, config, obj.__module__, source)
            return obj

        return deco

    _current_source: str | None = None

    def _load(self) -> None:
        if self._loaded or self._loading:
            return
        self._loading = True
        try:
            importlib.import_module(self.builtin_module)
            if os.environ.get("BENCHKIT_NO_PLUGINS") != "1":
                for ep in entry_points(group=self.group):
                    dist = ep.dist.name if ep.dist is not None else ep.name
                    self._current_source = dist
                    try:
                        ep.load()
                        self.plugins[dist] = "ok"
                    except Exception as e:  # a broken plugin must not break benchkit
                        self.plugins[dist] = f"failed: {e}"
                        log.warning("benchkit plugin %s (%s) failed to import: %s", dist, self.group, e)
                    finally:
                        self._current_source = None
            self._loaded = True
        finally:
            self._loading = False

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching an fnmatch pattern, sorted."""
        self._load()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def get(self, name: str) -> Entry:
        """The entry for ``name``; raise UnknownComponentError with the valid names otherwise."""
        self._load()
        if name not in self._entries:
            raise UnknownComponentError(self.family, name, self._entries, self.plugins)
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries

    def make_config(self, name: str, options: dict[str, Any] | None = None) -> Any:
        """Build and check the config dataclass of ``name`` from ``options``."""
        entry = self.get(name)
        if entry.config is None:
            if options:
                raise ConfigError(f"{self.family} {name!r} takes no options; got {', '.join(options)}")
            return None
        return build_dataclass(entry.config, dict(options or {}), f"{self.family}.{name}")

    def create(self, name: str, /, **kwargs: Any) -> T:
        """Build ``name``: config fields go to its config dataclass, the rest are build context."""
        entry = self.get(name)
        if entry.config is None:
            return entry.factory(**kwargs)
        fields = {f.name for f in dataclasses.fields(entry.config)}
        context_params = _keyword_params(entry.factory)
        options = {k: v for k, v in kwargs.items() if k in fields}
        context = {k: v for k, v in kwargs.items() if k not in fields}
        bad = [k for k in context if k not in context_params]
        if bad:
            valid = sorted(fields)
            raise ConfigError(
                f"unknown option {bad[0]!r} for {self.family} {name!r}; valid: {', '.join(valid) or '(none)'}"
                + suggest(bad[0], valid)
            )
        cfg = self.make_config(name, options)
        return entry.factory(cfg, **context)

    def describe(self, name: str) -> dict[str, Any]:
        """Summary line, module, source and options with defaults."""
        e = self.get(name)
        return {"name": name, "summary": e.summary, "module": e.module, "source": e.source, "options": e.options()}


def _keyword_params(factory: Callable[..., Any]) -> set[str]:
    target = factory.__init__ if inspect.isclass(factory) else factory
    params = list(inspect.signature(target).parameters.values())
    return {
        p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in ("self", "cfg")
    }


TOKENIZERS: Registry[Any] = Registry("tokenizer", "benchkit.tokenizers", "benchkit.tokenizers")
GENERATORS: Registry[Any] = Registry("generator", "benchkit.generators", "benchkit.generators")
HEADS: Registry[Any] = Registry("head", "benchkit.heads", "benchkit.heads")
DATASETS: Registry[Any] = Registry("dataset", "benchkit.data", "benchkit.datasets")
FEATURES: Registry[Any] = Registry("feature extractor", "benchkit.metrics.features", "benchkit.features")
FAMILIES: dict[str, Registry[Any]] = {
    "tokenizers": TOKENIZERS,
    "generators": GENERATORS,
    "heads": HEADS,
    "datasets": DATASETS,
    "features": FEATURES,
}
