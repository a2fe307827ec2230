"""Public APIs of the libraries only: no module, class or object of a third-party library is reached into by
an underscore name, so an upgrade of torch or Lightning (whose ranges are open) cannot break us silently.

Walked in every module of the package, wherever it can be decided from the source:
- ``X._name`` where ``X`` is bound by an import of a third-party module (``torch._foreach_copy_``,
  ``torch.cpu._is_avx512_bf16_supported``, ``callback_connector._load_external_callbacks``), and importing an
  underscore name or module from one (``from torch import _C``);
- in a class with a third-party base (a Lightning callback, a torch module): a method that overrides one of
  the base's underscore methods (``def _save_checkpoint``), and ``self._name`` where ``_name`` is an
  attribute the base defines (``self._last_global_step_saved = ...``);
- ``v._name`` where ``v`` is a parameter annotated with a third-party class, or a local variable assigned
  a new instance of one (``trainer: pl.Trainer`` ... ``trainer._run``).
Dunder names (``__version__``, ``__init__``) are public. The standard library is out of scope: its
underscore names include documented API (``os._exit``, ``sys._getframe``).
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import sys
import types
import typing
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parents[1] / "slidemap"


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def is_third_party(module: str) -> bool:
    top = module.split(".")[0]
    return bool(top) and top != "slidemap" and top not in sys.stdlib_module_names


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def import_bindings(tree: ast.AST) -> dict[str, str]:
    """Every name bound by an import of a third-party module anywhere in the module -> what it names."""
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if is_third_party(a.name):
                    bound[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and is_third_party(node.module):
            for a in node.names:
                bound[a.asname or a.name] = f"{node.module}.{a.name}"
    return bound


def chain(node: ast.Attribute) -> tuple[str | None, list[str]]:
    """The root name and the attribute names of ``a.b.c`` (None as root when it is no plain name)."""
    attrs = []
    cur: ast.expr = node
    while isinstance(cur, ast.Attribute):
        attrs.append(cur.attr)
        cur = cur.value
    return (cur.id if isinstance(cur, ast.Name) else None), attrs[::-1]


def module_private_access(path: Path, tree: ast.AST) -> list[str]:
    """Underscore names reached through a third-party module (or a name imported from one)."""
    found = []
    rel = path.relative_to(PACKAGE.parent)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"{rel}:{node.lineno}: import {a.name}" for a in node.names
                      if is_third_party(a.name) and any(is_private(p) for p in a.name.split("."))]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and is_third_party(node.module):
            private = [a.name for a in node.names if is_private(a.name)]
            if private or any(is_private(p) for p in node.module.split(".")):
                found.append(f"{rel}:{node.lineno}: from {node.module} import {', '.join(a.name for a in node.names)}")
    bound = import_bindings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            root, attrs = chain(node)
            if root in bound:
                found.append(f"{rel}:{node.lineno}: {'.'.join([root, *attrs])} ({bound[root]})")
    return found


# --- classes and objects of third-party libraries --------------------------------------------------

def namespace(module: types.ModuleType, tree: ast.AST) -> dict[str, Any]:
    """The module's globals plus every name its imports bind anywhere (in functions, under TYPE_CHECKING)."""
    ns = dict(vars(module))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            try:
                exec(compile(ast.Module(body=[node], type_ignores=[]), "<import>", "exec"), ns)  # noqa: S102
            except Exception:  # noqa: BLE001, S110 - an optional dependency that is absent here
                pass
    return ns


def evaluate(expr: ast.expr, ns: dict[str, Any]) -> Any:
    try:
        return eval(compile(ast.Expression(expr), "<expr>", "eval"), ns)  # noqa: S307
    except Exception:  # noqa: BLE001 - a forward reference or a name not known here
        return None


def third_party_classes(value: Any) -> list[type]:
    """The third-party classes a value (a class or an annotation such as ``Trainer | None``) stands for."""
    if isinstance(value, type):
        return [c for c in value.__mro__ if c is not object and is_third_party(c.__module__)]
    return [c for arg in typing.get_args(value) for c in third_party_classes(arg)]


