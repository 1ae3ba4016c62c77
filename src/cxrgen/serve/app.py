"""The Gradio page of ``cxrgen serve``: report box, examples, advanced settings, gallery, downloads.

Imported only by ``cxrgen serve`` (Gradio is the optional ``demo`` extra). Gradio's telemetry and
version check are switched off before Gradio is imported; nothing leaves the machine.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Set before Gradio is imported: no analytics, no version check, no telemetry of the hub client.
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_SSR_MODE": "False",
               "DO_NOT_TRACK": "1"}
os.environ.update(OFFLINE_ENV)

import gradio as gr  # noqa: E402

from cxrgen.config import SamplingConfig  # noqa: E402
from cxrgen.config.sampling import SAMPLER_NAMES  # noqa: E402
from cxrgen.errors import CxrgenError  # noqa: E402
from cxrgen.serve.core import (  # noqa: E402
    EXAMPLES,
    GALLERY_LABEL,
    DemoLimits,
    ModelLoader,
    bound_report,
    labeler_markdown,
    page_defaults,
    request_settings,
    status_markdown,
)

log = logging.getLogger(__name__)

#: Request folders older than this are deleted (Gradio keeps its own copy only as long as its cache).
KEEP_FILES_S = 3600
LABELER_PLACEHOLDER = "The labeler's reading of the report appears here."
INTRO = ("# cxrgen: chest X-rays from report text\n"
         "Type a radiology report (or pick an example) and press **Generate**. Every image here is "
         "**synthetic**: made by a latent diffusion model, not taken of a patient; the PNG and DICOM "
         "downloads record this in their metadata. Not for diagnosis.")


@dataclass
class Server:
    """A running demo: the Gradio app, its local URL, the model loader and the folder of generated files."""

    app: Any
    url: str
    loader: ModelLoader
    files_dir: Path

    def close(self) -> None:
        """Stop the server and delete the generated files."""
        self.app.close()
        shutil.rmtree(self.files_dir, ignore_errors=True)


def _prune(root: Path, max_age_s: float = KEEP_FILES_S) -> None:
    """Delete request folders older than ``max_age_s``."""
    now = time.time()
    for folder in root.iterdir():
        if folder.is_dir() and now - folder.stat().st_mtime > max_age_s:
            shutil.rmtree(folder, ignore_errors=True)


def make_handler(loader: ModelLoader, limits: DemoLimits, files_dir: Path):
    """The Generate button's function: (report, settings...) -> gallery, files, labeler panel, status."""

    def generate(report: str, sampler: str, steps: float, guidance: float, seed: float, n_images: float):
        try:
            prompt, warning = bound_report(report, limits.max_report_chars)
            model = loader.get()  # waits while the model is still loading
            settings = request_settings(model.defaults, limits, sampler, steps, guidance, seed, n_images)
            panel = labeler_markdown(prompt)
            _prune(files_dir)
            from cxrgen.serve.model import generate_files  # loaded by now, with the model

            result = generate_files(model, prompt, settings, tempfile.mkdtemp(prefix="req-", dir=files_dir))
        except CxrgenError as exc:  # a bad request: say what to do, keep the page as it is
            return None, None, LABELER_PLACEHOLDER, f"⚠️ {exc}"
        except Exception as exc:  # noqa: BLE001 - the page shows one line, the log keeps the traceback
            log.exception("demo generation failed")
            return None, None, LABELER_PLACEHOLDER, f"⚠️ Generation failed ({type(exc).__name__}: {exc}). Try again."
        result.warning = warning
        gallery = [(str(p), c) for p, c in zip(result.pngs, result.captions(), strict=True)]
        files = [str(p) for p in result.pngs + result.dicoms]
        return gallery, files, panel, status_markdown(result, settings)

    return generate


def build_app(loader: ModelLoader, defaults: SamplingConfig, limits: DemoLimits, files_dir: Path) -> gr.Blocks:
    """The page: report box and examples, advanced settings, gallery, labeler panel, status, downloads."""
    with gr.Blocks(title="cxrgen demo", analytics_enabled=False, delete_cache=(KEEP_FILES_S, KEEP_FILES_S)) as app:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1):
                report = gr.Textbox(label="Report", lines=5, elem_id="report",
                                    placeholder="e.g. PA chest radiograph. Large right pleural effusion.",
                                    info=f"Up to {limits.max_report_chars:,} characters; longer reports are cut.")
                gr.Examples([[text] for _, text in EXAMPLES], inputs=[report], example_labels=[k for k, _ in EXAMPLES],
                            label="Example reports")
                with gr.Accordion("Advanced", open=False):
                    sampler = gr.Dropdown(list(SAMPLER_NAMES), value=defaults.sampler, label="Sampler",
                                          elem_id="sampler")
                    steps = gr.Slider(1, limits.max_steps, value=min(defaults.steps, limits.max_steps), step=1,
                                      label="Steps", elem_id="steps")
                    guidance = gr.Slider(0, limits.max_guidance, value=defaults.guidance_scale, step=0.5,
                                         label="Guidance scale (1 = none)", elem_id="guidance")
                    seed = gr.Number(value=defaults.seed, precision=0, label="Seed (image k gets seed + k)",
                                     elem_id="seed")
                    n_images = gr.Slider(1, limits.max_images, value=1, step=1, label="Number of images",
                                         elem_id="n_images")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                status = gr.Markdown("", elem_id="status")
                with gr.Row():
                    gallery = gr.Gallery(label=GALLERY_LABEL, columns=2, height=340, object_fit="contain",
                                         preview=False, interactive=False, elem_id="gallery", scale=3)
                    with gr.Column(scale=2):
                        labeler = gr.Markdown(LABELER_PLACEHOLDER, elem_id="labeler")
                files = gr.File(label="Downloads: PNG and DICOM Secondary Capture (marked synthetic)",
                                file_count="multiple", interactive=False, elem_id="downloads")
        button.click(make_handler(loader, limits, files_dir), [report, sampler, steps, guidance, seed, n_images],
                     [gallery, files, labeler, status], concurrency_id="generate")
    return app.queue(default_concurrency_limit=limits.concurrency_limit, max_size=limits.max_queue)


def start_server(model: str | None = None, host: str = "127.0.0.1", port: int = 7860,
                 limits: DemoLimits | None = None, device: str = "cpu") -> Server:
    """Serve the page in a background thread while the model loads in another; ``Server.close()`` stops it."""
    limits = limits or DemoLimits()
    loader = ModelLoader(model, device, start=False)  # after the page is up: both need the CPU
    files_dir = Path(tempfile.mkdtemp(prefix="cxrgen-demo-"))
    app = build_app(loader, page_defaults(model), limits, files_dir)
    try:
        app.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True, share=False,
                   inbrowser=False, ssr_mode=False, mcp_server=False, show_error=False, allowed_paths=[str(files_dir)],
                   theme=gr.themes.Default())
    except OSError as exc:  # port taken, host not bindable
        shutil.rmtree(files_dir, ignore_errors=True)
        raise CxrgenError(f"cannot serve on {host}:{port} ({exc}): give another --port or --host") from exc
    loader.start()
    return Server(app=app, url=app.local_url, loader=loader, files_dir=files_dir)
