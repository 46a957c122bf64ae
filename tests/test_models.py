import pytest
import torch
import torchvision

from models.head import ProjectionHead
from models.resnet import resnet18, resnet34, resnet50
from models.simclr import SimCLR


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_resnet50_parameter_counts():
    with torch.device("meta"):  # shapes only: no memory, no init time
        assert n_params(resnet50(stem="cifar")) == 23_500_352
        assert n_params(resnet50(stem="imagenet")) == 23_508_032
        assert n_params(resnet50(stem="stl")) == 23_500_352


@pytest.mark.parametrize("build,tv", [(resnet18, torchvision.models.resnet18), (resnet34, torchvision.models.resnet34),
                                      (resnet50, torchvision.models.resnet50)])
def test_parameter_names_and_shapes_match_torchvision_minus_fc(build, tv):
    ours = build(stem="imagenet").state_dict()
    theirs = {k: v for k, v in tv().state_dict().items() if not k.startswith("fc.")}
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    # torchvision's weights load into ours with nothing missing or unexpected
    build(stem="imagenet").load_state_dict(theirs)


@pytest.mark.parametrize("build,dim", [(resnet18, 512), (resnet34, 512), (resnet50, 2048)])
@pytest.mark.parametrize("stem,size,conv_k,pool", [("cifar", 32, 3, False), ("stl", 32, 3, True),
                                                    ("imagenet", 64, 7, True)])
def test_stems_and_output_shapes(build, dim, stem, size, conv_k, pool):
    net = build(stem=stem).eval()
    assert net.num_features == dim
    assert net.conv1.kernel_size == (conv_k, conv_k)
    assert net.conv1.stride == ((1, 1) if conv_k == 3 else (2, 2))
    assert isinstance(net.maxpool, torch.nn.MaxPool2d) == pool
    with torch.no_grad():
        assert net(torch.randn(2, 3, size, size)).shape == (2, dim)


def test_cifar_stem_keeps_resolution():
    net = resnet18(stem="cifar").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        h = net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))
    assert h.shape[-1] == 32  # no stride and no max-pool before layer1


def test_zero_init_residual_and_unknown_stem():
    net = resnet50(stem="cifar")
    assert all(b.bn3.weight.abs().sum() == 0 for b in net.layer1)
    with pytest.raises(ValueError):
        resnet18(stem="tiny")


def test_width_multiplier_scales_every_width():
    with torch.device("meta"):  # widths only: no memory, no init time
        assert resnet50(stem="imagenet", width_multiplier=2).num_features == 4096
        assert resnet18(stem="cifar", width_multiplier=2).conv1.out_channels == 128


def test_projection_head_structure():
    head = ProjectionHead(2048, 2048, 128)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features, lin.bias) for lin in linears] == [(2048, 2048, None), (2048, 128, None)]
    assert [m.num_features for m in head.modules() if isinstance(m, torch.nn.BatchNorm1d)] == [2048, 128]
    assert isinstance(head.layers[0][2], torch.nn.ReLU) and len(head.layers[1]) == 2  # no ReLU at the end
    last_bn = head.layers[-1][1]
    assert last_bn.weight.requires_grad and not last_bn.bias.requires_grad  # scale, no learned shift
    assert n_params(head) == 2048 * 2048 + 2 * 2048 + 2048 * 128 + 2 * 128
    assert head(torch.randn(4, 2048)).shape == (4, 128)
    head3 = ProjectionHead(512, 512, 128, num_layers=3)
    assert len(head3.layers) == 3 and head3.layers[0](torch.randn(3, 512)).shape == (3, 512)


def test_last_bn_shift_stays_zero_after_training_step():
    head = ProjectionHead(8, 8, 4)
    opt = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1.0)
    head(torch.randn(16, 8)).pow(2).sum().backward()
    opt.step()
    assert head.layers[-1][1].bias.abs().sum() == 0


def test_simclr_module():
    model = SimCLR("resnet18", "cifar", proj_dim=64).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 64)
    assert all(k.startswith(("backbone.", "head.")) for k in model.state_dict())
