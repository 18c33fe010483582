"""Loading user Python factories (``file.py:fn``) named by a schedule, with located errors."""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path
from typing import Any

from aglmc.dsl.ast import Source
from aglmc.errors import AglmcError, ScheduleError

_MODULES: dict = {}
_AGLMC_DIRS = tuple(str(Path(__file__).resolve().parents[1] / d) for d in ("compiler", "dsl", "passes", "targets"))


def load_module(src: Source, source_text: str, what: str):
    """Import the Python file of ``src`` once (its folder goes on sys.path so it can import its siblings)."""
    path = src.path.resolve()
    if path in _MODULES:
        return _MODULES[path]
    if not path.is_file():
        raise ScheduleError(f"{what}: file not found: {path}", src.loc, source=source_text)
    name = f"aglmc_user_{path.stem}_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        raise ScheduleError(f"{what}: importing {path.name} failed: {_user_frame(e)}", src.loc,
                            source=source_text) from e
    finally:
        sys.path.remove(str(path.parent))
    _MODULES[path] = module
    return module


def call_factory(src: Source, source_text: str, what: str) -> Any:
    """Import ``src``'s file and call its factory with no arguments; user errors become located errors."""
    module = load_module(src, source_text, what)
    fn = getattr(module, src.factory, None)
    if fn is None or not callable(fn):
        from aglmc.errors import did_you_mean

        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise ScheduleError(f"{what}: {src.path.name} has no function '{src.factory}'", src.loc,
                            hint=did_you_mean(src.factory, names), source=source_text)
    try:
        return fn()
    except AglmcError:
        raise
    except Exception as e:
        raise ScheduleError(f"{what}: {src.text} raised {_user_frame(e)}", src.loc, source=source_text) from e


def _user_frame(e: BaseException) -> str:
    """``TypeError: msg (model.py:12)``: the exception and the innermost frame in the user's file."""
    frames = traceback.extract_tb(e.__traceback__)
    where = ""
    for fr in reversed(frames):
        if "site-packages" not in fr.filename and not fr.filename.startswith(_AGLMC_DIRS):
            where = f" ({fr.filename.rsplit('/', 1)[-1]}:{fr.lineno})"
            break
    return f"{type(e).__name__}: {e}{where}"
