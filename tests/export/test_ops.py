"""The export's two custom ops: eager (our ops) and their ONNX nodes in ONNX Runtime agree on
NonMaxSuppression (batches, classes, score threshold, tied scores) and on RoiAlign in both
coordinate conventions (aligned=False: torchvision's; aligned=True: half pixel)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from maskrcnn.export import ops  # noqa: E402
from testing_utils import need_export  # noqa: E402


class Ops(nn.Module):
    def forward(self, boxes, scores, features, rois, batch_index):
        kept = ops.nms(boxes, scores, 0.5, 0.1)
        return (kept,
                ops.roi_align(features, rois, batch_index, 3, 0.5, 2, False),
                ops.roi_align(features, rois, batch_index, 3, 0.5, 0, True))


def random_inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(2, 40, 2, generator=g) * 50
    wh = torch.rand(2, 40, 2, generator=g) * 20 + 1
    boxes = torch.cat([xy, xy + wh], dim=-1)  # (B=2, S=40, 4)
    scores = torch.rand(2, 3, 40, generator=g)  # (B, C=3, S)
    scores[:, :, 5] = scores[:, :, 6]  # tied scores: the lower index goes first in both
    boxes[:, 6] = boxes[:, 5]
    features = torch.randn(2, 4, 16, 20, generator=g)
    rois = torch.cat([xy[0, :7], xy[0, :7] + wh[0, :7]], dim=-1) * 0.6  # some reach past the map
    batch_index = torch.tensor([0, 1, 0, 1, 1, 0, 0])
    return boxes, scores, features, rois, batch_index


def test_custom_ops_match_their_onnx_nodes(tmp_path):
    need_export()
    example = random_inputs(0)
    dynamic = ({0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO}, {0: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO},
               None, {0: torch.export.Dim.AUTO}, {0: torch.export.Dim.AUTO})
    program = torch.onnx.export(Ops(), example, dynamo=True, opset_version=18, dynamic_shapes=dynamic,
                                custom_translation_table=ops.onnx_translations(),
                                input_names=["boxes", "scores", "features", "rois", "batch_index"])
    program.save(tmp_path / "ops.onnx")
    session = ort.InferenceSession(str(tmp_path / "ops.onnx"), providers=["CPUExecutionProvider"])
    assert {n.op_type for n in program.model_proto.graph.node} >= {"NonMaxSuppression", "RoiAlign"}
    for seed in range(3):
        inputs = random_inputs(seed)
        expected = Ops()(*inputs)
        got = session.run(None, {name: t.numpy() for name, t in
                                 zip(["boxes", "scores", "features", "rois", "batch_index"], inputs)})
        np.testing.assert_array_equal(got[0], expected[0].numpy())  # same boxes, same order
        np.testing.assert_allclose(got[1], expected[1].numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(got[2], expected[2].numpy(), atol=1e-5, rtol=0)


def test_nms_eager_is_onnx_semantics():
    """Every (batch, class) pair on its own, candidates scoring > score_threshold only, rows in
    (batch, class, descending score) order."""
    boxes = torch.tensor([[[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.0]]])
    scores = torch.tensor([[[0.9, 0.8, 0.7, 0.05], [0.1, 0.6, 0.95, 0.7]]])
    kept = ops.nms(boxes, scores, 0.5, 0.1).tolist()
    assert kept == [[0, 0, 0], [0, 0, 2], [0, 1, 2], [0, 1, 3]]
