"""Self-describing model files: architecture name + builder kwargs + state dict (+ extras).

A file is ``{"format": "mvfcnn-model/1", "arch", "kwargs", "state_dict", "extra"}``, written
atomically and read with ``torch.load(weights_only=True)`` (so ``extra`` may hold only plain
Python values and tensors). :func:`load_model` rebuilds the model through a registry of
builders, so a file never needs the code that trained it.

Registered builders are called as ``builder(**kwargs)`` *without* ``pretrained``/``progress``
(those are dropped at load time: the state dict supplies every weight, and loading must never
trigger a download); they must build a randomly initialised model from the remaining kwargs.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mvfcnn.core.errors import InputError
from mvfcnn.core.io import atomic_path
from mvfcnn.models.fcn import BUILDERS, uninitialized

FORMAT = "mvfcnn-model/1"
#: builder kwargs that only matter when a model is first built
_BUILD_TIME_KEYS = ("pretrained", "progress")

_REGISTRY: dict[str, Callable[..., nn.Module]] = dict(BUILDERS)
#: builders whose models keep every tensor in the state dict and can be built on "meta"
_META_SAFE: set[str] = set(BUILDERS)


def register_arch(
    name: str,
    builder: Callable[..., nn.Module],
    *,
    replace: bool = False,
    meta_init: bool = False,
) -> None:
    """Make ``load_model`` able to rebuild models saved with ``arch=name``.

    ``meta_init=True`` lets ``load_model`` skip the builder's random init (build on the meta
    device, then fill from the file): only for builders that do no I/O and whose models have
    no non-persistent buffers.
    """
    if name in _REGISTRY and _REGISTRY[name] is not builder and not replace:
        raise ValueError(f"architecture {name!r} is already registered")
    _REGISTRY[name] = builder
    if meta_init:
        _META_SAFE.add(name)
    else:
        _META_SAFE.discard(name)


def registered_archs() -> list[str]:
    return sorted(_REGISTRY)


#: modules that call register_arch on import (the baselines); imported when a file names an
#: architecture not registered yet, so load_model works without importing them first
_PROVIDERS = ("mvfcnn.models.cifarnet", "mvfcnn.models.vgg_classifier",
              "mvfcnn.models.patch_classifier", "mvfcnn.models.trunk_classifier")


def _import_providers() -> None:
    for module in _PROVIDERS:
        try:
            importlib.import_module(module)
        except ImportError:
            continue


def _check_plain(value: Any, where: str) -> None:
    """Reject values ``torch.load(weights_only=True)`` could not read back (fail at save time)."""
    if value is None or isinstance(value, (str, int, float, bool, Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} must be str or int")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(f"{where}: {type(value).__name__} cannot be stored in a model file "
                    "(use plain Python values or tensors; e.g. float(x) for numpy scalars)")


def save_model(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    arch: str,
    kwargs: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``model`` atomically so :func:`load_model` can rebuild it (see module docstring)."""
    if arch not in _REGISTRY:
        raise ValueError(f"unknown arch {arch!r}; registered: {registered_archs()} "
                         "(call register_arch first)")
    kwargs = {k: v for k, v in kwargs.items() if k not in _BUILD_TIME_KEYS}
    extra = dict(extra or {})
    _check_plain(kwargs, "kwargs")
    _check_plain(extra, "extra")
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "arch": arch, "kwargs": kwargs, "state_dict": state,
               "extra": extra}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_model(
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, meta) from a :func:`save_model` file; ``meta`` has no state dict.

    Any unreadable, foreign or mismatching file raises :class:`InputError` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("model file not found", path=path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise InputError(f"cannot read model file ({type(err).__name__}: {err})",
                         path=path) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise InputError(f"not an mvfcnn model file (format {found!r}, expected {FORMAT!r})",
                         path=path)
    arch = payload.get("arch")
    if arch not in _REGISTRY:
        _import_providers()
    if arch not in _REGISTRY:
        raise InputError(f"unknown architecture {arch!r} (registered: {registered_archs()}; "
                         "import the module that registers it)", path=path)
    kwargs = {k: v for k, v in dict(payload.get("kwargs") or {}).items()
              if k not in _BUILD_TIME_KEYS}
    try:
        if arch in _META_SAFE:  # the state dict holds every tensor: skip the random init
            model = uninitialized(_REGISTRY[arch], **kwargs)
        else:
            model = _REGISTRY[arch](**kwargs)
    except (TypeError, ValueError, InputError) as err:
        raise InputError(f"cannot build architecture {arch!r} with {kwargs} ({err})",
                         path=path) from err
    state = payload.get("state_dict")
    problem = _state_mismatch(model, state)
    if problem:
        raise InputError(f"weights do not match architecture {arch!r} with {kwargs}: {problem}",
                         path=path)
    model.load_state_dict(state, strict=True)
    model.to(map_location).eval()
    meta = {"format": FORMAT, "arch": arch, "kwargs": kwargs,
            "extra": payload.get("extra") or {}, "path": str(path)}
    return model, meta


def _state_mismatch(model: nn.Module, state: object) -> str | None:
    """First difference between ``model``'s state dict and ``state``, or None."""
    if not isinstance(state, Mapping):
        return f"state_dict is a {type(state).__name__}, not a dict"
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            return f"missing key {key!r}"
        if not isinstance(state[key], Tensor):
            return f"key {key!r} holds a {type(state[key]).__name__}, not a tensor"
        if state[key].shape != tensor.shape:
            return (f"key {key!r} has shape {tuple(state[key].shape)}, expected "
                    f"{tuple(tensor.shape)}")
    for key in state:
        if key not in expected:
            return f"unexpected key {key!r}"
    return None
