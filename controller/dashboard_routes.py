"""The dashboard on the admin listener: the page (``GET /`` and ``/dashboard``), its script
and style, and its data (``GET /v1/dashboard``, controller/dashboard_view.py).

The page is three static files in ``dashboard_page/``: no build step, no internet, no
third-party code (its charts are a few lines of SVG). It reads ``/v1/dashboard`` every
second and, for its two controls (the passthrough switch, the profile selector), sends
``POST /v1/policy`` after a confirmation, as JSON from its own origin, with the admin
token when the user gives one: admin_guard.py checks those as for any caller, so the page
has no power a script of the same user does not.

Every answer carries a Content-Security-Policy that allows only this origin's script,
style and ``fetch`` (no inline script, no framing: ``frame-ancestors 'none'`` and
``X-Frame-Options: DENY``, so another site cannot put the page in a frame and steer a
click onto its switch), ``X-Content-Type-Options: nosniff`` and ``Cache-Control:
no-store``.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from inferos.controller.controller import Controller
from inferos.controller.dashboard_view import dashboard

__all__ = ["DASHBOARD_PATHS", "add_dashboard_routes"]

PAGE_DIR = Path(__file__).resolve().parent / "dashboard_page"
DASHBOARD_PATHS = ("/", "/dashboard")
FILES = {"/dashboard.js": ("dashboard.js", "text/javascript"),
         "/dashboard.css": ("dashboard.css", "text/css")}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
CONTROLLER = web.AppKey("dashboard_controller", Controller)


def _file(name: str, content_type: str) -> web.Response:
    return web.Response(body=(PAGE_DIR / name).read_bytes(), content_type=content_type,
                        charset="utf-8", headers=SECURITY_HEADERS)


async def _page(request: web.Request) -> web.Response:
    return _file("index.html", "text/html")


async def _asset(request: web.Request) -> web.Response:
    name, content_type = FILES[request.path]
    return _file(name, content_type)


async def _data(request: web.Request) -> web.Response:
    return web.json_response(dashboard(request.app[CONTROLLER]), headers=SECURITY_HEADERS)


def add_dashboard_routes(app: web.Application, controller: Controller) -> None:
    app[CONTROLLER] = controller
    for path in DASHBOARD_PATHS:
        app.router.add_get(path, _page)
    for path in FILES:
        app.router.add_get(path, _asset)
    app.router.add_get("/v1/dashboard", _data)
