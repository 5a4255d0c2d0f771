import torch

from napari_xt._torchvision_compat import box_nms, import_timm


def _brute_force_nms(boxes, scores, threshold):
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep = []
    for i in order:
        ok = True
        for j in keep:
            y1 = torch.maximum(boxes[i, :2], boxes[j, :2])
            y2 = torch.minimum(boxes[i, 2:], boxes[j, 2:])
            inter = (y2 - y1).clamp(min=0).prod()
            union = (boxes[i, 2:] - boxes[i, :2]).prod() + (boxes[j, 2:] - boxes[j, :2]).prod() - inter
            ok &= bool(inter / union <= threshold)
        if ok:
            keep.append(i)
    return keep


def test_nms_matches_brute_force():
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(60, 2, generator=generator) * 100
    boxes = torch.cat([corners, corners + 5 + torch.rand(60, 2, generator=generator) * 20], dim=1)
    scores = torch.rand(60, generator=generator)
    assert box_nms(boxes, scores, 0.3).tolist() == _brute_force_nms(boxes, scores, 0.3)


def test_timm_and_torchvision_ops_work():
    timm = import_timm()
    import torchvision

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=torch.float)
    assert torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 2]
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 512)
