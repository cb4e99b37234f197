"""A PyTorch stand-in for the official FastFCN models, for conversion tests.

Written from the structure of wuhuikai/FastFCN (`encoding/dilated/resnet.py`,
`encoding/nn/customize.py`, `encoding/models/{base,encnet,psp,deeplabv3,fcn}.py`):
the module tree, and so every `state_dict` key and tensor shape, is the official
one, and the forward pass is the official eval-mode computation. Deliberate
differences, none of which changes a key or the eval-mode output:

- plain `nn.BatchNorm` instead of the official SyncBN (same parameters and
  buffers; identical in eval mode);
- the Encoding layer's `scaled_l2`/`aggregate` CUDA kernels are written with
  tensor broadcasting;
- widths are parameters (the official code hard-codes JPU width 512 and ResNet
  channels 512/1024/2048), so tests can run a narrow JPU; with `width=512` the
  shapes are the official ones. JPU_X's second JUM takes `4 * (width // 2)`
  channels, which is the official `in_channels[1] = 1024` at width 512.
"""

import torch
import torch.nn.functional as F
from torch import nn

DEPTHS = {"resnet50s": (3, 4, 6, 3), "resnet101s": (3, 4, 23, 3), "resnet152s": (3, 8, 36, 3)}
UP = dict(mode="bilinear", align_corners=True)


