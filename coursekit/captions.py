"""Captioned coloured digits: the small track's text-to-image data, its tokenizer and its judge.

Each image is one of scikit-learn's 8x8 digits, upscaled to 32x32 and painted in one colour on
black, with the caption "a red seven". Two attributes per caption (colour and digit) make a prompt
mean something and let us test composition: `HELD_OUT` pairs never appear in training, yet every
colour and every digit does. `PromptJudge` reads a sample back as (digit, colour) with a classifier
fit on real digits and the hue of its bright pixels, independently of any model the course trains.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0),
           "yellow": (1.0, 1.0, 0.0), "cyan": (0.0, 1.0, 1.0), "magenta": (1.0, 0.0, 1.0)}
# A colour the base model never sees: the concept a LoRA adapter teaches it.
NEW_COLOURS = {"orange": (1.0, 0.5, 0.0)}
PALETTE = {**COLOURS, **NEW_COLOURS}
# One held-out colour per digit: every digit and every colour still appears in training.
HELD_OUT = tuple((d, list(COLOURS)[(3 * d + 1) % len(COLOURS)]) for d in range(10))
SIZE = 32


class CaptionError(ValueError):
    """A prompt, colour or digit the captioned data does not have; the message lists what it has."""


def caption(digit: int, colour: str) -> str:
    """The caption of a digit painted in a colour: caption(7, 'red') == 'a red seven'."""
    if colour not in PALETTE:
        raise CaptionError(f"unknown colour {colour!r}; the captions use {', '.join(PALETTE)}")
    if not (isinstance(digit, (int, np.integer)) and 0 <= digit <= 9):
        raise CaptionError(f"digit must be a whole number 0..9, got {digit!r}")
    return f"{_article(colour)} {colour} {DIGIT_WORDS[int(digit)]}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def partial(digit: int, colour: str) -> tuple[str, str, str]:
    """The caption and its two one-attribute variants: ('a red seven', 'a seven', 'a red digit')."""
    return caption(digit, colour), f"{_article(DIGIT_WORDS[int(digit)])} {DIGIT_WORDS[int(digit)]}", \
        f"{_article(colour)} {colour} digit"


FILLER = ("a", "an", "the", "digit", "number")


def parse(prompt: str) -> tuple[int | None, str | None]:
    """(digit, colour) a prompt such as 'a red seven' (or 'a red 7.') asks for, None for an attribute it
    leaves open ('a seven', 'a red digit'), for judging samples against their prompt. Every word is
    read: one the captions never use is refused rather than skipped, so no digit is left open by mistake."""
    import re

    words = re.findall(r"[a-z]+|\d+|[^\sa-z\d.,!]", str(prompt).lower())
    numbers = {**{w: i for i, w in enumerate(DIGIT_WORDS)}, **{str(i): i for i in range(10)}}
    unknown = [w for w in words if w not in PALETTE and w not in numbers and w not in FILLER]
    colours = [w for w in words if w in PALETTE]
    digits = [numbers[w] for w in words if w in numbers]
    if unknown or len(colours) > 1 or len(digits) > 1 or not (colours or digits):
        verb = "is not a word" if len(unknown) == 1 else "are not words"
        unread = f" ({', '.join(repr(w) for w in unknown)} {verb} of the captions)" if unknown else ""
        raise CaptionError(f"{prompt!r} is not a prompt of one colour and one digit, such as 'a red seven'{unread} "
                           f"(colours: {', '.join(PALETTE)}; digits: {', '.join(DIGIT_WORDS)} or 0-9)")
    return (digits[0] if digits else None), (colours[0] if colours else None)


@lru_cache(maxsize=1)
def digit_shapes() -> tuple[torch.Tensor, torch.Tensor]:
    """(shapes (N, 1, 32, 32) with values in [0, 1], labels): the digits upscaled with bicubic
    interpolation, the ink's brightness before any colour is applied."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images / 16.0 * 255.0).round().astype(np.uint8)
    big = [np.asarray(Image.fromarray(p, mode="L").resize((SIZE, SIZE), Image.Resampling.BICUBIC), np.float32)
           for p in pixels]
    return torch.from_numpy(np.stack(big) / 255.0)[:, None], torch.from_numpy(digits.target).long()


