"""What a module was built from, so that :func:`pyro_vae.save` can write it down and :func:`pyro_vae.load` build it
again, without pickling code (a checkpoint holds only tensors and plain values).

Every part of pyro_vae (the VAE, its networks, likelihoods and priors) subclasses :class:`Recorded`, which keeps
the arguments its constructor was called with.  :func:`describe` turns such a module into a *spec*: its class's
importable name and its arguments, with the modules among them described in turn, a module passed twice (the
encoder a VampPrior shares with its VAE) given once and referred to after.  A spec holds only plain values and
tensors; :func:`pyro_vae.factory.rebuild` calls the constructors again.  A module of your own describes itself
when it subclasses :class:`Recorded`, or when you give :func:`pyro_vae.save` its constructor arguments.
"""
import functools
import inspect
import os
import sys
from typing import Any, Dict, Optional

import torch

CLASS, ARGS, MODULE, SAME_AS = "class", "args", "__module__", "__same_as__"


class NotDescribable(ValueError):
    """A module whose constructor arguments are unknown, or one of them is not a plain value, tensor or module."""


class Recorded:
    """Mixin for ``nn.Module`` classes: an instance remembers the arguments of the constructor call that made it
    (defaults included), so :func:`describe` can write it down.  A subclass's ``__init__`` is recorded, not the
    ``super().__init__`` calls inside it."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_records_arguments", False):
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self, *args, **kw):
            if "_init_args" not in self.__dict__:              # the outermost constructor of this instance
                record_arguments(self, _bind(signature, self, args, kw))
            init(self, *args, **kw)

        recording_init._records_arguments = True
        cls.__init__ = recording_init


def _bind(signature: inspect.Signature, obj: Any, args: tuple, kwargs: dict) -> Optional[Dict[str, Any]]:
    """The named arguments of a call (defaults applied), or None where they cannot be named (``*args``) or the
    call does not fit the signature (the constructor then raises its own error)."""
    try:
        bound = signature.bind(obj, *args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    named = {}
    for i, (name, value) in enumerate(bound.arguments.items()):
        kind = signature.parameters[name].kind
        if i == 0:
            continue                                            # self
        if kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                return None
        elif kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        else:
            named[name] = value
    return named


def record_arguments(module: Any, arguments: Optional[Dict[str, Any]]) -> None:
    """Remember ``arguments`` as what ``module``'s constructor was called with (None: unknown)."""
    object.__setattr__(module, "_init_args", None if arguments is None else dict(arguments))


def class_name(cls: type) -> str:
    """``"package.module:Class"``, the name a spec (and ``--model``) gives a class.  A class of the script being
    run (module ``__main__``) is named by the module the script is: ``python mymodels.py`` -> ``mymodels``,
    ``python -m pkg.mod`` -> ``pkg.mod``, so another process can import it."""
    module = cls.__module__
    main = sys.modules.get("__main__")
    if module == "__main__" and main is not None:
        spec, path = getattr(main, "__spec__", None), getattr(main, "__file__", None)
        if spec is not None and spec.name and spec.name != "__main__":
            module = spec.name
        elif path and path.endswith(".py"):
            module = os.path.splitext(os.path.basename(path))[0]
    return f"{module}:{cls.__qualname__}"


def _importable(cls: type) -> bool:
    """Whether ``cls`` is reachable by its name (:func:`class_name`): not made by exec'd code or in a function."""
    obj = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        obj = getattr(obj, part, None)
    return obj is cls


def recorded_arguments(module: Any) -> Optional[Dict[str, Any]]:
    """The constructor arguments ``module`` recorded; ``{}`` for a :class:`Recorded` module whose class adds no
    constructor of its own; None where they are unknown."""
    if "_init_args" in getattr(module, "__dict__", {}):
        return module.__dict__["_init_args"]
    return {} if isinstance(module, Recorded) else None


def describe(module: Any, arguments: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The spec of ``module``: ``{"class": "package.module:Class", "args": {...}}``, its constructor arguments
    (``arguments``, else those it recorded) with tuples as lists, tensors as CPU copies and modules as specs
    (``{"__module__": spec}``; a module met before as ``{"__same_as__": "where.it.was"}``).

    Raises:
        NotDescribable: naming the module or argument whose constructor arguments are unknown or not plain.
    """
    return _describe(module, arguments, "model", {})


def _describe(module: Any, arguments: Optional[Dict[str, Any]], where: str, seen: Dict[int, str]) -> Dict[str, Any]:
    seen[id(module)] = where
    if not _importable(type(module)):
        raise NotDescribable(f"{where}'s class {class_name(type(module))} cannot be imported by that name (a class "
                             f"made in a function or by exec'd code): define it at the top level of a module")
    arguments = recorded_arguments(module) if arguments is None else arguments
    if arguments is None:
        raise NotDescribable(
            f"{where} ({type(module).__name__}) did not record its constructor arguments: subclass "
            f"pyro_vae.specs.Recorded, or pass them (pyro_vae.save(model, path, init_args={{...}}))")
    return {CLASS: class_name(type(module)),
            ARGS: {name: _value(value, f"{where}.{name}", seen) for name, value in arguments.items()}}


def _value(value: Any, where: str, seen: Dict[int, str]) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_value(v, f"{where}[{i}]", seen) for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _value(v, f"{where}.{k}", seen) for k, v in value.items()}
    if torch.is_tensor(value):
        return value.detach().cpu().clone()
    if isinstance(value, torch.nn.Module):
        if id(value) in seen:
            return {SAME_AS: seen[id(value)]}
        return {MODULE: _describe(value, None, where, seen)}
    raise NotDescribable(f"{where} is a {type(value).__name__}, which a checkpoint cannot hold (plain values, "
                         f"tensors and modules only)")