@functools.cache
def defined_names(cls: type) -> frozenset[str]:
    """Names a third-party class defines: in its body (inherited ones included), or as ``self.x`` in its
    methods (instance attributes, ``setattr`` and ``__setattr__`` with a constant name included)."""
    names = set(dir(cls))
    for klass in cls.__mro__:
        if klass is object:
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):  # a compiled class: its dict is all there is
            continue
        for node in ast.walk(ast.parse(inspect.cleandoc("\n" + source) if source[0].isspace() else source)):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                    and isinstance(node.value, ast.Name) and node.value.id == "self":
                names.add(node.attr)
            elif isinstance(node, ast.Call) and node.args and (
                    isinstance(node.func, ast.Attribute) and node.func.attr == "__setattr__"
                    or isinstance(node.func, ast.Name) and node.func.id == "setattr"):
                names |= {arg.value for arg in node.args[:2]
                          if isinstance(arg, ast.Constant) and isinstance(arg.value, str)}
    return frozenset(names)


def owner(classes: list[type], name: str) -> type | None:
    """The first of ``classes`` that defines ``name``."""
    return next((c for c in classes if name in defined_names(c)), None)


def hook_types(bases: list[type], method: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, list[type]]:
    """The third-party classes of a method's parameters, from the annotations of the base method it overrides
    (Lightning's hooks annotate ``trainer: pl.Trainer`` where an override often does not)."""
    base = owner(bases, method.name)
    if base is None or not callable(hooked := getattr(base, method.name, None)):
        return {}
    try:
        hints = typing.get_type_hints(hooked)
        names = [n for n in inspect.signature(hooked).parameters if n != "self"]
    except Exception:  # noqa: BLE001 - annotations the base's own module cannot resolve
        return {}
    ours = [a.arg for a in [*method.args.posonlyargs, *method.args.args] if a.arg != "self"]
    return {mine: classes for mine, theirs in zip(ours, names, strict=False)
            if (classes := third_party_classes(hints.get(theirs)))}


def first_private(attrs: list[str]) -> int | None:
    return next((i for i, a in enumerate(attrs) if is_private(a)), None)


