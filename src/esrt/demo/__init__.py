"""`esrt demo`: a local web page that upscales one image at a time with `esrt.upscale` (Flask, no CDN).

jobs: the bounded queue and its worker; guard: which requests are answered; app: the page and its API;
server: model loading and serving. Uploads are checked (size, pixels, image or not) before they are queued.
"""

from esrt.demo.app import STATIC, create_app
from esrt.demo.jobs import DemoConfig, DemoError, Job, JobRunner
from esrt.demo.server import load_models_by_scale, main, serve

__all__ = [
    "STATIC",
    "DemoConfig",
    "DemoError",
    "Job",
    "JobRunner",
    "create_app",
    "load_models_by_scale",
    "main",
    "serve",
]
