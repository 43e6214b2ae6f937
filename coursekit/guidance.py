"""Loss guidance: steer sampling with the gradient of any differentiable loss on the predicted x0.

At each step the model's noise estimate gives a guess of the clean image,
x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar). A loss on that guess (distance to a
colour, a classifier's -log p(class), ...) is differentiated with respect to x_t, x_t is moved
a little downhill, and the scheduler's ordinary step follows. Two variants:

- `through_unet=False`: the noise estimate is held fixed, so the gradient flows only through
  the x0 formula. Cheap: one forward pass, no UNet backward.
- `through_unet=True`: the gradient also flows through the UNet's noise estimate. It costs a
  backward pass through the UNet and more memory, and steers more strongly.
"""
from __future__ import annotations

import torch

from . import samplers
from .samplers import SamplerError, _check, predict_noise


def _check_scheduler(scheduler) -> None:
    if getattr(scheduler.config, "prediction_type", "epsilon") != "epsilon":
        raise SamplerError("loss guidance here needs a noise-predicting (epsilon) model")
    if not hasattr(scheduler, "alphas_cumprod") or scheduler.init_noise_sigma != 1.0:
        raise SamplerError("loss guidance works with DDPM/DDIM-style schedulers; use samplers.scheduler_named('ddim', ...)")


def predict_x0(scheduler, x: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), for noise-predicting models."""
    _check_scheduler(scheduler)
    ab = scheduler.alphas_cumprod.to(x.device)[int(t)]
    return (x - (1 - ab).sqrt() * eps) / ab.sqrt()


def guidance_gradient(unet, scheduler, x, t, loss_fn, *, through_unet: bool = False, labels=None,
                      guidance_scale: float = 1.0):
    """(gradient of loss_fn(x0) with respect to x_t, the noise estimate eps) at step t."""
    x = x.detach().requires_grad_(True)
    if through_unet:
        eps = predict_noise(unet, x, t, labels, guidance_scale)
    else:
        with torch.no_grad():
            eps = predict_noise(unet, x, t, labels, guidance_scale)
    loss = loss_fn(predict_x0(scheduler, x, eps, t))
    if loss.ndim != 0:
        raise SamplerError(f"the guidance loss must be a scalar, got shape {tuple(loss.shape)}")
    (grad,) = torch.autograd.grad(loss, x)
    return grad, eps.detach()


def sample(unet, scheduler, x: torch.Tensor, loss_fn, *, scale: float, steps: int = 25,
           through_unet: bool = False, labels=None, guidance_scale: float = 1.0, **kwargs):
    """Loss-guided sampling from the noise `x`: before each scheduler step, x_t -= scale * grad.

    `loss_fn(x0)` takes the predicted clean images (N, C, H, W in about [-1, 1]) and returns a
    scalar. `scale=0` gives the unguided sampler's result exactly. Other keywords (generator,
    callback, progress, trajectory, eta, ...) go to `coursekit.samplers.sample`.
    """
    labels = _check(unet, x, labels, guidance_scale)
    _check_scheduler(scheduler)

    def guide(x, t):
        with torch.enable_grad():
            grad, eps = guidance_gradient(unet, scheduler, x, t, loss_fn, through_unet=through_unet,
                                          labels=labels, guidance_scale=guidance_scale)
        return x - scale * grad, eps

    return samplers.sample(unet, scheduler, x, steps=steps, labels=labels, guidance_scale=guidance_scale,
                           guide=guide if scale else None, **kwargs)


def colour_loss(colour) -> "callable":
    """A loss on x0: each image's mean absolute distance of its pixels to an RGB `colour` in
    0..1, summed over the batch (so each image's gradient does not depend on the batch size)."""
    target = torch.as_tensor(colour, dtype=torch.float32).reshape(1, -1, 1, 1) * 2 - 1

    def loss(x0):
        if x0.shape[1] != target.shape[1]:
            raise SamplerError(f"colour has {target.shape[1]} channels but the images have {x0.shape[1]}")
        return (x0 - target.to(x0.device)).abs().mean(dim=(1, 2, 3)).sum()

    return loss


def mean_colour_distance(x: torch.Tensor, colour) -> float:
    """Euclidean distance, in 0..1 units, between each image's mean colour and `colour`, averaged."""
    target = torch.as_tensor(colour, dtype=torch.float32).reshape(1, -1)
    mean = ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).mean(dim=(2, 3))
    return float((mean - target).norm(dim=1).mean())


