"""`maskrcnn serve`: the model behind HTTP (FastAPI + uvicorn, the optional extra "serve").

app.py (the FastAPI app and its endpoints), batcher.py (the dynamic batcher), upload.py (limits
and decoding of uploads), cli.py (the command), static/ (the web page).
"""
from .app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
