"""The interactive risk map: one self-contained HTML page (Leaflet inlined, Natural Earth basemap bundled) where a
reader picks a region, a horizon and a contour level and sees that forecast's region with the observed events.

The page is built from a list of forecasts (see :func:`riskmap_html`); ``pipelines/serve.py`` collects the latest
batch outputs and serves it on 127.0.0.1, or writes it as a static file. All text from data is HTML-escaped before
it enters the page, and the embedded JSON cannot close its ``<script>`` element.
"""

from __future__ import annotations

import html
import json

from stforecast.maps import LEVEL_COLOURS, _leaflet_assets, basemap_geojson

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>stforecast risk map</title><link rel="icon" href="data:,">
<style>__LEAFLET_CSS__</style>
<style>
 html, body {margin:0; height:100%; font:14px system-ui, sans-serif}
 body {display:flex; flex-direction:column}
 #bar {padding:8px 12px; background:#f7f7f7; border-bottom:1px solid #ccc; display:flex; gap:16px; align-items:center;
       flex-wrap:wrap}
 #bar label {font-weight:600} #map {flex:1; min-height:0}
 #info {color:#444} .legend {background:white; padding:6px 8px; border:1px solid #999; border-radius:4px}
</style>
<script>__LEAFLET_JS__</script></head>
<body>
<div id="bar">
 <span><label for="region">Region</label> <select id="region"></select></span>
 <span><label for="horizon">Horizon</label> <select id="horizon"></select></span>
 <span><label for="level">Region holding</label> <select id="level"></select></span>
 <span id="info"></span>
</div>
<div id="map"></div>
<script id="forecast-data" type="application/json">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("forecast-data").textContent);
const COLOURS = __COLOURS__;
const sel = id => document.getElementById(id);
let map = null, frame = null, overlay = null;

function fill(select, values, labels, preferred) {
  const keep = select.value;
  select.innerHTML = "";
  values.forEach((v, i) => { const o = document.createElement("option"); o.value = v;
                             o.textContent = labels ? labels[i] : v; select.appendChild(o); });
  if (values.includes(keep)) select.value = keep;
  else if (preferred !== undefined && values.includes(preferred)) select.value = preferred;
}
function current() {
  return DATA.forecasts.find(f => f.region === sel("region").value && f.horizon === sel("horizon").value);
}
function newMap(kind) {
  if (map) map.remove();
  frame = kind;
  map = L.map("map", kind === "pixel" ? {crs: L.CRS.Simple, minZoom: -5} : {});
  if (kind !== "pixel") {
    map.createPane("basemap").style.zIndex = 250;
    L.geoJSON(DATA.basemap, {pane: "basemap", interactive: false,
      style: {fillColor: "#f2efe9", color: "#9a9a9a", weight: 0.8, fillOpacity: 1}}).addTo(map);
    L.control.scale().addTo(map);
  }
}
function draw() {
  const f = current();
  if (!f) return;
  if (f.frame !== frame) newMap(f.frame);
  if (overlay) overlay.remove();
  overlay = L.layerGroup().addTo(map);
  const level = sel("level").value;
  const region = f.contours[level];
  const colour = COLOURS[level] || "#de2d26";
  const shape = L.geoJSON(region, {style: {fillColor: colour, color: "#67000d", weight: 1, fillOpacity: 0.5,
                                           className: "risk-contour"}}).addTo(overlay);
  const points = L.geoJSON(f.observed, {pointToLayer: (feat, ll) => L.circleMarker(ll,
      {radius: 3, color: "#08519c", weight: 1, fillOpacity: 0.8, className: "observed-event"}),
    onEachFeature: (feat, layer) => {
      const div = document.createElement("div");   // textContent: data never becomes markup
      Object.entries(feat.properties).forEach(([k, v]) => { const p = document.createElement("div");
        p.textContent = k + ": " + v; div.appendChild(p); });
      layer.bindPopup(div);
    }}).addTo(overlay);
  const b = shape.getBounds().extend(points.getBounds());
  if (b.isValid()) map.fitBounds(b.pad(0.05));
  sel("info").textContent = `${f.region}, next ${f.horizon} from ${f.forecast_time}: ` +
    `${f.expected_events.toFixed(1)} events expected; shaded: the region holding ${Math.round(level * 100)} % ` +
    `of the forecast events; dots: the ${f.observed.features.length} most recent observed events`;
  document.body.dataset.shown = `${f.region}|${f.horizon}|${level}`;
}
function regionChanged() {
  const hs = DATA.forecasts.filter(f => f.region === sel("region").value).map(f => f.horizon);
  fill(sel("horizon"), hs);
  levelsFor();
}
function levelsFor() {
  const f = current();
  const levels = Object.keys(f.contours).sort();
  fill(sel("level"), levels, levels.map(l => Math.round(l * 100) + " %"), "0.8");
  draw();
}
fill(sel("region"), [...new Set(DATA.forecasts.map(f => f.region))]);
sel("region").addEventListener("change", regionChanged);
sel("horizon").addEventListener("change", levelsFor);
sel("level").addEventListener("change", draw);
regionChanged();
</script>
</body></html>
"""


def _escape_properties(collection: dict) -> dict:
    for feature in collection.get("features", []):
        feature["properties"] = {html.escape(str(k)): html.escape(str(v))
                                 for k, v in (feature.get("properties") or {}).items()}
    return collection


def riskmap_html(forecasts: list[dict]) -> str:
    """``forecasts``: dicts with ``region``, ``horizon``, ``forecast_time``, ``expected_events``, ``frame``
    ("geographic" or "pixel"), ``contours`` {level string: GeoJSON geometry or FeatureCollection} and ``observed``
    (a GeoJSON FeatureCollection of points). Returns the page."""
    if not forecasts:
        raise ValueError("no forecasts to show: run `stforecast batch` first")
    clean = []
    for f in forecasts:
        clean.append({"region": html.escape(str(f["region"])), "horizon": html.escape(str(f["horizon"])),
                      "forecast_time": html.escape(str(f["forecast_time"])),
                      "expected_events": float(f["expected_events"]), "frame": f.get("frame", "geographic"),
                      "contours": {str(k): v for k, v in f["contours"].items()},
                      "observed": _escape_properties(f["observed"])})
    # the bundled basemap is trusted and already GeoJSON: spliced in (first key, so first match) rather than
    # parsed and dumped again on every request
    data = json.dumps({"basemap": "__BASEMAP__", "forecasts": clean}, separators=(",", ":"))
    data = data.replace('"__BASEMAP__"', basemap_geojson(), 1)
    data = data.replace("</", "<\\/")  # cannot end the <script> element early
    levels = sorted({k for f in clean for k in f["contours"]}, key=float, reverse=True)
    colours = {lv: LEVEL_COLOURS[min(i, len(LEVEL_COLOURS) - 1)] for i, lv in enumerate(levels)}
    js, css = _leaflet_assets()
    page = PAGE.replace("__LEAFLET_CSS__", css).replace("__LEAFLET_JS__", js)
    return page.replace("__COLOURS__", json.dumps(colours)).replace("__DATA__", data)  # data last: never rescanned