def object_private_access(path: Path, tree: ast.AST, ns: dict[str, Any]) -> list[str]:
    """Private names of third-party bases used in subclasses, and of annotated or constructed objects."""
    found = []
    rel = path.relative_to(PACKAGE.parent)
    hooks: dict[ast.AST, dict[str, list[type]]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        bases = [c for b in node.bases for c in third_party_classes(evaluate(b, ns))]
        if not bases:
            continue
        for item in node.body:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                hooks[item] = hook_types(bases, item)
                if is_private(item.name) and (c := owner(bases, item.name)):
                    found.append(f"{rel}:{item.lineno}: {node.name}.{item.name} overrides "
                                 f"{c.__module__}.{c.__qualname__}.{item.name}")
        for sub in ast.walk(node):
            if not isinstance(sub, ast.Attribute) or not is_private(sub.attr):
                continue
            root, attrs = chain(sub)
            if root != "self" or first_private(attrs) != len(attrs) - 1:
                continue  # not through self, or an earlier name in the chain is the private one
            if len(attrs) == 1 and (c := owner(bases, sub.attr)):
                how = "writes" if isinstance(sub.ctx, ast.Store | ast.Del) else "reads"
                found.append(f"{rel}:{sub.lineno}: {node.name} {how} self.{sub.attr}, an attribute of "
                             f"{c.__module__}.{c.__qualname__}")
            elif len(attrs) > 1 and (c := owner(bases, attrs[0])):
                found.append(f"{rel}:{sub.lineno}: {node.name} reads self.{'.'.join(attrs)} through "
                             f"{c.__module__}.{c.__qualname__}.{attrs[0]}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        typed = dict(hooks.get(node, {}))
        args = node.args
        for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if a is not None and a.annotation is not None and a.arg != "self":
                if classes := third_party_classes(evaluate(a.annotation, ns)):
                    typed[a.arg] = classes
        for sub in ast.walk(node):
            if isinstance(sub, ast.Assign) and isinstance(sub.value, ast.Call):
                made = evaluate(sub.value.func, ns)
                if isinstance(made, type) and (classes := third_party_classes(made)):
                    typed.update({t.id: classes for t in sub.targets if isinstance(t, ast.Name)})
        for sub in ast.walk(node):
            if isinstance(sub, ast.Attribute) and is_private(sub.attr):
                root, attrs = chain(sub)
                if root in typed and first_private(attrs) == len(attrs) - 1:
                    c = typed[root][0]
                    found.append(f"{rel}:{sub.lineno}: {'.'.join([root, *attrs])} of a {c.__module__}."
                                 f"{c.__qualname__}")
    return found


def private_uses() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__main__.py":  # running it is the CLI; it holds one import and one call
            continue
        tree = ast.parse(path.read_text())
        found += module_private_access(path, tree)
        try:
            module = importlib.import_module(module_name(path))
        except Exception as e:  # noqa: BLE001 - a module that does not import cannot be checked
            found.append(f"{path.relative_to(PACKAGE.parent)}: not importable ({type(e).__name__}: {e})")
            continue
        found += object_private_access(path, tree, namespace(module, tree))
    return sorted(set(found))


def test_no_private_api_of_third_party_libraries():
    found = private_uses()
    assert not found, "private names of third-party libraries:\n" + "\n".join(found)


# --- the checks themselves, on code written to break them ------------------------------------------

BAD = '''
import torch
import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.connectors import callback_connector
from torch import _C

def copy(a, b):
    torch._foreach_copy_(a, b)
    return torch.cpu._is_avx512_bf16_supported(), callback_connector._load_external_callbacks, torch.__version__

class Saver(ModelCheckpoint):
    def _save_checkpoint(self, trainer, filepath):
        self._last_global_step_saved = 0
        self._mine = 1

    def _helper(self):
        return self.__class__, self._mine, self.dirpath

    def on_train_epoch_end(self, t, module):
        return t.fit_loop._results, module.trainer

class Task(pl.LightningModule):
    def training_step(self, batch, i):
        return self.trainer._checkpoint_connector

def fit(trainer: pl.Trainer | None, n: int):
    net = torch.nn.Linear(2, 2)
    return trainer._accelerator_connector, net._parameters, n
'''


def test_the_walk_finds_each_kind_of_private_use():
    path = PACKAGE / "_example_bad.py"  # named as a module of the package, parsed but never written there
    tree = ast.parse(BAD)
    ns: dict[str, Any] = {}
    exec(compile(tree, str(path), "exec"), ns)  # noqa: S102 - defines the classes the walk resolves
    found = module_private_access(path, tree) + object_private_access(path, tree, ns)
    text = "\n".join(found)
    for expected in ["from torch import _C", "torch._foreach_copy_ (torch)",
                     "torch.cpu._is_avx512_bf16_supported (torch)",
                     "callback_connector._load_external_callbacks (lightning.pytorch.trainer.connectors."
                     "callback_connector)",
                     "Saver._save_checkpoint overrides lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
                     "Saver writes self._last_global_step_saved, an attribute of lightning.pytorch.callbacks."
                     "model_checkpoint.ModelCheckpoint",
                     "t.fit_loop._results of a lightning.pytorch.trainer.trainer.Trainer",
                     "Task reads self.trainer._checkpoint_connector through lightning.pytorch.core.module."
                     "LightningModule.trainer",
                     "trainer._accelerator_connector of a lightning.pytorch.trainer.trainer.Trainer",
                     "net._parameters of a torch.nn.modules.linear.Linear"]:
        assert expected in text, (expected, text)
    # our own private names, dunders and the standard library are not flagged
    assert "_mine" not in text and "_helper" not in text and "__version__" not in text and "__class__" not in text
    assert len(found) == 10, text
