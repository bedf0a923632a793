"""mmcv's CUDA ops on a real GPU, against mmcv's own CPU implementations (or, for sigmoid focal loss, which mmcv has
no CPU kernel for, against its defining formula in plain torch); plus tiny mmdet and mmpose forward passes on the GPU.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
ops = pytest.importorskip("mmcv.ops")

pytestmark = pytest.mark.gpu


def _gen(device, seed: int):  # noqa: ANN001, ANN202
    return torch.Generator(device="cpu").manual_seed(seed)


def _boxes(n: int, gen, size: float = 200.0):  # noqa: ANN001, ANN202
    xy = torch.rand(n, 2, generator=gen) * size
    wh = torch.rand(n, 2, generator=gen) * size / 4 + 1
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("n", [50, 2000])
def test_nms_matches_cpu(device, measure, n: int) -> None:  # noqa: ANN001
    gen = _gen(device, n)
    boxes, scores = _boxes(n, gen), torch.rand(n, generator=gen)
    dets_cpu, keep_cpu = ops.nms(boxes, scores, iou_threshold=0.5)
    dets_gpu, keep_gpu = ops.nms(boxes.to(device), scores.to(device), iou_threshold=0.5)
    assert keep_gpu.is_cuda
    assert torch.equal(keep_cpu, keep_gpu.cpu()), "GPU and CPU nms keep different boxes"
    torch.testing.assert_close(dets_cpu, dets_gpu.cpu())
    measure("nms kept", len(keep_cpu), "boxes", n=n)


@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_matches_cpu_forward_and_backward(device, aligned: bool) -> None:  # noqa: ANN001
    gen = _gen(device, 1)
    feats = torch.randn(2, 16, 32, 40, generator=gen)
    rois = torch.cat([torch.randint(0, 2, (64, 1), generator=gen).float(), _boxes(64, gen, size=30.0)], dim=1)
    outs = []
    for dev in ("cpu", device):
        x = feats.to(dev).requires_grad_()
        out = ops.roi_align(x, rois.to(dev), (7, 7), 1.0, 2, "avg", aligned)  # Function.apply: positional only
        (grad,) = torch.autograd.grad(out.sum(), x)
        outs.append((out.detach().cpu(), grad.cpu()))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-4, atol=1e-4)


def test_deform_conv2d_matches_cpu(device) -> None:  # noqa: ANN001
    gen = _gen(device, 2)
    x = torch.randn(2, 8, 12, 12, generator=gen)
    weight = torch.randn(16, 8, 3, 3, generator=gen) * 0.1
    offset = torch.randn(2, 2 * 9, 12, 12, generator=gen) * 0.5
    results = []
    for dev in ("cpu", device):
        xi, wi, oi = (t.to(dev).requires_grad_() for t in (x, weight, offset))
        out = ops.deform_conv2d(xi, oi, wi, 1, 1, 1, 1, 1)  # stride, padding, dilation, groups, deform_groups
        grads = torch.autograd.grad(out.square().sum(), (xi, wi, oi))
        results.append([out.detach().cpu(), *(g.cpu() for g in grads)])
    for cpu, gpu, name in zip(results[0], results[1], ("out", "dx", "dweight", "doffset")):
        torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-3, msg=lambda m, n=name: f"{n}: {m}")


def test_modulated_deform_conv2d_matches_cpu(device) -> None:  # noqa: ANN001
    gen = _gen(device, 3)
    x = torch.randn(2, 8, 12, 12, generator=gen)
    weight = torch.randn(16, 8, 3, 3, generator=gen) * 0.1
    bias = torch.randn(16, generator=gen)
    offset = torch.randn(2, 2 * 9, 12, 12, generator=gen) * 0.5
    mask = torch.rand(2, 9, 12, 12, generator=gen)
    results = []
    for dev in ("cpu", device):
        xi, oi, mi, wi, bi = (t.to(dev).requires_grad_() for t in (x, offset, mask, weight, bias))
        out = ops.modulated_deform_conv2d(xi, oi, mi, wi, bi, 1, 1, 1, 1, 1)
        grads = torch.autograd.grad(out.square().sum(), (xi, oi, mi, wi, bi))
        results.append([out.detach().cpu(), *(g.cpu() for g in grads)])
    for cpu, gpu, name in zip(results[0], results[1], ("out", "dx", "doffset", "dmask", "dweight", "dbias")):
        torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-3, msg=lambda m, n=name: f"{n}: {m}")


def test_sigmoid_focal_loss_matches_its_formula(device) -> None:  # noqa: ANN001
    gen = _gen(device, 4)
    logits = torch.randn(64, 10, generator=gen)
    target = torch.randint(0, 10, (64,), generator=gen)
    gamma, alpha = 2.0, 0.25
    x = logits.to(device).requires_grad_()
    loss = ops.sigmoid_focal_loss(x, target.to(device), gamma, alpha, None, "sum")
    (grad,) = torch.autograd.grad(loss, x)

    xr = logits.double().requires_grad_()
    onehot = torch.nn.functional.one_hot(target, 10).double()
    p = xr.sigmoid()
    ce = torch.nn.functional.binary_cross_entropy_with_logits(xr, onehot, reduction="none")
    p_t = p * onehot + (1 - p) * (1 - onehot)
    alpha_t = alpha * onehot + (1 - alpha) * (1 - onehot)
    ref = (alpha_t * ce * (1 - p_t) ** gamma).sum()
    (grad_ref,) = torch.autograd.grad(ref, xr)
    torch.testing.assert_close(loss.detach().cpu().double(), ref.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad.cpu().double(), grad_ref, rtol=1e-4, atol=1e-4)


def test_tiny_mmdet_two_stage_forward_on_gpu(device) -> None:  # noqa: ANN001
    """A tiny Faster R-CNN (ResNet-18, no weights): RPN proposals go through mmcv's nms, RoI features through
    mmcv's RoIAlign, on the GPU."""
    pytest.importorskip("mmdet")
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.structures import InstanceData

    register_all_modules()
    from mmengine.config import ConfigDict

    model = MODELS.build(ConfigDict(_faster_rcnn_config())).to(device).eval()
    from mmdet.structures import DetDataSample

    sample = DetDataSample(metainfo={"img_shape": (128, 160), "ori_shape": (128, 160), "scale_factor": (1.0, 1.0)})
    sample.gt_instances = InstanceData()
    with torch.no_grad():
        results = model.predict(torch.randn(1, 3, 128, 160, device=device), [sample])
    boxes = results[0].pred_instances.bboxes
    assert boxes.is_cuda and boxes.ndim == 2 and boxes.shape[-1] == 4


