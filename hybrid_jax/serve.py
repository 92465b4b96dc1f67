"""A local web page over an index: search by text or by an example sound, listen to the results.

Run: python -m hybrid_jax.serve --model MODEL_DIR --index INDEX [--port 8000]
then open http://127.0.0.1:8000. The server binds to 127.0.0.1 only and needs no internet: the
page (``hybrid_jax/web/index.html``, its script and style inline) is packaged with the code.

Endpoints: ``GET /`` the page; ``GET /api/info``; ``GET /api/search?q=TEXT&k=10&filter=WORDS``;
``POST /api/search/audio?k=10&filter=WORDS`` with the sound file as the request body (search by
example); ``GET /audio/{row}`` the indexed file itself (with HTTP range requests). The filter keeps
items whose metadata or path contains every word. A running indexer's commits are picked up at
the next query.
"""

import argparse
import importlib.resources
import os
import pathlib
import tempfile
import threading
import time
import urllib.parse

HOST = "127.0.0.1"  # never another interface: the page serves the files of your collection
MAX_UPLOAD_BYTES = 200 << 20


def create_app(model, index):
    """The FastAPI application serving ``index`` (an open ``hybrid_jax.index.Index``) with ``model``."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import FileResponse, HTMLResponse
    from starlette.concurrency import run_in_threadpool

    from hybrid_jax import search
    from hybrid_jax.data.audio_io import AudioError

    page = importlib.resources.files("hybrid_jax").joinpath("web/index.html").read_text(encoding="utf-8")
    root = pathlib.Path(index.header["audio_dir"])
    lock = threading.Lock()  # one model call at a time; the jitted functions are shared
    app = FastAPI(title="hybrid_jax search", docs_url=None, redoc_url=None, openapi_url=None)

    def answer(label: str, k: int, words: str, **query) -> dict:
        started = time.perf_counter()
        k = max(1, min(int(k), 200))
        with lock:
            hits = search.query(model, index, top_k=k, words=words.split() or None, **query)[0]
        return {"query": label, "took_ms": round(1000 * (time.perf_counter() - started), 1), "results": [
            {"rank": h.rank, "score": round(h.score, 4), "path": h.entry.path, "metadata": h.entry.metadata,
             "seconds": round(h.entry.seconds, 2), "audio": f"/audio/{h.entry.row}"} for h in hits]}

    @app.get("/", response_class=HTMLResponse)
    def home() -> str:
        return page

    @app.get("/api/info")
    def info() -> dict:
        return {"items": len(index), "fusion": model.fusion, "audio_dir": str(root),
                "model": str(index.header.get("model")), "training_data": model.card.get("training_data")}

    @app.get("/api/search")
    def search_text(q: str, k: int = 10, filter: str = "") -> dict:  # noqa: A002 (the page's word)
        if not q.strip():
            raise HTTPException(400, "type something to search for")
        return answer(q, k, filter, texts=[q])

    @app.post("/api/search/audio")
    async def search_audio(request: Request, k: int = 10, filter: str = "") -> dict:  # noqa: A002
        body = await request.body()
        if not body:
            raise HTTPException(400, "the upload is empty")
        if len(body) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"the upload is larger than {MAX_UPLOAD_BYTES >> 20} MB")
        name = urllib.parse.unquote(request.headers.get("x-filename", "upload"))
        suffix = pathlib.Path(name).suffix.lower()[:8] or ".wav"
        with tempfile.TemporaryDirectory() as folder:
            path = pathlib.Path(folder) / f"example{suffix}"
            path.write_bytes(body)
            try:  # in a worker thread: the event loop keeps serving audio meanwhile
                return await run_in_threadpool(answer, name, k, filter, audio=[str(path)])
            except AudioError as error:
                raise HTTPException(400, f"{name}: {str(error).split(': ', 2)[-1]}") from None

    @app.get("/audio/{row}")
    def audio(row: int):
        entry = index.describe([row])[0]
        if entry is None:
            raise HTTPException(404, f"no item {row} in the index")
        path = root / entry.path
        if not path.is_file():
            raise HTTPException(404, f"{entry.path} is no longer in {root}")
        return FileResponse(path, filename=path.name, content_disposition_type="inline")

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hybrid_jax.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model directory (default: the one the index was built with)")
    parser.add_argument("--index", required=True, help="index directory (python -m hybrid_jax.search index)")
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1")
    args = parser.parse_args(argv)

    import numpy as np
    import uvicorn

    from hybrid_jax import cli, search
    from hybrid_jax.index import Index
    from hybrid_jax.schema import SAMPLE_RATE

    cli.quiet_terminal()
    index = Index(args.index)
    model = search.open_model(index, args.model)
    model.embed_text(["warm up"])  # compile before the first visitor waits for it
    if model.fusion != "metadata_only":
        model.embed_audio([(np.zeros(model.segment_samples, np.float32), SAMPLE_RATE)])
    app = create_app(model, index)
    print(f"serving {len(index)} items of {args.index} at http://{HOST}:{args.port} (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=HOST, port=args.port, log_level=os.environ.get("HYBRID_JAX_SERVE_LOG", "warning"))


if __name__ == "__main__":
    main()
