"""Folium maps of forecasts that render with no network access.

A default folium page pulls Leaflet, jQuery, Bootstrap and fonts from CDNs and draws online tiles: offline it is
blank. Here the map is built with ``tiles=None``, Leaflet's JS/CSS are inlined from the ``xstatic-leaflet`` wheel
(its images as data URIs), the scripts the layers used here do not need are dropped, and :func:`save_offline`
refuses to write a page that still references anything external. The base layer is Natural Earth countries
(bundled); online tiles are an opt-in. All text from data (times, categories) is HTML-escaped.

Geographic catalogs are drawn in lon/lat over the basemap; pixel frames (spike recordings) use Leaflet's
``Simple`` CRS with the arena's own coordinates and no basemap.
"""

from __future__ import annotations

import base64
import functools
import html
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

#: fill colours for the contour levels, from the widest region (lightest) to the narrowest (darkest)
LEVEL_COLOURS = ["#fee5d9", "#fcae91", "#fb6a4a", "#de2d26", "#a50f15"]
# what makes a browser fetch: script/img/iframe sources, stylesheet links, CSS url()/@import, tile URL templates
# (a plain <a href> to a web page, like Leaflet's attribution, fetches nothing)
_EXTERNAL = re.compile(r"""<(?:script|img|iframe)\b[^>]*\bsrc\s*=\s*["']?(?:https?:)?//"""
                       r"""|<link\b[^>]*\bhref\s*=\s*["']?(?:https?:)?//"""
                       r"""|url\(\s*["']?(?:https?:)?//|@import\s+["']?(?:https?:)?//"""
                       r"""|["'](?:https?:)?//[^"']*\{z\}""", re.I)


_JQUERY_SHIM = """window.$ = window.$ || function (markup) {
  var t = document.createElement("template"); t.innerHTML = String(markup).trim(); return [t.content.firstChild];
};"""


@functools.lru_cache(maxsize=1)  # read once per process: the risk-map server builds a page per request
def _leaflet_assets() -> tuple[str, str]:
    from xstatic.pkg import leaflet

    base = Path(leaflet.BASE_DIR)
    js = (base / "leaflet.js").read_text(encoding="utf-8")
    css = (base / "leaflet.css").read_text(encoding="utf-8")

    def data_uri(match):
        path = base / match.group(1)
        mime = "image/png" if path.suffix == ".png" else "image/svg+xml"
        return f"url(data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()})"

    return js, re.sub(r"url\((images/[^)]+)\)", data_uri, css)


@functools.lru_cache(maxsize=1)
def basemap_geojson() -> str:
    """Natural Earth 110 m countries (bundled), as GeoJSON text."""
    return resources.files("stforecast.assets").joinpath("ne_110m_countries.geojson").read_text()


def new_map(frame: str = "geographic", center=(0.0, 0.0), zoom: int = 5, bounds=None, online_tiles: bool = False):
    """A folium map: ``frame`` "geographic" (lon/lat, Natural Earth basemap in a pane below the overlays) or
    "pixel" (Leaflet's Simple CRS). ``bounds`` ((south, west), (north, east)) fits the view."""
    import folium

    if frame == "pixel":
        m = folium.Map(location=list(center), zoom_start=0, tiles=None, crs="Simple", control_scale=False,
                       min_zoom=-5)
    else:
        m = folium.Map(location=list(center), zoom_start=zoom, tiles=None, control_scale=True)
        folium.map.CustomPane("basemap", z_index=250).add_to(m)
        countries = basemap_geojson()
        folium.GeoJson(countries, name="countries (Natural Earth, offline)", pane="basemap", control=True,
                       style_function=lambda _: {"fillColor": "#f2efe9", "color": "#9a9a9a", "weight": 0.8,
                                                 "fillOpacity": 1.0},
                       tooltip=folium.GeoJsonTooltip(["name"], labels=False)).add_to(m)
        if online_tiles:
            folium.TileLayer("OpenStreetMap", name="OpenStreetMap (online)", show=False).add_to(m)
    if bounds is not None:
        m.fit_bounds(bounds)
    return m


