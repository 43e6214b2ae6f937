"""Tiny random models and fake Hub caches that tests build on the fly."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel


def tiny_unet(size: int = 8, channels: int = 1, classes: int | None = None, seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1,
                       block_out_channels=(8, 16), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       num_class_embeds=None if classes is None else classes + 1).eval()


def tiny_scheduler(schedule: str = "squaredcos_cap_v2") -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule)


def save_pipeline_layout(folder: Path, unet, scheduler) -> Path:
    unet.save_pretrained(folder / "unet")
    scheduler.save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDPMScheduler"]}))
    return folder


def save_flat_layout(folder: Path, unet, scheduler) -> Path:
    """The older single-model layout some Hub repos use: config, weights and scheduler at the top."""
    unet.save_pretrained(folder)
    scheduler.save_pretrained(folder)
    return folder


def fake_hub_snapshot(cache: Path, repo_id: str, revision: str, kind: str = "model", refs: bool = True) -> Path:
    """An empty snapshot folder laid out as huggingface_hub's cache lays it out (with refs/main
    naming it unless `refs` is False)."""
    repo = cache / (f"{kind}s--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True)
    if refs:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
    return snap


def save_tiny_clip(folder):
    """A randomly initialised, tiny transformers CLIP and a byte-level tokenizer with no merges,
    saved in the Hub's layout, for testing the CLIP guide offline."""
    import json
    from pathlib import Path

    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    torch.manual_seed(0)
    small = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1)
    config = CLIPConfig(text_config=dict(vocab_size=len(vocab), max_position_embeddings=32, **small,
                                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"]),
                        vision_config=dict(image_size=32, patch_size=8, **small), projection_dim=8)
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=32).save_pretrained(folder)
    return folder


def save_tiny_stable_diffusion(folder):
    """A randomly initialised, tiny Stable Diffusion pipeline (UNet2DConditionModel, AutoencoderKL,
    CLIP text encoder and tokenizer, DDIM scheduler) saved in the Hub's layout."""
    from pathlib import Path

    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    clip_dir = save_tiny_clip(folder.with_name(folder.name + "-clip"))
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                        num_attention_heads=2, num_hidden_layers=1, max_position_embeddings=32,
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=4, sample_size=16)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), cross_attention_dim=16, attention_head_dim=4,
                                norm_num_groups=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def offline_chromium(width: int = 1280, height: int = 1600):
    """Headless Debian Chromium driven by selenium, with the network cut: every host name but localhost
    fails to resolve and everything else goes to a closed proxy port, so a page shows only what it
    carries or loads from 127.0.0.1. Needs `bash scripts/install_browser.sh` (make test runs it)."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    for tool in ("chromium", "chromedriver"):
        assert shutil.which(tool), f"{tool} is missing: run `bash scripts/install_browser.sh` (make test does)"
    options = Options()
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--window-size={width},{height}", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
                 "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1;localhost"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def typeset(browser, url: str, wait: float = 30.0) -> dict:
    """Open `url` and wait for MathJax to finish: how many formulas it typeset, how many `$` are left in
    the text, and the console's errors."""
    import time

    browser.get_log("browser")
    browser.get(url)
    deadline = time.time() + wait
    while time.time() < deadline and not browser.execute_script(
            "return document.readyState === 'complete' && !!(window.MathJax && MathJax.startup && MathJax.startup.promise)"):
        time.sleep(0.2)
    if browser.execute_script("return !!(window.MathJax && MathJax.startup && MathJax.startup.promise)"):
        browser.execute_async_script("const done = arguments[arguments.length - 1]; MathJax.startup.promise.then(() => done(1));")
    return {"formulas": browser.execute_script("return document.querySelectorAll('mjx-container').length"),
            "dollars": browser.execute_script("return (document.body.innerText.match(/\\$/g) || []).length"),
            "errors": [e["message"] for e in browser.get_log("browser")
                       if e["level"] == "SEVERE" and "favicon.ico" not in e["message"]]}
