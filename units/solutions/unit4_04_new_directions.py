"""Solutions to the exercises of Unit 4, `04_new_directions.ipynb`. Try them yourself first:
`coursekit.exercises.check` tells you what is off without showing these."""
import torch


def velocity(x0, noise):
    return noise - x0


def euler_step(x, v, s, s_next):
    return x + (s_next - s) * v


def preconditioning(sigma, sigma_data=0.5):
    c_skip = sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)
    c_out = sigma * sigma_data / (sigma ** 2 + sigma_data ** 2).sqrt()
    c_in = 1 / (sigma ** 2 + sigma_data ** 2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def heun_calls():
    """Counted on the zoo's EDM model: a forward hook counts the model's calls."""
    from coursekit import edm, models

    unet, _ = models.load_model("digits-edm")
    calls = []
    hook = unet.register_forward_hook(lambda module, args, output: calls.append(1))
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    edm.heun(unet, x, steps=13, labels=torch.tensor([3, 7]))
    hook.remove()
    return len(calls)


ANSWERS = {"unit4.flow_target": velocity, "unit4.euler_step": euler_step,
           "unit4.edm_preconditioning": preconditioning, "unit4.heun_calls": heun_calls}
