"""Folium maps of forecasts that render with no network access.

A default folium page pulls Leaflet, jQuery, Bootstrap and fonts from CDNs and draws online tiles: offline it is
blank. Here the map is built with ``tiles=None``, Leaflet's JS/CSS are inlined from the ``xstatic-leaflet`` wheel
(its images as data URIs), the scripts the layers used here do not need are dropped, and :func:`save_offline`
refuses to write a page that still references anything external. The base layer is Natural Earth countries
(bundled); online tiles are an opt-in.

All text that reaches the page (popups, tooltips, legends, layer names) goes through :func:`page_text`: folium
puts popup and tooltip HTML inside JavaScript template literals, so HTML escaping alone would leave ``${...}`` and
backticks live, and legends are added with :func:`raw_html` rather than ``folium.Element(text)``, which branca
would treat as a Jinja template (``{{ ... }}`` in data would be evaluated when the page is rendered).

Forecast regions are outlines with light fills (the basemap's borders and coastlines stay visible through them),
in one palette per layer: purples for the next event, oranges for the events in the horizon.

Geographic catalogs are drawn in lon/lat over the basemap; pixel frames (spike recordings) use Leaflet's
``Simple`` CRS with the arena's own coordinates and no basemap.
"""

from __future__ import annotations

import base64
import datetime
import functools
import html
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

#: colours of the contour levels, from the widest region (lightest) to the narrowest (darkest): outlines in the
#: colour, fills in the colour at :data:`FILL_OPACITY`. Purples (ColorBrewer) for where the next event happens,
#: oranges for where the events of the whole horizon happen, so the two layers never look alike.
NEXT_EVENT_COLOURS = ["#9e9ac8", "#807dba", "#6a51a3", "#54278f", "#3f007d"]
HORIZON_COLOURS = ["#fdae6b", "#fd8d3c", "#f16913", "#d94801", "#8c2d04"]
LEVEL_COLOURS = HORIZON_COLOURS  # the risk map shows horizon regions
#: per level: three nested levels stack to about 0.4 at the centre, and the basemap shows through everywhere
FILL_OPACITY = 0.15
SEA_COLOUR = "#dce9f2"
LAND_STYLE = {"fillColor": "#f4f1ea", "color": "#5f5f5f", "weight": 1.0, "fillOpacity": 1.0}

_PAGE_ESCAPES = {ord("`"): "&#96;", ord("$"): "&#36;", ord("{"): "&#123;", ord("}"): "&#125;", ord("\\"): "&#92;",
                 0x2028: "&#8232;", 0x2029: "&#8233;"}


def page_text(value) -> str:
    """``value`` as text that is safe wherever folium puts it: HTML-escaped (``& < > " '``), and `` ` `` ``$``
    ``{`` ``}`` ``\\`` U+2028 U+2029 as numeric character references, so it cannot end or interpolate a
    JavaScript template literal (popups, tooltips), start a Jinja expression, or break a JS string. The browser
    shows the original characters."""
    return html.escape(str(value), quote=True).translate(_PAGE_ESCAPES)


def raw_html(markup: str):
    """An element that puts ``markup`` (already escaped with :func:`page_text`) into the page as it is. Unlike
    ``folium.Element(markup)``, it is not a Jinja template, so ``{{ ... }}`` in it is never evaluated."""
    from branca.element import Element

    class _RawHtml(Element):
        def __init__(self, text: str):
            super().__init__()
            self._name = "RawHtml"
            self._text = text

        def render(self, **kwargs):
            return self._text

    return _RawHtml(markup)


