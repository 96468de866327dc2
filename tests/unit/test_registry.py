"""Registry behaviour: creation with option checks, errors that list choices, duplicates, entry-point plugins."""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchkit.core.errors import ConfigError, UnknownComponentError
from benchkit.core.registry import FAMILIES, GENERATORS, HEADS, TOKENIZERS, Registry


@dataclass(frozen=True)
class _Cfg:
    width: int = 4
    rate: float = 0.5


def _fresh() -> Registry:
    reg: Registry = Registry("thing", "benchkit", "benchkit.test-things")
    return reg


def test_create_checks_names_and_types() -> None:
    reg = _fresh()

    @reg.register("a", config=_Cfg)
    class A:
        """An A."""

        def __init__(self, cfg: _Cfg, *, extra: int = 0) -> None:
            self.cfg, self.extra = cfg, extra

    obj = reg.create("a", width=8, rate=1, extra=3)
    assert obj.cfg == _Cfg(width=8, rate=1.0) and isinstance(obj.cfg.rate, float) and obj.extra == 3
    with pytest.raises(ConfigError, match=r"unknown option 'widht'.*valid: rate, width.*did you mean 'width'"):
        reg.create("a", widht=3)
    with pytest.raises(ConfigError, match=r"thing.a.width = '3' has the wrong type; expected int"):
        reg.create("a", width="3")
    with pytest.raises(UnknownComponentError, match=r"unknown thing 'b'; valid: a.*installed plugins"):
        reg.create("b")
    assert reg.describe("a")["summary"] == "An A." and reg.describe("a")["options"] == {"width": 4, "rate": 0.5}


def test_duplicate_name_raises_naming_both_modules() -> None:
    reg = _fresh()

    @reg.register("x")
    def one() -> None: ...

    def two() -> None: ...

    two.__module__ = "other.module"
    with pytest.raises(ValueError, match=r"registered twice: .*test_registry and other.module"):
        reg.register("x")(two)


def test_builtin_families_have_the_first_round_names() -> None:
    assert {"vq", "rq", "kl"} <= set(TOKENIZERS.names())
    assert {"ar", "mar", "rqtransformer"} <= set(GENERATORS.names())
    assert {"ce", "diffloss"} <= set(HEADS.names())
    assert set(FAMILIES) == {"tokenizers", "generators", "heads", "datasets", "features"}
    assert HEADS.names("d*") == ["diffloss"]


def test_unknown_head_suggests_close_match() -> None:
    with pytest.raises(
        UnknownComponentError, match=r"unknown head 'difloss'; valid: ce, diffloss; did you mean 'diffloss'"
    ):
        HEADS.get("difloss")


def test_entry_point_plugin_registers_and_broken_plugin_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A distribution with a `benchkit.test-plugins` entry point registers on first use; a broken one warns."""
    (tmp_path / "bk_plugin_mod.py").write_text(
        textwrap.dedent('''
        from dataclasses import dataclass
        from benchkit.tests_plugin_registry import REG

        @dataclass(frozen=True)
        class PCfg:
            size: int = 2

        @REG.register("plug", config=PCfg)
        class Plug:
            """A plugin component."""
            def __init__(self, cfg):
                self.cfg = cfg
    ''')
    )
    for dist, module in (("bk_plugin", "bk_plugin_mod"), ("bk_broken", "bk_missing_module")):
        info = tmp_path / f"{dist}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[benchkit.test-plugins]\n{dist} = {module}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry = Registry("plugin thing", "benchkit", "benchkit.test-plugins")
    shim = type(sys)("benchkit.tests_plugin_registry")
    shim.REG = reg  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "benchkit.tests_plugin_registry", shim)
    with caplog.at_level("WARNING"):
        assert reg.names() == ["plug"]
    assert reg.create("plug", size=5).cfg.size == 5
    assert reg.describe("plug")["source"] == "bk_plugin"
    assert "bk_broken" in caplog.text and reg.plugins["bk_broken"].startswith("failed")
    with pytest.raises(UnknownComponentError, match=r"installed plugins: bk_broken, bk_plugin"):
        reg.get("nope")


def test_no_plugins_env_turns_discovery_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCHKIT_NO_PLUGINS", "1")
    reg: Registry = Registry("x", "benchkit", "benchkit.test-plugins")
    assert reg.names() == [] and reg.plugins == {}