def test_tiny_mmpose_topdown_forward_on_gpu(device) -> None:  # noqa: ANN001
    pytest.importorskip("mmpose")
    from mmpose.registry import MODELS
    from mmpose.utils import register_all_modules

    register_all_modules()
    model = MODELS.build(
        dict(
            type="TopdownPoseEstimator",
            data_preprocessor=dict(type="PoseDataPreprocessor", mean=[123.7, 116.3, 103.5], std=[58.4, 57.1, 57.4]),
            backbone=dict(type="ResNet", depth=18),
            head=dict(type="HeatmapHead", in_channels=512, out_channels=17, deconv_out_channels=(64,),
                      deconv_kernel_sizes=(4,), loss=dict(type="KeypointMSELoss", use_target_weight=True),
                      decoder=dict(type="MSRAHeatmap", input_size=(192, 256), heatmap_size=(48, 64), sigma=2)),
        )
    ).to(device).eval()
    with torch.no_grad():
        heatmaps = model(torch.randn(2, 3, 256, 192, device=device), None, mode="tensor")
    assert heatmaps.is_cuda and heatmaps.shape == (2, 17, 16, 12)


def _faster_rcnn_config() -> dict:
    return dict(
        type="FasterRCNN",
        data_preprocessor=dict(type="DetDataPreprocessor", mean=[123.7, 116.3, 103.5], std=[58.4, 57.1, 57.4],
                               bgr_to_rgb=True, pad_size_divisor=32),
        backbone=dict(type="ResNet", depth=18, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=-1,
                      norm_cfg=dict(type="BN", requires_grad=True), norm_eval=True, style="pytorch"),
        neck=dict(type="FPN", in_channels=[64, 128, 256, 512], out_channels=64, num_outs=5),
        rpn_head=dict(
            type="RPNHead", in_channels=64, feat_channels=64,
            anchor_generator=dict(type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64]),
            bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
            loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
            loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
        roi_head=dict(
            type="StandardRoIHead",
            bbox_roi_extractor=dict(type="SingleRoIExtractor",
                                    roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=0),
                                    out_channels=64, featmap_strides=[4, 8, 16, 32]),
            bbox_head=dict(type="Shared2FCBBoxHead", in_channels=64, fc_out_channels=128, roi_feat_size=7,
                           num_classes=3,
                           bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4,
                                           target_stds=[0.1, 0.1, 0.2, 0.2]),
                           reg_class_agnostic=False,
                           loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                           loss_bbox=dict(type="L1Loss", loss_weight=1.0))),
        train_cfg=None,
        test_cfg=dict(
            rpn=dict(nms_pre=200, max_per_img=100, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
            rcnn=dict(score_thr=0.0, nms=dict(type="nms", iou_threshold=0.5), max_per_img=20)),
    )
