"""Solutions to the exercises of Unit 1, `01_ddpm_and_ddim.ipynb`. Try them yourself first:
`coursekit.exercises.check` tells you what is off without showing these."""
import torch


def alpha_bar(betas):
    return torch.cumprod(1 - betas, dim=0)


def q_sample(x0, t, noise, alphas_cumprod):
    ab = alphas_cumprod[t].reshape(-1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def snr_steps():
    """Measured on diffusers' linear schedule, the one the notebook plots."""
    from diffusers import DDPMScheduler

    ab = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").alphas_cumprod
    return int((ab / (1 - ab) < 0.01).sum())


def ddim_step(x_t, eps, ab_t, ab_prev):
    x0_hat = (x_t - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
    return ab_prev.sqrt() * x0_hat + (1 - ab_prev).sqrt() * eps


ANSWERS = {"unit1.alpha_bar": alpha_bar, "unit1.q_sample": q_sample, "unit1.snr_steps": snr_steps,
           "unit1.ddim_step": ddim_step}
