"""Solutions to the exercises of Unit 4, `02_diffusion_for_audio.ipynb`. Try them yourself first:
`coursekit.exercises.check` tells you what is off without showing these."""
import torch


def hz_to_mel(f):
    return 2595 * torch.log10(1 + f / 700)


def mel_filters(n_freqs, n_mels, sample_rate):
    f_max = sample_rate / 2
    bins = torch.linspace(0, f_max, n_freqs, dtype=torch.float64)
    mels = torch.linspace(0, float(hz_to_mel(torch.tensor(f_max, dtype=torch.float64))), n_mels + 2,
                          dtype=torch.float64)
    points = 700 * (10 ** (mels / 2595) - 1)
    lower, centre, upper = points[:-2], points[1:-1], points[2:]
    rising = (bins[:, None] - lower) / (centre - lower)
    falling = (upper - bins[:, None]) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0)


def image_seconds():
    from coursekit import audio

    preset = audio.PRESETS["small"]
    samples = preset.frames * preset.hop_length - 1
    return samples / preset.sample_rate


ANSWERS = {"unit4.hz_to_mel": hz_to_mel, "unit4.mel_filters": mel_filters, "unit4.image_seconds": image_seconds}