def classifier_loss(classifier, labels) -> "callable":
    """A loss on x0: -log p(label | x0) under `classifier` (images to logits), summed over the batch."""
    labels = torch.as_tensor(labels).long()

    def loss(x0):
        wanted = labels.to(x0.device).expand(len(x0)) if labels.ndim == 0 else labels.to(x0.device)
        return torch.nn.functional.cross_entropy(classifier(x0), wanted, reduction="sum")

    return loss


class ClassChannelsUNet(torch.nn.Module):
    """Class conditioning as extra input channels: a learned embedding of the label is spread
    over every pixel and concatenated with the image before the UNet sees it.

    It behaves like a class-conditional diffusers UNet (`unet(x, t, class_labels=y).sample`,
    `config.num_class_embeds`, the last label meaning 'no class'), so coursekit's samplers,
    classifier-free guidance and training loop work with it unchanged.
    """

    def __init__(self, unet, num_classes: int, embed_dim: int = 4):
        super().__init__()
        channels = unet.config.in_channels - embed_dim
        if channels not in (1, 3) or unet.config.out_channels != channels:
            raise SamplerError(f"the inner UNet needs in_channels = image channels + {embed_dim} and "
                               f"out_channels = image channels; got {unet.config.in_channels} and {unet.config.out_channels}")
        self.unet = unet
        self.embed = torch.nn.Embedding(num_classes + 1, embed_dim)
        from types import SimpleNamespace

        self.config = SimpleNamespace(in_channels=channels, out_channels=channels, sample_size=unet.config.sample_size,
                                      num_class_embeds=num_classes + 1, embed_dim=embed_dim)

    @property
    def device(self):
        return self.unet.device

    @property
    def dtype(self):
        return self.unet.dtype

    def forward(self, x, t, class_labels=None):
        if class_labels is None:
            raise SamplerError("ClassChannelsUNet needs class_labels (use the last label for 'no class')")
        maps = self.embed(class_labels)[:, :, None, None].expand(-1, -1, *x.shape[-2:])
        return self.unet(torch.cat([x, maps.to(x.dtype)], dim=1), t)


def class_channels_unet(size: int, channels: int, num_classes: int, embed_dim: int = 4, **unet_kwargs):
    """A UNet2DModel wrapped by ClassChannelsUNet: conditioning through extra input channels."""
    from diffusers import UNet2DModel

    inner = UNet2DModel(sample_size=size, in_channels=channels + embed_dim, out_channels=channels, **unet_kwargs)
    return ClassChannelsUNet(inner, num_classes, embed_dim)


def small_classifier(channels: int, num_classes: int) -> torch.nn.Module:
    """A small CNN from images (N, channels, H, W in [-1, 1]) to class logits, any H and W."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.SiLU(),
        nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.SiLU(),
        nn.Conv2d(64, 64, 3, padding=1, stride=2), nn.SiLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )


def train_classifier(images: torch.Tensor, labels: torch.Tensor, *, steps: int = 400, batch_size: int = 64,
                     lr: float = 2e-3, blur_noise: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Fit `small_classifier` on clean images to guide sampling; returns it in eval mode.

    The guide sees predicted x0, which is blurry and noisy early in sampling, so training
    images get Gaussian noise of a random strength up to `blur_noise`. This guide is separate
    from `coursekit.metrics`' judge, which stays an independent measure.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = small_classifier(images.shape[1], int(labels.max()) + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch_size,), generator=g)
        strength = torch.rand(batch_size, 1, 1, 1, generator=g) * blur_noise
        x = images[idx] + strength * torch.randn(images[idx].shape, generator=g)
        loss = torch.nn.functional.cross_entropy(model(x), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
