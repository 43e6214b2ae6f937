"""LoRA and ControlNet helpers against peft's layers and diffusers' own ControlNet pipeline, on tiny
random pipelines saved in the real layout; Canny conditions prepared as the canny ControlNet's."""
import json

import numpy as np
import pytest
import torch

from coursekit import adapters
from coursekit import stable_diffusion as sd
from tests.helpers import save_tiny_stable_diffusion


@pytest.fixture()
def pipe(tmp_path):
    return sd.load_pipeline(str(save_tiny_stable_diffusion(tmp_path / "pipe")))


def shapes(n=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = -torch.ones(n, 3, size, size)
    for i in range(n):
        a, b = torch.randint(1, size // 2, (2,), generator=g).tolist()
        x[i, i % 3, a:a + size // 2, b:b + size // 3] = 1
    return x


def test_lora_starts_as_the_unchanged_model_and_trains_only_the_adapter(pipe):
    x = torch.randn(2, 4, 8, 8)
    text = sd.embed(pipe, ["a cat", "a dog"])
    with torch.no_grad():
        before = pipe.unet(x, 500, encoder_hidden_states=text).sample
    total = sum(p.numel() for p in pipe.unet.parameters())
    n = adapters.add_lora(pipe.unet, rank=2)
    assert 0 < n < total / 5 and adapters.trainable_parameters(pipe.unet) == n
    with torch.no_grad():
        torch.testing.assert_close(pipe.unet(x, 500, encoder_hidden_states=text).sample, before)
    frozen = {k: v.clone() for k, v in pipe.unet.state_dict().items() if "lora" not in k}
    adapters.train_unet(pipe, shapes(4), ["a red square"] * 4, steps=3, batch_size=2, lr=1e-2, progress=False)
    after = pipe.unet.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items()), "only the adapter moves"
    with torch.no_grad():
        assert (pipe.unet(x, 500, encoder_hidden_states=text).sample - before).abs().max() > 1e-4


def test_lora_layer_is_w_plus_scaled_b_a(pipe):
    adapters.add_lora(pipe.unet, rank=2, alpha=4)
    layer = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_v
    torch.nn.init.normal_(layer.lora_B["default"].weight)
    h = torch.randn(3, layer.in_features)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    with torch.no_grad():
        torch.testing.assert_close(layer(h), h @ layer.base_layer.weight.T + (4 / 2) * h @ a.T @ b.T)


def test_saved_adapter_loads_into_a_fresh_pipeline_and_scales(pipe, tmp_path):
    import logging

    from safetensors.torch import load_file

    adapters.add_lora(pipe.unet, rank=2)
    for name, p in pipe.unet.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    path = adapters.save_lora(pipe, tmp_path / "lora")
    assert path.name == "pytorch_lora_weights.safetensors" and all(k.startswith("unet.") for k in load_file(path))
    g = lambda: torch.Generator().manual_seed(1)
    want = sd.text_to_image(pipe, "a cat", steps=3, guidance_scale=2.0, generator=g())
    fresh = sd.load_pipeline(str(tmp_path / "pipe"))
    plain = sd.text_to_image(fresh, "a cat", steps=3, guidance_scale=2.0, generator=g())
    with pytest.raises(adapters.AdapterError, match="save_lora"):
        adapters.load_lora(fresh, tmp_path / "nowhere")
    notices = []
    handler = logging.Handler()
    handler.emit = lambda record: notices.append(record.getMessage())
    logging.getLogger("diffusers").addHandler(handler)
    try:
        adapters.load_lora(fresh, tmp_path / "lora", "concept")
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
    assert not any("No LoRA keys" in n for n in notices)
    torch.testing.assert_close(sd.text_to_image(fresh, "a cat", steps=3, guidance_scale=2.0, generator=g()), want,
                               atol=1e-4, rtol=0)
    fresh.set_adapters(["concept"], adapter_weights=[0.0])
    torch.testing.assert_close(sd.text_to_image(fresh, "a cat", steps=3, guidance_scale=2.0, generator=g()), plain,
                               atol=1e-4, rtol=0)


def test_train_unet_refuses_a_frozen_unet_and_wrong_sizes(pipe):
    pipe.unet.requires_grad_(False)
    with pytest.raises(adapters.AdapterError, match="add a LoRA adapter"):
        adapters.train_unet(pipe, shapes(2), "a cat", steps=1, progress=False)
    with pytest.raises(adapters.AdapterError, match="16x16"):
        adapters.train_unet(pipe, shapes(2, size=32), "a cat", steps=1, progress=False)
    with pytest.raises(adapters.AdapterError, match="rank"):
        adapters.add_lora(pipe.unet, rank=0)


def test_canny_conditions_are_what_the_controlnet_pipeline_feeds_its_controlnet(pipe):
    """cv2.Canny(rgb, 100, 200) as three channels in [0, 1]: the annotator of lllyasviel's canny
    ControlNet, and the values StableDiffusionControlNetPipeline gives the ControlNet for that image."""
    import cv2
    from PIL import Image

    from coursekit import data

    x = shapes(3)
    edges = adapters.canny(x)
    rgb = ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, im in enumerate(rgb):
        annotator = cv2.Canny(im, 100, 200)
        assert np.array_equal(edges[i].permute(1, 2, 0).numpy() * 255, np.repeat(annotator[:, :, None], 3, 2))
        control = adapters.controlnet_pipeline(pipe, adapters.controlnet_from_unet(pipe.unet, pipe.vae_scale_factor))
        fed = control.prepare_image(Image.fromarray(np.repeat(annotator[:, :, None], 3, 2)), 16, 16, 1, 1, "cpu",
                                    torch.float32, do_classifier_free_guidance=False)
        torch.testing.assert_close(fed[0], edges[i])
    assert data.to_pil(edges[:1] * 2 - 1)[0].size == (16, 16) and edges.max() == 1 and edges.min() == 0


def test_fresh_controlnet_changes_nothing_and_the_loop_is_diffusers_controlnet_pipeline(pipe):
    net = adapters.controlnet_from_unet(pipe.unet, pipe.vae_scale_factor)
    x, text, cond = torch.randn(2, 4, 8, 8), sd.embed(pipe, ["a", "b"]), adapters.canny(shapes(2))
    with torch.no_grad():
        plain = pipe.unet(x, 400, encoder_hidden_states=text).sample
        torch.testing.assert_close(adapters.controlled_noise(pipe.unet, net, x, 400, text, cond), plain)
    for p in net.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    ours = adapters.controlled_image(pipe, net, ["a red cat", "a cat"], cond, steps=4, guidance_scale=3.0,
                                     generator=torch.Generator().manual_seed(2))
    control = adapters.controlnet_pipeline(pipe, net)
    theirs = control(["a red cat", "a cat"], image=cond, num_inference_steps=4, guidance_scale=3.0,
                     generator=torch.Generator().manual_seed(2), output_type="pt").images * 2 - 1
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    free = sd.text_to_image(pipe, ["a red cat", "a cat"], steps=4, guidance_scale=3.0,
                            generator=torch.Generator().manual_seed(2))
    assert (free - ours).abs().max() > 1e-3


def test_controlnet_training_moves_only_the_controlnet(pipe):
    net = adapters.controlnet_from_unet(pipe.unet, pipe.vae_scale_factor)
    unet_before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    x = shapes(4)
    result = adapters.train_controlnet(pipe, net, x, ["a square"] * 4, adapters.canny(x), steps=3, batch_size=2,
                                       progress=False)
    assert all(torch.equal(pipe.unet.state_dict()[k], v) for k, v in unet_before.items())
    zero = [m for n, m in result.model.named_modules() if "zero_conv" in n or n == "controlnet_mid_block"]
    assert zero and any(float(m.weight.abs().max()) > 0 for m in zero if hasattr(m, "weight"))
    with pytest.raises(adapters.AdapterError, match="conditions must match"):
        adapters.train_controlnet(pipe, net, x, ["a square"] * 4, adapters.canny(x)[:2], steps=1, progress=False)


def test_edge_agreement_is_one_for_the_same_edges_and_low_for_others():
    x = shapes(4)
    edges = adapters.canny(x)
    assert adapters.edge_agreement(x, edges) == 1.0
    assert adapters.edge_agreement(x, adapters.canny(shapes(4, seed=9))) < 0.6
    assert adapters.edge_agreement(-torch.ones(4, 3, 16, 16), edges) == 0.0


def test_the_same_lora_call_gives_the_same_adapter_whatever_ran_before(pipe):
    import copy

    other = copy.deepcopy(pipe.unet)
    adapters.add_lora(pipe.unet, rank=2)
    torch.rand(1000)
    adapters.add_lora(other, rank=2)
    a = {k: v for k, v in pipe.unet.state_dict().items() if "lora" in k}
    b = {k: v for k, v in other.state_dict().items() if "lora" in k}
    assert a and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("loader", ["coursekit", "diffusers"])
def test_an_adapter_with_alpha_twice_its_rank_reloads_at_its_own_scale(pipe, tmp_path, loader):
    """The saved file carries the adapter's config (rank, alpha, targets) in its metadata; without it both
    coursekit and diffusers' `load_lora_weights` would rebuild the adapter at alpha = rank, half its effect."""
    from safetensors import safe_open

    adapters.add_lora(pipe.unet, rank=2, alpha=4)
    for name, p in pipe.unet.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5, generator=torch.Generator().manual_seed(0))
    path = adapters.save_lora(pipe, tmp_path / "lora")
    with safe_open(str(path), "pt") as f:
        saved = json.loads(f.metadata()["lora_adapter_metadata"])
    assert (saved["unet.r"], saved["unet.lora_alpha"]) == (2, 4)
    g = lambda: torch.Generator().manual_seed(1)
    want = sd.text_to_image(pipe, "a cat", steps=2, guidance_scale=2.0, generator=g())
    fresh = sd.load_pipeline(str(tmp_path / "pipe"))
    if loader == "coursekit":
        adapters.load_lora(fresh, tmp_path / "lora")
    else:
        fresh.load_lora_weights(str(tmp_path / "lora"))
    torch.testing.assert_close(sd.text_to_image(fresh, "a cat", steps=2, guidance_scale=2.0, generator=g()), want,
                               atol=1e-4, rtol=0)
    if loader == "diffusers":      # the same weights saved without the config reload at alpha = rank: another model
        type(pipe).save_lora_weights(tmp_path / "bare", unet_lora_layers=adapters.lora_state_dict(pipe.unet),
                                     safe_serialization=True)
        bare = sd.load_pipeline(str(tmp_path / "pipe"))
        bare.load_lora_weights(str(tmp_path / "bare"))
        assert not torch.allclose(sd.text_to_image(bare, "a cat", steps=2, guidance_scale=2.0, generator=g()), want,
                                  atol=1e-3)
