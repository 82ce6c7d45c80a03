"""``task=export``: the student as a state dict, a ``torch.export`` program, TorchScript and ONNX, each checked."""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from dfad_lightning.errors import ConfigError
from dfad_lightning.files import atomic_open, write_json_atomic
from dfad_lightning.networks.generators import as_size
from dfad_lightning.systems.dfad import FINAL_STUDENT_PREFIXES
from dfad_lightning.tasks.build import build_network
from dfad_lightning.tasks.outputs import RESULTS, prepare_output_dir
from dfad_lightning.weights import load_weights

log = logging.getLogger(__name__)

# An exported model matches the module when max |difference| <= TOLERANCE * max(1, max |output|).
TOLERANCE = 1e-4


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export the ``model`` network with the weights of ``student_checkpoint`` and verify every copy.

    Writes ``student.pt`` (state dict), ``student.pt2`` (``torch.export``),
    ``student.torchscript.pt`` and ``student.onnx`` (batch size free) into the run directory,
    runs each on random inputs of the dataset's shape, and records the largest difference from
    the PyTorch module in ``results.json``.

    Raises:
        ConfigError: No student checkpoint, weights that do not fit, or an export that disagrees.
    """
    start = time.perf_counter()
    if cfg.get("student_checkpoint") is None:
        raise ConfigError("student_checkpoint", "set it to the student.pt of a distillation run to export")
    out = prepare_output_dir(cfg)
    student = build_network(cfg.model, "model")
    load_weights(student, cfg.student_checkpoint, "student_checkpoint", "model", FINAL_STUDENT_PREFIXES)
    student.eval()
    size = as_size(OmegaConf.to_object(cfg.dataset.image_size))  # type: ignore[arg-type]
    example = torch.randn(2, int(cfg.dataset.channels), *size)
    check = torch.randn(5, int(cfg.dataset.channels), *size)  # another batch size than the example's
    with torch.no_grad():
        expected = student(check)

    files = {
        "state_dict": out / "student.pt",
        "exported_program": out / "student.pt2",
        "torchscript": out / "student.torchscript.pt",
        "onnx": out / "student.onnx",
    }
    shutil.copyfile(cfg.student_checkpoint, files["state_dict"])
    export_program(student, example, files["exported_program"])
    export_torchscript(student, example, files["torchscript"])
    export_onnx(student, example, files["onnx"])
    with torch.no_grad(), _quiet_torchscript():
        outputs = {
            "state_dict": run_state_dict(cfg, files["state_dict"], check),
            "exported_program": torch.export.load(files["exported_program"]).module()(check),
            "torchscript": torch.jit.load(str(files["torchscript"]))(check),  # type: ignore[no-untyped-call]
            "onnx": run_onnx(files["onnx"], check),
        }
    scale = max(1.0, float(expected.abs().max()))
    differences = {name: float((output - expected).abs().max()) for name, output in outputs.items()}
    for name, difference in differences.items():
        if difference > TOLERANCE * scale:
            raise ConfigError("model", f"the {name} export differs from the module by {difference:.3g}")
    results = {
        "task": "export",
        "student_checkpoint": str(Path(cfg.student_checkpoint).resolve()),
        "files": {name: str(path) for name, path in files.items()},
        "max_abs_difference": differences,
        "tolerance": f"{TOLERANCE} x max(1, max |output|) = {TOLERANCE * scale:.3g}",
        "input_shape": [None, int(cfg.dataset.channels), *size],
        "wall_time_s": round(time.perf_counter() - start, 2),
        "output_dir": str(out),
    }
    write_json_atomic(results, out / RESULTS)
    print(f"\nExported to {out}:")
    width = max(map(len, files))
    for name, path in files.items():
        print(f"  {name:{width}s} {path.name:24s} max |difference| from the module: {differences[name]:.2e}")
    return results


def _dynamic_batch() -> tuple[dict[int, Any]]:
    return ({0: torch.export.Dim("batch", min=1)},)


def export_program(net: nn.Module, example: Tensor, path: Path) -> None:
    """Save ``net`` as a ``torch.export`` program (``.pt2``) with a free batch dimension."""
    program = torch.export.export(net, (example,), dynamic_shapes=_dynamic_batch())
    with atomic_open(path, "wb") as f:
        torch.export.save(program, f)


@contextmanager
def _quiet_torchscript() -> Iterator[None]:
    # PyTorch deprecates TorchScript in favour of torch.export (the .pt2 file); it still runs.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=FutureWarning)
        yield


def export_torchscript(net: nn.Module, example: Tensor, path: Path) -> None:
    """Trace ``net`` on ``example`` and save it as TorchScript."""
    with torch.no_grad(), _quiet_torchscript():
        traced = torch.jit.trace(net, example)  # type: ignore[no-untyped-call]
        with atomic_open(path, "wb") as f:
            torch.jit.save(traced, f)


def export_onnx(net: nn.Module, example: Tensor, path: Path) -> None:
    """Export ``net`` to ONNX with a free batch dimension."""
    # The exporter's graph passes log every step at INFO ("No unused functions to remove").
    for name in ("onnx_ir", "onnxscript"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        program = torch.onnx.export(net, (example,), dynamic_shapes=_dynamic_batch(), verbose=False)
    except ImportError as err:  # torch's exporter needs onnx and onnxscript
        raise ConfigError("task", f"task=export needs {err.name}: pip install 'dfad-lightning[export]'") from err
    with atomic_open(path, "wb") as f:
        f.write(program.model_proto.SerializeToString())  # type: ignore[union-attr]


def run_state_dict(cfg: DictConfig, path: Path, x: Tensor) -> Tensor:
    """Outputs of a fresh network loaded from the exported state dict."""
    net = build_network(cfg.model, "model")
    net.load_state_dict(torch.load(path, weights_only=True))
    with torch.no_grad():
        out: Tensor = net.eval()(x)
    return out


def run_onnx(path: Path, x: Tensor) -> Tensor:
    """Outputs of the ONNX file under onnxruntime (the ``export`` extra)."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ConfigError("task", "task=export needs onnxruntime: pip install 'dfad-lightning[export]'") from err
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(output)
