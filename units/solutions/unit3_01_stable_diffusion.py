"""Solutions to the exercises of Unit 3, `01_stable_diffusion.ipynb`. Try them yourself first:
`coursekit.exercises.check` tells you what is off without showing these."""
import torch


def latent_ratio():
    from coursekit import stable_diffusion

    pipe = stable_diffusion.load_pipeline("tiny-sd")
    side = pipe.unet.config.sample_size
    pixels = (side * pipe.vae_scale_factor) ** 2 * pipe.vae.config.in_channels
    return pixels / (side ** 2 * pipe.unet.config.in_channels)


def attention_heads(q, k, v, heads):
    b, n, d = q.shape
    split = lambda z: z.reshape(b, -1, heads, d // heads).transpose(1, 2)
    q, k, v = split(q), split(k), split(v)
    weights = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, dim=-1)
    return (weights @ v).transpose(1, 2).reshape(b, n, d)


def keep_known(z, z_known, mask):
    return mask * z + (1 - mask) * z_known


ANSWERS = {"unit3.latent_ratio": latent_ratio, "unit3.attention_heads": attention_heads,
           "unit3.inpaint_blend": keep_known}