def add_contours(m, contours, name: str = "forecast", unit_note: str = "") -> None:
    """Filled highest-density regions (a GeoDataFrame from :func:`stforecast.density.mass_contours`, widest
    first) as one layer, with a legend."""
    import folium

    group = folium.FeatureGroup(name=f"{name}: regions holding 50/80/95 % of the forecast", show=True)
    levels = list(contours["level"])
    colours = {lv: LEVEL_COLOURS[min(i, len(LEVEL_COLOURS) - 1)] for i, lv in enumerate(sorted(levels, reverse=True))}
    for _, row in contours.iterrows():
        if row.geometry.is_empty:
            continue
        colour = colours[row["level"]]
        folium.GeoJson(row.geometry.__geo_interface__, name=f"{row['level']:.0%}",
                       style_function=lambda _, c=colour: {"fillColor": c, "color": "#67000d", "weight": 0.7,
                                                           "fillOpacity": 0.55},
                       tooltip=html.escape(f"{row['level']:.0%} of the forecast mass")).add_to(group)
    group.add_to(m)
    items = "".join(f'<div><span style="display:inline-block;width:14px;height:14px;background:{colours[lv]};'
                    f'border:1px solid #67000d;margin-right:6px;vertical-align:middle"></span>'
                    f"{html.escape(f'{lv:.0%}')} region</div>" for lv in sorted(levels, reverse=True))
    stacked = getattr(m, "_stforecast_legends", 0)  # one legend per contour layer, stacked under the zoom buttons
    m._stforecast_legends = stacked + 1
    legend = (f'<div style="position:fixed;top:{90 + 95 * stacked}px;left:12px;z-index:9999;background:white;'
              f'padding:8px 10px;'
              f'border:1px solid #999;border-radius:4px;font:12px sans-serif">'
              f"<b>{html.escape(name)}</b><br>{items}{html.escape(unit_note)}</div>")
    m.get_root().html.add_child(folium.Element(legend))


def add_outline(m, geometry, name: str) -> None:
    """An unfilled outline (e.g. the area a catalog covers) drawn above the basemap, below the forecast."""
    import folium

    folium.GeoJson(geometry.__geo_interface__, name=name,
                   style_function=lambda _: {"fill": False, "color": "#525252", "weight": 1.5, "dashArray": "4 3"}
                   ).add_to(m)


def footprint(lon: np.ndarray, lat: np.ndarray, ratio: float = 0.2):
    """The outline of where a catalog's events lie: a concave hull of the points (a city's shape for crime)."""
    import shapely

    return shapely.concave_hull(shapely.MultiPoint(np.column_stack([lon, lat])), ratio=ratio)


def add_events(m, events: pd.DataFrame, name: str, colour: str = "#08519c", radius: float = 3,
               lat: str = "lat", lon: str = "lon", label_cols=("time", "magnitude", "category", "unit"),
               show: bool = True, limit: int = 2000) -> None:
    """Events as circle markers with escaped popups of ``label_cols`` (those present)."""
    import folium

    group = folium.FeatureGroup(name=name, show=show)
    ev = events.tail(limit)
    cols = [c for c in label_cols if c in ev.columns]
    for _, row in ev.iterrows():
        text = "<br>".join(f"{html.escape(c)}: {html.escape(str(row[c]))}" for c in cols)
        folium.CircleMarker([float(row[lat]), float(row[lon])], radius=radius, color=colour, weight=1,
                            fill=True, fill_opacity=0.8, popup=folium.Popup(text, max_width=300) if text else None
                            ).add_to(group)
    group.add_to(m)


def offline_html(m) -> str:
    """The map as one self-contained HTML page: Leaflet inlined, CDN scripts and styles dropped."""
    page = m.get_root().render()
    js, css = _leaflet_assets()

    def replace_script(match):
        src = match.group(1)
        if re.search(r"/leaflet(\.min)?\.js$", src):
            return f"<script>{js}</script>"
        if "jquery" in src.lower():  # folium only calls $(`<div …>`)[0] to build popups: a 3-line stand-in
            return f"<script>{_JQUERY_SHIM}</script>"
        return ""  # Bootstrap, Awesome Markers: not used by GeoJson, CircleMarker or LayerControl

    page = re.sub(r'<script src="([^"]+)"></script>', replace_script, page)

    def replace_link(match):
        href = match.group(1)
        if re.search(r"/leaflet(\.min)?\.css$", href):
            return f"<style>{css}</style>"
        return ""

    page = re.sub(r'<link rel="stylesheet" href="([^"]+)"\s*/?>', replace_link, page)
    return page


def external_references(page: str) -> list[str]:
    """What in an HTML page would make a browser fetch from the network."""
    return _EXTERNAL.findall(page)


def save_offline(m, path, allow_online_tiles: bool = False) -> Path:
    """Write :func:`offline_html` atomically; refuses a page that would still fetch anything from the network
    (except, when asked for, an optional online tile layer)."""
    page = offline_html(m)
    found = [f for f in external_references(page) if not (allow_online_tiles and "{z}" in f)]
    if found:
        raise RuntimeError(f"the map still references external resources: {found[:3]}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


def view_bounds(lat: np.ndarray, lon: np.ndarray, pad: float = 0.05):
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    dlat, dlon = (lat.max() - lat.min()) * pad + 1e-3, (lon.max() - lon.min()) * pad + 1e-3
    return [[float(lat.min() - dlat), float(lon.min() - dlon)], [float(lat.max() + dlat), float(lon.max() + dlon)]]
