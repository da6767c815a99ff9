"""`/`: the IOC page (map, alert list, charts), served with its settings; open, like /docs.

The page holds no data: it asks for an API key (kept in the browser's localStorage) unless
anonymous reads are on, and then calls the API like any client.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from api.errors import ApiError

STATIC = Path(__file__).resolve().parent.parent / "static"
PLACEHOLDER = "/*FLOODWATCH_CONFIG*/{}"

router = APIRouter(include_in_schema=False)


def render_page(config: dict[str, object]) -> str:
    """index.html with the page's settings inlined (escaped so they cannot end the script)."""
    try:
        text = (STATIC / "index.html").read_text(encoding="utf-8")
    except OSError as exc:
        raise ApiError(
            f"the IOC page's files are missing from {STATIC} ({exc.strerror}); install the "
            "package with its api/static data, or run from a checkout"
        ) from exc
    data = orjson.dumps(config).decode().replace("<", "\\u003c").replace(">", "\\u003e")
    return text.replace(PLACEHOLDER, data)


@router.get("/")
async def page(request: Request) -> HTMLResponse:
    html: str = request.app.state.page_html
    return HTMLResponse(html, headers={"Cache-Control": "no-cache"})
