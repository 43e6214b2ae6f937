"""A Gradio app for colour guidance: pick a colour, a guidance scale and a seed, and see samples
of a model steered toward that colour by `coursekit.guidance.colour_guided_grid`.

`colour_demo(unet, scheduler)` builds the app; its prediction function is `app.fn`, callable
without a server; `launch_demo(app)` serves it on this machine only unless `share=True`.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

from .guidance import SamplerError, colour_guided_grid


@contextmanager
def _no_analytics():
    """Gradio reads GRADIO_ANALYTICS_ENABLED when it is imported and when an app is built: off
    while we do both (the course runs offline), and the environment as it was afterwards."""
    before = os.environ.get("GRADIO_ANALYTICS_ENABLED")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("GRADIO_ANALYTICS_ENABLED", None)
        else:
            os.environ["GRADIO_ANALYTICS_ENABLED"] = before


def colour_demo(unet, scheduler, *, steps: int = 20, n: int = 8, max_scale: float = 100.0):
    """A Gradio app for colour-guided sampling: colour picker, guidance scale, seed -> samples."""
    with _no_analytics():
        try:
            import gradio as gr
        except ImportError:
            raise ImportError("the demo needs Gradio: pip install 'coursekit[demo]' (or pip install gradio)") from None
        if unet.config.in_channels != 3:
            raise SamplerError("the colour demo needs an RGB model (3 channels)")

        def predict(colour, scale, seed):
            return colour_guided_grid(unet, scheduler, colour, scale, seed=seed, n=n, steps=steps)

        return gr.Interface(
            fn=predict,
            inputs=[gr.ColorPicker(value="#2060ff", label="target colour"),
                    gr.Slider(0, max_scale, value=max_scale / 4, label="guidance scale"),
                    gr.Number(value=0, precision=0, label="seed")],
            outputs=gr.Image(type="pil", label="swatch and samples"),
            title="Colour guidance",
            description="Each sampling step nudges the image toward the colour (coursekit.guidance.guided_sample).",
            flagging_mode="never",
            analytics_enabled=False,
        )


def launch_demo(app, share: bool = False, **kwargs):
    """Serve a demo on 127.0.0.1; a public share link only when `share=True`."""
    with _no_analytics():
        return app.launch(server_name="127.0.0.1", share=share, **kwargs)