def paint(shapes: torch.Tensor, rgb) -> torch.Tensor:
    """Shapes (N, 1, H, W) in [0, 1] painted in colours `rgb` ((3,) or (N, 3), each in [0, 1]) on
    black, as images in [-1, 1]."""
    rgb = torch.as_tensor(rgb, dtype=torch.float32).reshape(-1, 3, 1, 1)
    return shapes * rgb * 2 - 1


def dataset(pairs=None, held_out=HELD_OUT) -> tuple[torch.Tensor, list[str], torch.Tensor, list[str]]:
    """(images (N, 3, 32, 32) in [-1, 1], captions, digit labels, colour names): every digit image
    in every colour of `COLOURS` (or only the (digit, colour) `pairs` given), minus `held_out`."""
    shapes, labels = digit_shapes()
    wanted = set(pairs) if pairs is not None else {(d, c) for d in range(10) for c in COLOURS}
    wanted -= set(held_out)
    images, captions, digits, colours = [], [], [], []
    for colour in PALETTE:
        keep = torch.tensor([(int(d), colour) in wanted for d in labels])
        if keep.any():
            images.append(paint(shapes[keep], PALETTE[colour]))
            captions += [caption(int(d), colour) for d in labels[keep]]
            digits.append(labels[keep])
            colours += [colour] * int(keep.sum())
    if not images:
        raise CaptionError("no (digit, colour) pairs left to build a dataset from")
    return torch.cat(images), captions, torch.cat(digits), colours