def _cbr(cin, cout, k, dilation=1):
    """Conv (no bias) -> BN -> ReLU, as the official `nn.Sequential`s (keys .0 and .1)."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation,
                                   bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


# ---------------------------------------------------------------- backbone


class Bottleneck(nn.Module):
    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class DeepStemResNet(nn.Module):
    """`encoding.dilated.ResNet(Bottleneck, layers, deep_base=True)`."""

    def __init__(self, layers=(3, 4, 6, 3), output_stride=8, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.Conv2d(64, 128, 3, 1, 1, bias=False))
        self.bn1 = nn.BatchNorm2d(128)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.inplanes = 128
        self.layer1 = self._stage(64, layers[0])
        self.layer2 = self._stage(128, layers[1], stride=2)
        if output_stride <= 8:
            self.layer3 = self._stage(256, layers[2], dilation=2)
            self.layer4 = self._stage(512, layers[3], dilation=4)
        elif output_stride <= 16:
            self.layer3 = self._stage(256, layers[2], stride=2)
            self.layer4 = self._stage(512, layers[3], dilation=2)
        else:
            self.layer3 = self._stage(256, layers[2], stride=2)
            self.layer4 = self._stage(512, layers[3], stride=2)
        self.avgpool = nn.AvgPool2d(7, stride=1)
        self.fc = nn.Linear(2048, num_classes)

    def _stage(self, planes, blocks, stride=1, dilation=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        first = {1: 1, 2: 1, 4: 2}[dilation]
        mods = [Bottleneck(self.inplanes, planes, stride, first, downsample)]
        self.inplanes = planes * 4
        mods += [Bottleneck(self.inplanes, planes, 1, dilation) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return c1, c2, c3, self.layer4(c3)


# ---------------------------------------------------------------- JPU / JPU_X


class SeparableConv2d(nn.Module):
    def __init__(self, cin, cout, dilation, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, 3, 1, dilation, dilation, groups=cin, bias=False)
        self.bn = norm(cin)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return self.pointwise(self.bn(self.conv1(x)))


def _branch(cin, width, dilation, norm):
    return nn.Sequential(SeparableConv2d(cin, width, dilation, norm), norm(width),
                         nn.ReLU(inplace=True))


class JPU(nn.Module):
    def __init__(self, in_channels=(512, 1024, 2048), width=512):
        super().__init__()
        self.conv5 = _cbr(in_channels[-1], width, 3)
        self.conv4 = _cbr(in_channels[-2], width, 3)
        self.conv3 = _cbr(in_channels[-3], width, 3)
        for i, d in enumerate((1, 2, 4, 8)):
            setattr(self, f"dilation{i + 1}", _branch(3 * width, width, d, nn.BatchNorm2d))

    def forward(self, c1, c2, c3, c4):
        f5, f4, f3 = self.conv5(c4), self.conv4(c3), self.conv3(c2)
        size = f3.shape[2:]
        feat = torch.cat([F.interpolate(f5, size, **UP), F.interpolate(f4, size, **UP), f3], 1)
        return torch.cat([getattr(self, f"dilation{i}")(feat) for i in range(1, 5)], 1)


class JUM(nn.Module):
    def __init__(self, in_l, in_h, width, dilation):
        super().__init__()
        self.conv_l = _cbr(in_l, width, 3)
        self.conv_h = _cbr(in_h, width, 3)
        gn = lambda c: nn.GroupNorm(32, c)  # noqa: E731
        for i, m in enumerate((1, 2, 4)):
            setattr(self, f"dilation{i + 1}", _branch(2 * width, width, m * dilation, gn))

    def forward(self, x_l, x_h):
        f_h = self.conv_h(x_h)
        f_l = F.interpolate(self.conv_l(x_l), f_h.shape[2:], **UP)
        feat = torch.cat([f_l, f_h], 1)
        return torch.cat([f_l] + [getattr(self, f"dilation{i}")(feat) for i in (1, 2, 3)], 1)


class JPU_X(nn.Module):  # noqa: N801 (official name)
    def __init__(self, in_channels=(512, 1024, 2048), width=512):
        super().__init__()
        self.jum_1 = JUM(in_channels[1], in_channels[0], width // 2, 1)
        self.jum_2 = JUM(in_channels[2], 4 * (width // 2), width, 2)

    def forward(self, c1, c2, c3, c4):
        return self.jum_2(c4, self.jum_1(c3, c2))


# ---------------------------------------------------------------- heads


class FCNHead(nn.Module):
    def __init__(self, cin, nclass):
        super().__init__()
        inter = cin // 4
        self.conv5 = nn.Sequential(nn.Conv2d(cin, inter, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(inter), nn.ReLU(), nn.Dropout2d(0.1),
                                   nn.Conv2d(inter, nclass, 1))

    def forward(self, x):
        return self.conv5(x)


class Encoding(nn.Module):
    def __init__(self, D, K):  # noqa: N803 (official argument names)
        super().__init__()
        std = 1.0 / (K * D) ** 0.5
        self.codewords = nn.Parameter(torch.empty(K, D).uniform_(-std, std))
        self.scale = nn.Parameter(torch.empty(K).uniform_(-1, 0))

    def forward(self, x):
        b, d = x.shape[:2]
        x = x.reshape(b, d, -1).transpose(1, 2)  # (B, N, D)
        resid = x[:, :, None, :] - self.codewords[None, None]  # (B, N, K, D)
        assign = F.softmax(self.scale * resid.pow(2).sum(-1), dim=2)  # (B, N, K)
        return (assign[..., None] * resid).sum(1)  # (B, K, D)


class Mean(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return x.mean(self.dim)


class EncModule(nn.Module):
    def __init__(self, cin, nclass, ncodes=32, se_loss=True):
        super().__init__()
        self.se_loss = se_loss
        self.encoding = nn.Sequential(
            nn.Conv2d(cin, cin, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
            Encoding(cin, ncodes), nn.BatchNorm1d(ncodes), nn.ReLU(inplace=True), Mean(1))
        self.fc = nn.Sequential(nn.Linear(cin, cin), nn.Sigmoid())
        if se_loss:
            self.selayer = nn.Linear(cin, nclass)

    def forward(self, x):
        en = self.encoding(x)
        out = F.relu(x + x * self.fc(en)[:, :, None, None])
        return (out, self.selayer(en)) if self.se_loss else (out,)


class EncHead(nn.Module):
    def __init__(self, cin, nclass, se_loss=True, jpu=True):
        super().__init__()
        self.conv5 = _cbr(cin, 512, 1 if jpu else 3)
        self.encmodule = EncModule(512, nclass, 32, se_loss)
        self.conv6 = nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(512, nclass, 1))

    def forward(self, x):
        outs = list(self.encmodule(self.conv5(x)))
        outs[0] = self.conv6(outs[0])
        return outs


class PyramidPooling(nn.Module):
    def __init__(self, cin):
        super().__init__()
        for i, bins in enumerate((1, 2, 3, 6)):
            setattr(self, f"pool{i + 1}", nn.AdaptiveAvgPool2d(bins))
            setattr(self, f"conv{i + 1}", _cbr(cin, cin // 4, 1))

    def forward(self, x):
        size = x.shape[2:]
        return torch.cat([x] + [
            F.interpolate(getattr(self, f"conv{i}")(getattr(self, f"pool{i}")(x)), size, **UP)
            for i in range(1, 5)], 1)


class PSPHead(nn.Module):
    def __init__(self, cin, nclass):
        super().__init__()
        inter = cin // 4
        self.conv5 = nn.Sequential(PyramidPooling(cin),
                                   nn.Conv2d(cin * 2, inter, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(inter), nn.ReLU(True), nn.Dropout2d(0.1),
                                   nn.Conv2d(inter, nclass, 1))

    def forward(self, x):
        return self.conv5(x)


class AsppPooling(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.gap = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU(True))

    def forward(self, x):
        return F.interpolate(self.gap(x), x.shape[2:], **UP)


class ASPP_Module(nn.Module):  # noqa: N801 (official name)
    def __init__(self, cin, rates=(12, 24, 36)):
        super().__init__()
        out = cin // 8
        self.b0 = _cbr(cin, out, 1)
        self.b1, self.b2, self.b3 = (_cbr(cin, out, 3, r) for r in rates)
        self.b4 = AsppPooling(cin, out)
        self.project = nn.Sequential(nn.Conv2d(5 * out, out, 1, bias=False), nn.BatchNorm2d(out),
                                     nn.ReLU(True), nn.Dropout2d(0.5))

    def forward(self, x):
        return self.project(torch.cat([self.b0(x), self.b1(x), self.b2(x), self.b3(x),
                                       self.b4(x)], 1))


class DeepLabV3Head(nn.Module):
    def __init__(self, cin, nclass):
        super().__init__()
        inter = cin // 8
        self.aspp = ASPP_Module(cin)
        self.block = nn.Sequential(nn.Conv2d(inter, inter, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(inter), nn.ReLU(True), nn.Dropout2d(0.1),
                                   nn.Conv2d(inter, nclass, 1))

    def forward(self, x):
        return self.block(self.aspp(x))


# ---------------------------------------------------------------- full model


class SegmentationModel(nn.Module):
    """`EncNet` / `PSP` / `DeepLabV3` / `FCN` of the official code (BaseNet + head).

    Args:
        head: "encnet", "psp", "deeplab" or "fcn".
        nclass: number of classes.
        layers: blocks per ResNet stage (DEPTHS["resnet50s"] is the official 50s).
        jpu: "JPU", "JPU_X" or None (dilated backbone, output stride 8).
        aux, se_loss: the official flags.
        width: JPU width (512 officially).
    """

    def __init__(self, head, nclass, layers=DEPTHS["resnet50s"], jpu="JPU", aux=True,
                 se_loss=True, width=512):
        super().__init__()
        self.aux, self.se_loss = aux, se_loss and head == "encnet"
        self.pretrained = DeepStemResNet(layers, output_stride=32 if jpu else 8)
        self.jpu = {"JPU": JPU, "JPU_X": JPU_X}[jpu]((512, 1024, 2048), width) if jpu else None
        cin = 4 * width if jpu else 2048
        if head == "encnet":
            self.head = EncHead(cin, nclass, self.se_loss, jpu=bool(jpu))
        elif head == "psp":
            self.head = PSPHead(cin, nclass)
        elif head == "deeplab":
            self.head = DeepLabV3Head(cin, nclass)
        else:
            self.head = FCNHead(cin, nclass)
        if aux:
            self.auxlayer = FCNHead(1024, nclass)

    def forward(self, x):
        size = x.shape[2:]
        c1, c2, c3, c4 = self.pretrained.features(x)
        feat = self.jpu(c1, c2, c3, c4) if self.jpu is not None else c4
        out = self.head(feat)
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        outs[0] = F.interpolate(outs[0], size, **UP)
        if self.aux:
            outs.append(F.interpolate(self.auxlayer(c3), size, **UP))
        return outs


@torch.no_grad()
def randomize_(model, seed=0):
    """Random weights and BN statistics everywhere, at scales that keep a deep net finite.

    Conv/linear weights He-scaled, biases, BN/GN affine parameters, running means
    and variances, codewords and scales all random, so that a conversion that
    drops or transposes anything shows up in the outputs.
    """
    gen = torch.Generator().manual_seed(seed)

    def rand(shape, lo, hi):
        return torch.rand(shape, generator=gen) * (hi - lo) + lo

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen)
                                * (2.0 / fan_in) ** 0.5)
            if module.bias is not None:
                module.bias.copy_(rand(module.bias.shape, -0.2, 0.2))
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)):
            module.weight.copy_(rand(module.weight.shape, 0.5, 1.5))
            module.bias.copy_(rand(module.bias.shape, -0.2, 0.2))
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.running_mean.copy_(rand(module.running_mean.shape, -0.2, 0.2))
                module.running_var.copy_(rand(module.running_var.shape, 0.5, 2.0))
                module.num_batches_tracked.fill_(1000)
        elif isinstance(module, Encoding):
            module.codewords.copy_(torch.randn(module.codewords.shape, generator=gen) * 0.5)
            module.scale.copy_(rand(module.scale.shape, -0.1, -0.01))
    # Residual branches: shrink the last BN so activations stay O(1) through 50+ blocks.
    for module in model.modules():
        if isinstance(module, Bottleneck):
            module.bn3.weight.mul_(0.3)
    return model