def format_time(value, tick_s: float | None = None) -> str:
    """An event time as people read it. The rule: floor the time to the catalog's clock tick ``tick_s`` (ingest
    spreads tied events forward inside one tick, so flooring gives back the recorded time, and float round-off
    such as ``17:10:14.848000050`` disappears), then show

    * timestamps in UTC to whole seconds (``2016-04-14 17:10:14 UTC``), or to whole minutes
      (``2019-03-02 21:40 UTC``) when the tick is a whole number of minutes; sub-second ticks are still shown to
      the second (a popup is no place for milliseconds; the data files keep full precision);
    * lab-clock times (numbers of seconds) with as many decimals as the tick needs (``4422.53643 s`` for a
      30 kHz clock; 3 decimals when the tick is unknown).

    Anything else (a missing value, a string) is returned as ``str(value)``."""
    tick = float(tick_s) if tick_s and tick_s > 0 else None
    if isinstance(value, (pd.Timestamp, np.datetime64, datetime.datetime)):
        ts = pd.Timestamp(value)
        if pd.isna(ts):
            return str(value)
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        minutes = tick is not None and tick >= 60 and abs(tick / 60 - round(tick / 60)) < 1e-9
        tick_ns = max(1, int(round((tick or 1e-3) * 1e9)))
        # snap to the tick (a thousandth of a tick of slack absorbs float round-off below a tick boundary), then
        # to the second or minute shown
        recorded = (ts.value + tick_ns // 1000) // tick_ns * tick_ns
        shown = pd.Timestamp(recorded - recorded % (60_000_000_000 if minutes else 1_000_000_000), tz="UTC")
        return f"{shown:%Y-%m-%d %H:%M} UTC" if minutes else f"{shown:%Y-%m-%d %H:%M:%S} UTC"
    if isinstance(value, (float, int, np.floating, np.integer)) and not isinstance(value, bool):
        t = float(value)
        if not np.isfinite(t):
            return str(value)
        if tick is None:
            return f"{t:.3f} s"
        decimals = int(min(9, max(0, np.ceil(-np.log10(tick) - 1e-9))))
        return f"{np.floor(t / tick + 1e-3) * tick:.{decimals}f} s"
    return str(value)
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
        # sea behind the land; the forecast fills above are light enough to show borders and coasts through
        m.get_root().header.add_child(raw_html(f"<style>html .leaflet-container {{background: {SEA_COLOUR}}}</style>"))
        countries = basemap_geojson()
        # the bundled names are trusted (GeoJsonTooltip writes feature properties as HTML)
        folium.GeoJson(countries, name=page_text("countries (Natural Earth, offline)"), pane="basemap",
                       control=True, style_function=lambda _: dict(LAND_STYLE),
                       tooltip=folium.GeoJsonTooltip(["name"], labels=False)).add_to(m)
        if online_tiles:
            folium.TileLayer("OpenStreetMap", name="OpenStreetMap (online)", show=False).add_to(m)
    if bounds is not None:
        m.fit_bounds(bounds)
    return m


def level_colours(levels, palette=None) -> dict:
    """``{level: colour}``: the widest region (highest level) gets the palette's lightest colour."""
    palette = list(palette or LEVEL_COLOURS)
    return {lv: palette[min(i, len(palette) - 1)] for i, lv in enumerate(sorted(levels, reverse=True))}


def add_contours(m, contours, name: str = "forecast", unit_note: str = "", palette=None) -> None:
    """Highest-density regions (a GeoDataFrame from :func:`stforecast.density.mass_contours`, widest first) as
    one layer of outlines with light fills in ``palette`` (default :data:`LEVEL_COLOURS`; the report uses
    :data:`NEXT_EVENT_COLOURS` and :data:`HORIZON_COLOURS`), with a legend in the same colours."""
    import folium

    group = folium.FeatureGroup(name=page_text(f"{name}: regions holding 50/80/95 % of the forecast"), show=True)
    levels = list(contours["level"])
    colours = level_colours(levels, palette)
    for _, row in contours.iterrows():
        if row.geometry.is_empty:
            continue
        colour = colours[row["level"]]
        folium.GeoJson(row.geometry.__geo_interface__, name=page_text(f"{row['level']:.0%}"),
                       style_function=lambda _, c=colour: {"fillColor": c, "color": c, "weight": 2, "opacity": 0.9,
                                                           "fillOpacity": FILL_OPACITY},
                       tooltip=page_text(f"{name}: {row['level']:.0%} of the forecast mass")).add_to(group)
    group.add_to(m)
    items = "".join(f'<div><span style="display:inline-block;width:14px;height:12px;background:{colours[lv]}40;'
                    f'border:2px solid {colours[lv]};margin-right:6px;vertical-align:middle"></span>'
                    f"{page_text(f'{lv:.0%}')} region</div>" for lv in sorted(levels, reverse=True))
    stacked = getattr(m, "_stforecast_legends", 0)  # one legend per contour layer, stacked under the zoom buttons
    m._stforecast_legends = stacked + 1
    note = f"<br>{page_text(unit_note)}" if unit_note else ""
    legend = (f'<div class="stforecast-legend" style="position:fixed;top:{90 + 95 * stacked}px;left:12px;'
              f'z-index:9999;background:white;padding:8px 10px;'
              f'border:1px solid #999;border-radius:4px;font:12px sans-serif">'
              f"<b>{page_text(name)}</b><br>{items}{note}</div>")
    m.get_root().html.add_child(raw_html(legend))  # not folium.Element: that would run the text through Jinja


def add_outline(m, geometry, name: str) -> None:
    """An unfilled outline (e.g. the area a catalog covers) drawn above the basemap, below the forecast."""
    import folium

    folium.GeoJson(geometry.__geo_interface__, name=page_text(name),
                   style_function=lambda _: {"fill": False, "color": "#525252", "weight": 1.5, "dashArray": "4 3"}
                   ).add_to(m)


def footprint(lon: np.ndarray, lat: np.ndarray, ratio: float = 0.2):
    """The outline of where a catalog's events lie: a concave hull of the points (a city's shape for crime)."""
    import shapely

    return shapely.concave_hull(shapely.MultiPoint(np.column_stack([lon, lat])), ratio=ratio)


def label_value(column: str, value, tick_s: float | None = None) -> str:
    """The text shown for one event property (unescaped): times via :func:`format_time`, the rest as str."""
    return format_time(value, tick_s) if column == "time" else str(value)


def add_events(m, events: pd.DataFrame, name: str, colour: str = "#08519c", radius: float = 3,
               lat: str = "lat", lon: str = "lon", label_cols=("time", "magnitude", "category", "unit"),
               show: bool = True, limit: int = 2000, tick_s: float | None = None) -> None:
    """Events as circle markers with popups of ``label_cols`` (those present), escaped with :func:`page_text`;
    ``time`` is shown with :func:`format_time` at the catalog's clock tick ``tick_s``."""
    import folium

    group = folium.FeatureGroup(name=page_text(name), show=show)
    ev = events.tail(limit)
    cols = [c for c in label_cols if c in ev.columns]
    for _, row in ev.iterrows():
        text = "<br>".join(f"{page_text(c)}: {page_text(label_value(c, row[c], tick_s))}" for c in cols)
        folium.CircleMarker([float(row[lat]), float(row[lon])], radius=radius, color=colour, weight=1,
                            fill=True, fill_opacity=0.8, class_name="stforecast-event",
                            popup=folium.Popup(text, max_width=300) if text else None).add_to(group)
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
    from stforecast.io.atomic import atomic_write_text

    return atomic_write_text(path, page)


def view_bounds(lat: np.ndarray, lon: np.ndarray, pad: float = 0.05):
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    dlat, dlon = (lat.max() - lat.min()) * pad + 1e-3, (lon.max() - lon.min()) * pad + 1e-3
    return [[float(lat.min() - dlat), float(lon.min() - dlon)], [float(lat.max() + dlat), float(lon.max() + dlon)]]
