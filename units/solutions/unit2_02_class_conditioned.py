"""Solutions to the exercises of Unit 2, `02_class_conditioned.ipynb`. Try them yourself first:
`coursekit.exercises.check` tells you what is off without showing these."""
import torch


def guide(eps_cond, eps_free, w):
    return eps_free + w * (eps_cond - eps_free)


def cross_attention(pixels, tokens, w_q, w_k, w_v):
    q, k, v = pixels @ w_q, tokens @ w_k, tokens @ w_v
    weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return weights @ v


def class_embedding_params():
    from coursekit import models

    unet, _ = models.load_model("digits-cond")
    return unet.class_embedding.weight.numel()


ANSWERS = {"unit2.cfg": guide, "unit2.cross_attention": cross_attention,
           "unit2.class_embedding_params": class_embedding_params}
