"""PyTorch module -> clean, shape-inferred ONNX; metadata; fp16 conversion. Pure functions over ModelProtos."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import onnx
import torch
from torch import nn

from bap.errors import ExportError, MissingDependencyError

__all__ = ["clean_graph", "convert_fp16", "export_module", "op_histogram", "set_metadata"]

log = logging.getLogger(__name__)


def export_module(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
) -> onnx.ModelProto:
    """Trace ``module`` to ONNX in memory.

    The TorchScript-based exporter is used where it exists: it turns a per-sample ``table[domain]`` into one
    ``Gather`` and runs in about a second on ResNet-50. Newer PyTorch releases that dropped it fall back to the
    ``torch.export`` exporter.
    """
    module = module.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                args,
                buf,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        except TypeError:  # no dynamo= keyword (very old) or legacy path removed
            buf = io.BytesIO()
            dims = {}
            for i, name in enumerate(input_names):
                axes = dynamic_axes.get(name, {})
                dims[i] = {a: torch.export.Dim.AUTO for a in axes}
            prog = torch.onnx.export(
                module, args, dynamo=True, dynamic_shapes=tuple(dims.values()), opset_version=opset
            )
            prog.save(buf)
        except Exception as e:  # the exporter raises many types
            raise ExportError(
                f"torch.onnx.export failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}",
                "report this with the run's backbone name",
            ) from None
    return onnx.load_from_string(buf.getvalue())


def clean_graph(model: onnx.ModelProto, fold_constants: bool = True) -> onnx.ModelProto:
    """Fold constants, drop dead nodes, sort topologically (onnx-graphsurgeon), then infer shapes.

    ``fold_constants=False`` keeps constant subgraphs: the routed layout derives each branch's weights from
    shared ones with constant nodes, and folding them here would store every branch's copy in the file.
    """
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("onnx_graphsurgeon").setLevel(logging.ERROR)
        if fold_constants:
            graph.fold_constants()
        graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    del out.opset_import[:]
    out.opset_import.extend(model.opset_import)
    out.producer_name = "bap"
    try:
        out = onnx.shape_inference.infer_shapes(out, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:  # shape inference raises InferenceError and others
        raise ExportError(f"ONNX shape inference failed: {str(e).splitlines()[0][:300]}", "report this bug") from None
    return out


def set_metadata(model: onnx.ModelProto, props: dict[str, Any]) -> onnx.ModelProto:
    """Set ``metadata_props`` (values that are not strings are stored as JSON)."""
    existing = {p.key: p for p in model.metadata_props}
    for k, v in props.items():
        text = v if isinstance(v, str) else json.dumps(v, allow_nan=False, separators=(",", ":"))
        if k in existing:
            existing[k].value = text
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = k, text
    return model


def convert_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weights and activations in float16, inputs/outputs kept float32 (onnxconverter-common)."""
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise MissingDependencyError("--precision fp16 needs onnxconverter-common", "pip install 'bap[fp16]'") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float16.convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    """``{op_type: count}`` of the main graph."""
    out: dict[str, int] = {}
    for n in model.graph.node:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return dict(sorted(out.items()))
