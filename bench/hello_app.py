"""The baseline of `make bench`: a hello-world FastAPI app served the way the portal is served.

    python bench/hello_app.py PORT

One uvicorn server, one worker, in this process, with the flags of `webapp.server.serve_portal`
(log level, no access log, no proxy headers, no server header, graceful shutdown, h11 event size,
lifespan off), listening on 127.0.0.1:PORT. `GET /` answers `{"hello": "world"}`. What the portal
adds on top (its own h11 protocol subclass with a request-head deadline, its middleware, its
templates) is the portal's cost, and so is not copied here.
"""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI

app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@app.get("/")
async def hello() -> dict[str, str]:
    return {"hello": "world"}


def main() -> None:
    port = int(sys.argv[1])
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=2,
        h11_max_incomplete_event_size=16 * 1024,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