def shift(images: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Each image moved by its whole-pixel (down, right) offset, black (-1) filling in."""
    out = torch.full_like(images, -1.0)
    h, w = images.shape[-2:]
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i, :, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            images[i, :, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def shifted(images: torch.Tensor, most: int = 4, seed: int = 0) -> torch.Tensor:
    """Each image moved by its own random offset of up to `most` pixels each way: digits off-centre,
    where the text-to-image model, trained on centred digits, would not put them by itself."""
    g = torch.Generator().manual_seed(seed)
    return shift(images, torch.randint(-most, most + 1, (len(images), 2), generator=g))


def centred(images: torch.Tensor) -> torch.Tensor:
    """Each image moved so that the centre of mass of its ink sits at the image's centre."""
    ink = (images.max(dim=1).values + 1) / 2
    total = ink.sum((1, 2)).clamp_min(1e-6)
    h, w = ink.shape[-2:]
    ys = (ink.sum(2) * torch.arange(h)).sum(1) / total
    xs = (ink.sum(1) * torch.arange(w)).sum(1) / total
    return shift(images, torch.stack([((h - 1) / 2 - ys).round(), ((w - 1) / 2 - xs).round()], 1).long())


def random_colour_images(n: int, generator: torch.Generator) -> torch.Tensor:
    """`n` digits in random bright colours (each channel uniform, the brightest scaled to 1): what
    the autoencoder learns to compress, so that it handles any colour, not only the named ones."""
    shapes, _ = digit_shapes()
    idx = torch.randint(0, len(shapes), (n,), generator=generator)
    rgb = torch.rand(n, 3, generator=generator)
    rgb = rgb / rgb.max(dim=1, keepdim=True).values.clamp_min(1e-6)
    return paint(shapes[idx], rgb)


def vocabulary_text() -> list[str]:
    """Every caption the course writes, base and new colours: what the tokenizer learns its merges from."""
    return [text for d in range(10) for c in PALETTE for text in partial(d, c)]


def build_tokenizer(folder: str | Path, model_max_length: int = 16):
    """Train a CLIP-style byte-level BPE (words end in '</w>', lower-case) on the captions with the
    `tokenizers` library and save it as a `CLIPTokenizer` in `folder` (vocab.json, merges.txt).
    Every byte stays in the vocabulary, alone and word-final, so any text tokenizes."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    specials = ["<|startoftext|>", "<|endoftext|>"]
    chars = list(bytes_to_unicode().values())
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    trainer = trainers.BpeTrainer(vocab_size=4096, min_frequency=1, special_tokens=[], end_of_word_suffix="</w>",
                                  initial_alphabet=chars, show_progress=False)
    tok.train_from_iterator(vocabulary_text(), trainer)
    learned = json.loads(tok.to_str())["model"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in learned["merges"]]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(vocab) + i for i, c in enumerate(chars)})
    for merge in merges:
        token = merge.replace(" ", "")
        vocab.setdefault(token, len(vocab))
    for s in specials:
        vocab[s] = len(vocab)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                              model_max_length=model_max_length)
    tokenizer.save_pretrained(folder)
    return CLIPTokenizer.from_pretrained(folder)


@dataclass
class PromptJudge:
    """Reads samples back as (digit, colour): the digit by a classifier fit on real digits
    (`metrics.fit_judge`), each image's brightest channel scaled to full brightness and centred on
    its ink first, so that a digit is read whatever its colour and wherever it sits; the colour as the
    palette entry nearest the mean colour of the bright pixels."""

    digits: object
    palette: dict

    def read(self, x: torch.Tensor) -> tuple[np.ndarray, list[str]]:

        from .data import check_images

        x = check_images(x, "PromptJudge", channels=(3,)).detach().float().cpu().clamp(-1, 1)
        ink = x.max(dim=1, keepdim=True).values
        digits = self.digits.predict(_judged((ink + 1) / 2))
        rgb = (x + 1) / 2
        bright = ((ink + 1) / 2 > 0.5).float()
        mean = (rgb * bright).sum((2, 3)) / bright.sum((2, 3)).clamp_min(1)
        mean = mean / mean.max(dim=1, keepdim=True).values.clamp_min(1e-6)
        names = list(self.palette)
        table = torch.tensor([self.palette[n] for n in names])
        nearest = torch.cdist(mean, table).argmin(1)
        return digits, [names[i] for i in nearest]

    def scores(self, x: torch.Tensor, prompts) -> dict:
        """Shares of samples whose digit, colour, and both, match their prompt (one prompt per sample,
        or one for all); an attribute the prompt leaves open always matches."""
        prompts = [prompts] * len(x) if isinstance(prompts, str) else list(prompts)
        if len(prompts) != len(x):
            raise CaptionError(f"got {len(prompts)} prompts for {len(x)} samples; give one per sample, or one for all")
        wanted = [parse(p) for p in prompts]
        digits, colours = self.read(x)
        d_ok = np.array([w[0] is None or d == w[0] for d, w in zip(digits, wanted)])
        c_ok = np.array([w[1] is None or c == w[1] for c, w in zip(colours, wanted)])
        return {"digit": float(d_ok.mean()), "colour": float(c_ok.mean()), "both": float((d_ok & c_ok).mean())}

    def accuracy(self, x: torch.Tensor, prompts) -> float:
        """Prompt accuracy: the share of samples showing the digit and the colour their prompt asks for."""
        return self.scores(x, prompts)["both"]


def _judged(ink: torch.Tensor) -> torch.Tensor:
    """Ink (N, 1, H, W) in [0, 1] as the digit reader sees it: scaled so that its brightest pixel is 1,
    centred on its centre of mass, at 16x16, in [-1, 1]."""
    import torch.nn.functional as F

    ink = ink / ink.amax((1, 2, 3), keepdim=True).clamp_min(1e-3)
    return F.interpolate(centred(ink * 2 - 1), size=16, mode="area")


def stroke_variants(shapes: torch.Tensor, n: int = 6) -> torch.Tensor:
    """`shapes` (N, 1, H, W in [0, 1]) followed by `n` redrawn copies, with thicker or thinner strokes (a
    3x3 dilation or erosion) and every other one softened by a 3x3 blur: the strokes a generator draws
    vary like this, and a reader fit on the one stroke of the scanned digits misreads them."""
    import torch.nn.functional as F

    out = [shapes]
    for i in range(n):
        x = F.max_pool2d(shapes, 3, 1, 1) if i % 3 == 0 else (-F.max_pool2d(-shapes, 3, 1, 1) if i % 3 == 1 else shapes)
        out.append(F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1) if i % 2 == 0 else x)
    return torch.cat(out)


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Shapes (N, 1, H, W in [0, 1]) turned up to 11 degrees, scaled by 0.8 to 1.25, shifted up to a
    tenth of their size, with thicker or thinner strokes, dimmer and a little noisy."""
    import torch.nn.functional as F

    n = len(x)
    turn, size = (torch.rand(n, generator=g) - 0.5) * 0.4, 0.8 + 0.45 * torch.rand(n, generator=g)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(turn) / size, -torch.sin(turn) / size
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(turn) / size, torch.cos(turn) / size
    theta[:, :, 2] = (torch.rand(n, 2, generator=g) - 0.5) * 0.35
    x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
    stroke = torch.randint(0, 3, (n, 1, 1, 1), generator=g)
    x = torch.where(stroke == 1, F.max_pool2d(x, 3, 1, 1), torch.where(stroke == 2, -F.max_pool2d(-x, 3, 1, 1), x))
    x = x * (0.6 + 0.4 * torch.rand(n, 1, 1, 1, generator=g))
    return (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)


@dataclass
class SecondJudge:
    """A second reader of digits, independent of `PromptJudge`'s: a small convolutional network fit on
    the real digit shapes under random turns, sizes, shifts, strokes and brightness (no centring, no
    pooled features, no support vectors). Used to check that the prompt judge reads what it should."""

    net: torch.nn.Module
    held_out_accuracy: float

    def digits(self, x: torch.Tensor) -> np.ndarray:
        from .data import check_images

        x = check_images(x, "SecondJudge", channels=(3,)).detach().float().cpu().clamp(-1, 1)
        with torch.no_grad():
            return self.net(x.max(dim=1, keepdim=True).values).argmax(1).numpy()

    def digit_accuracy(self, x: torch.Tensor, prompts) -> float:
        """The share of samples showing the digit their prompt asks for (an open digit always matches)."""
        prompts = [prompts] * len(x) if isinstance(prompts, str) else list(prompts)
        wanted = [parse(p)[0] for p in prompts]
        return float(np.mean([w is None or d == w for d, w in zip(self.digits(x), wanted)]))


@lru_cache(maxsize=1)
def second_judge(steps: int = 1500, seed: int = 0) -> SecondJudge:
    """The second judge, trained for `steps` steps (about a minute and a half on one CPU thread) on three
    quarters of the real digit shapes, held-out accuracy measured on the rest."""
    import torch.nn as nn
    import torch.nn.functional as F

    shapes, labels = digit_shapes()
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(shapes), generator=g)
    train, test = order[: len(order) * 3 // 4], order[len(order) * 3 // 4:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                            nn.Linear(64 * (SIZE // 8) ** 2, 10))
    optimizer = torch.optim.AdamW(net.parameters(), 2e-3)
    for _ in range(steps):
        pick = train[torch.randint(0, len(train), (128,), generator=g)]
        loss = F.cross_entropy(net(_augment(shapes[pick], g) * 2 - 1), labels[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval().requires_grad_(False)
    held = float((net(shapes[test] * 2 - 1).argmax(1) == labels[test]).float().mean())
    return SecondJudge(net, held)


@lru_cache(maxsize=1)
def prompt_judge() -> PromptJudge:
    """The judge, fit on the real digits and their `stroke_variants` (centred, 16x16), a quarter of the
    digits held out. Checked against `second_judge`, a network that reads them another way."""
    from .metrics import fit_judge

    shapes, labels = digit_shapes()
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(shapes), generator=g)
    shapes, labels = shapes[order], labels[order]
    n = len(shapes) * 3 // 4
    judge = fit_judge(_judged(stroke_variants(shapes[:n])), labels[:n].repeat(7), seed=0)
    held = float((judge.predict(_judged(shapes[n:])) == labels[n:].numpy()).mean())
    return PromptJudge(replace(judge, held_out_accuracy=held), dict(PALETTE))


