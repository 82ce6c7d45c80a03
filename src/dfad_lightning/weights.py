"""Loading network weights from the checkpoint layouts people actually have, with errors a user can act on."""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dfad_lightning.errors import ConfigError

# Where trainers and repositories nest the weights inside a checkpoint file.
_NESTING_KEYS = ("state_dict", "model_state_dict", "model", "net", "student", "teacher")


def find_state_dict(obj: Any) -> dict[str, Tensor] | None:
    """Return the tensors of a checkpoint: a plain state dict, or one nested under a usual key.

    >>> find_state_dict({"state_dict": {"w": torch.zeros(1)}, "epoch": 3})
    {'w': tensor([0.])}
    >>> find_state_dict({"epoch": 3}) is None
    True
    """
    if isinstance(obj, Mapping):
        # A module's extra state (``*._extra_state``, e.g. the replay memory's) is not a tensor.
        tensors = {k: v for k, v in obj.items() if not (isinstance(k, str) and k.endswith("._extra_state"))}
        if tensors and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in tensors.items()):
            return tensors
        for key in _NESTING_KEYS:
            if key in obj and (found := find_state_dict(obj[key])) is not None:
                return found
    return None


def match_prefix(
    state: Mapping[str, Tensor], expected: Mapping[str, Tensor], preferred: Sequence[str] = ()
) -> dict[str, Tensor]:
    """Strip the prefix that wrappers add (``module.``, ``net.``, ``teacher.`` ...) to match ``expected``.

    The prefix is the first of ``preferred`` found in front of the first expected key, else the
    first found there; only keys carrying it are kept. ``preferred`` picks one network of a
    checkpoint that holds several of the same architecture (a DFAD checkpoint holds the student
    and its moving average).

    >>> match_prefix({"module.fc.w": torch.zeros(1)}, {"fc.w": torch.zeros(1)})
    {'fc.w': tensor([0.])}
    >>> match_prefix({"s.fc.w": torch.zeros(1), "avg.fc.w": torch.ones(1)}, {"fc.w": torch.zeros(1)}, ["avg."])
    {'fc.w': tensor([1.])}
    """
    first = next(iter(expected), None)
    if first is None or first in state:
        return dict(state)
    found = [key[: -len(first)] for key in state if key.endswith("." + first)]
    prefix = next((p for p in preferred if p in found), found[0] if found else None)
    if prefix is None:
        return dict(state)
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load_weights(net: nn.Module, path: str | Path, key: str, network: str, preferred: Sequence[str] = ()) -> None:
    """Load the weights in ``path`` into ``net``, or fail with a message naming the config ``key``.

    Accepts plain state dicts and checkpoints that nest them (Lightning, akamaster, ...), with
    wrapper prefixes such as ``module.``. A file that is missing, that is not a PyTorch
    checkpoint, or whose tensors do not fit the architecture is reported before any training,
    with the first mismatching tensor and its shapes.

    Args:
        net: The network built from the config.
        path: The weights file.
        key: The config key that names ``path`` (e.g. ``teacher.checkpoint``).
        network: The config group that chose ``net``'s architecture (e.g. ``teacher``): a file
            of another architecture is reported with both ways out, this group or ``key``.
        preferred: Prefixes to take the weights from, first found first, where a checkpoint
            holds several networks (see :func:`match_prefix`).

    Raises:
        ConfigError: The file cannot be used for ``net``.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(key, f"no file at {file}")
    try:
        with warnings.catch_warnings():  # torch warns before refusing a TorchScript archive; the error says it
            warnings.filterwarnings("ignore", message=".*looks like a TorchScript archive")
            obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for files that are not checkpoints
        raise ConfigError(key, _unreadable(file, err)) from None
    state = find_state_dict(obj)
    if state is None:
        top = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise ConfigError(key, f"{file} holds no weights (no state dict found; top level: {top})")
    expected = net.state_dict()
    state = match_prefix(state, expected, preferred)
    # Checkpoints from PyTorch < 0.4.1 (akamaster's among them) predate BatchNorm's step counter.
    for name, tensor in expected.items():
        if name.endswith("num_batches_tracked"):
            state.setdefault(name, tensor)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ConfigError(
            key,
            f"{file} was saved from another architecture than {type(net).__name__}: "
            f"{len(missing)} tensors missing (first: {missing[:3]}), "
            f"{len(unexpected)} unexpected (first: {unexpected[:3]}). Set {network}= to the architecture "
            f"it was saved from (the options: conf/{network}/), or {key} to weights of {type(net).__name__}",
        )
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            raise ConfigError(
                key,
                f"{file} does not fit {type(net).__name__}: tensor {name!r} has shape {tuple(state[name].shape)} "
                f"in the file and {tuple(tensor.shape)} in the network (a different width, input channels or "
                f"number of classes; check dataset.channels, dataset.num_classes and the architecture that "
                f"{network}= chooses)",
            )
    net.load_state_dict(state)


def _unreadable(file: Path, err: Exception) -> str:
    """Why ``torch.load(file, weights_only=True)`` failed, with the way out for the two usual cases."""
    text = str(err)
    if "TorchScript" in text:
        return (
            f"{file} is a TorchScript archive, not weights: save its weights, "
            f"torch.save(torch.jit.load(PATH).state_dict(), 'weights.pt'), and pass that file"
        )
    if found := re.search(r"Unsupported global: GLOBAL ([\w.]+)", text):
        return (
            f"{file} pickles a {found.group(1)} object, which loading weights safely (weights_only=True) "
            f"refuses. If you trust the file, load it with torch.load(PATH, weights_only=False) and save the "
            f"weights alone: torch.save(obj.state_dict(), 'weights.pt') for a whole network (torch.save(model)), "
            f"or the state dict it holds for a checkpoint with other objects beside the weights; pass that file"
        )
    return f"{file} is not a PyTorch checkpoint ({type(err).__name__}: {text.splitlines()[0] if text else ''})"


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
