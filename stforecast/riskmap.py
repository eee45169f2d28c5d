"""The interactive risk map: one self-contained HTML page (Leaflet inlined, Natural Earth basemap bundled) where a
reader picks a region, a horizon, a model and a contour level and sees that forecast's region with the observed
events; "Compare with" overlays another model's region for the same region, horizon and level as a dashed outline.

The page is built from a list of forecasts (see :func:`riskmap_html`); ``pipelines/serve.py`` collects the latest
batch outputs and serves it on 127.0.0.1, or writes it as a static file.

Text from data is never markup here: it travels as JSON in a ``<script type="application/json">`` element (with
``<``, ``>``, ``&``, U+2028 and U+2029 written as ``\\u`` escapes, so it cannot close the element or be read as
anything but string data), and the page's script only ever puts it into the document with ``textContent``,
``option.value`` or ``dataset`` - never ``innerHTML`` or a template that is parsed as HTML. So it is not
HTML-escaped either (that would show ``&amp;`` to the reader). Contour regions are outlines with a light fill in
the horizon palette (:data:`stforecast.maps.HORIZON_COLOURS`) over the Natural Earth basemap.
"""

from __future__ import annotations

import json

from stforecast.maps import FILL_OPACITY, LAND_STYLE, LEVEL_COLOURS, SEA_COLOUR, _leaflet_assets, basemap_geojson

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
 .legend .swatch {display:inline-block; width:14px; height:12px; margin-right:6px; vertical-align:middle}
 .legend .dash {display:inline-block; width:14px; height:0; margin-right:6px; vertical-align:middle;
                border-top:2px dashed #252525}
 .legend .dot {display:inline-block; width:8px; height:8px; border-radius:50%; margin:0 9px 0 3px;
               background:#08519c; vertical-align:middle}
 #map.geographic {background:__SEA__}
</style>
<script>__LEAFLET_JS__</script></head>
<body>
<div id="bar">
 <span><label for="region">Region</label> <select id="region"></select></span>
 <span><label for="horizon">Horizon</label> <select id="horizon"></select></span>
 <span><label for="model">Model</label> <select id="model"></select></span>
 <span><label for="level">Region holding</label> <select id="level"></select></span>
 <span><label for="compare">Compare with</label> <select id="compare"></select></span>
 <span id="info"></span>
</div>
<div id="map"></div>
<script id="forecast-data" type="application/json">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("forecast-data").textContent);
const COLOURS = __COLOURS__, FILL_OPACITY = __FILL_OPACITY__, LAND = __LAND__;
const sel = id => document.getElementById(id);
let map = null, frame = null, overlay = null, legend = null;

function fill(select, values, labels, preferred) {
  const keep = select.value;
  select.innerHTML = "";
  values.forEach((v, i) => { const o = document.createElement("option"); o.value = v;
                             o.textContent = labels ? labels[i] : v; select.appendChild(o); });
  if (values.includes(keep)) select.value = keep;
  else if (preferred !== undefined && values.includes(preferred)) select.value = preferred;
}
function pick(model) {
  return DATA.forecasts.find(f => f.region === sel("region").value && f.horizon === sel("horizon").value &&
                                  f.model === model);
}
function current() { return pick(sel("model").value); }
function newMap(kind) {
  if (map) map.remove();
  frame = kind;
  map = L.map("map", kind === "pixel" ? {crs: L.CRS.Simple, minZoom: -5} : {});
  sel("map").classList.toggle("geographic", kind !== "pixel");
  if (kind !== "pixel") {
    map.createPane("basemap").style.zIndex = 250;
    L.geoJSON(DATA.basemap, {pane: "basemap", interactive: false, style: LAND}).addTo(map);
    L.control.scale().addTo(map);
  }
  legend = L.control({position: "bottomright"});
  legend.onAdd = () => L.DomUtil.create("div", "legend");
  legend.addTo(map);
}
function showLegend(colour, level, model, other) {   // DOM nodes and textContent only
  const box = legend.getContainer();
  box.replaceChildren();
  const row1 = document.createElement("div"), sw = document.createElement("span");
  sw.className = "swatch"; sw.style.border = "2px solid " + colour; sw.style.background = colour + "40";
  row1.append(sw, `${model}: region holding ${Math.round(level * 100)} % of the forecast events`);
  box.append(row1);
  if (other) {
    const row = document.createElement("div"), dash = document.createElement("span");
    dash.className = "dash";
    row.append(dash, `${other}: the same, for comparison`);
    box.append(row);
  }
  const row2 = document.createElement("div"), dot = document.createElement("span");
  dot.className = "dot";
  row2.append(dot, "observed events (most recent)");
  box.append(row2);
}
function draw() {
  const f = current();
  if (!f) return;
  if (f.frame !== frame) newMap(f.frame);
  if (overlay) overlay.remove();
  overlay = L.layerGroup().addTo(map);
  const level = sel("level").value;
  const region = f.contours[level];
  const colour = COLOURS[level] || "#d94801";
  const shape = L.geoJSON(region, {style: {fillColor: colour, color: colour, weight: 2, opacity: 0.9,
                                           fillOpacity: FILL_OPACITY, className: "risk-contour"}}).addTo(overlay);
  const o = sel("compare").value ? pick(sel("compare").value) : undefined;
  const other = o && o.frame === f.frame && o.contours[level] ? o : undefined;
  let b = shape.getBounds();
  if (other) {
    const dashed = L.geoJSON(other.contours[level], {style: {color: "#252525", weight: 2, opacity: 0.9,
        dashArray: "6 5", fill: false, className: "compare-contour"}, interactive: false}).addTo(overlay);
    b = b.extend(dashed.getBounds());
  }
  showLegend(colour, level, f.model, other && other.model);
  const points = L.geoJSON(f.observed, {pointToLayer: (feat, ll) => L.circleMarker(ll,
      {radius: 3, color: "#08519c", weight: 1, fillOpacity: 0.8, className: "observed-event"}),
    onEachFeature: (feat, layer) => {
      const div = document.createElement("div");   // textContent: data never becomes markup
      Object.entries(feat.properties).forEach(([k, v]) => { const p = document.createElement("div");
        p.textContent = k + ": " + v; div.appendChild(p); });
      layer.bindPopup(div);
    }}).addTo(overlay);
  b = b.extend(points.getBounds());
  if (f.view) map.fitBounds(f.view);   // the catalog's region
  else if (b.isValid()) map.fitBounds(b.pad(0.05));
  sel("info").textContent = `${f.region}, ${f.model}, next ${f.horizon} from ${f.forecast_time}: ` +
    `${f.expected_events.toFixed(1)} events expected; shaded: the region holding ${Math.round(level * 100)} % ` +
    `of the forecast events` + (other ? ` (dashed: ${other.model}, ${other.expected_events.toFixed(1)} ` +
    `events expected)` : "") + `; dots: the ${f.observed.features.length} most recent observed events`;
  document.body.dataset.shown = `${f.region}|${f.horizon}|${f.model}|${level}`;
  document.body.dataset.compare = other ? other.model : "";
}
function regionChanged() {
  const hs = DATA.forecasts.filter(f => f.region === sel("region").value).map(f => f.horizon);
  fill(sel("horizon"), [...new Set(hs)]);
  horizonChanged();
}
function horizonChanged() {   // only the models forecast for this region and horizon are offered
  const ms = DATA.forecasts.filter(f => f.region === sel("region").value && f.horizon === sel("horizon").value)
    .map(f => f.model);
  fill(sel("model"), ms);
  modelChanged();
}
function modelChanged() {
  const others = DATA.forecasts.filter(f => f.region === sel("region").value &&
    f.horizon === sel("horizon").value && f.model !== sel("model").value).map(f => f.model);
  fill(sel("compare"), ["", ...others], ["none", ...others]);
  sel("compare").disabled = others.length === 0;
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
sel("horizon").addEventListener("change", horizonChanged);
sel("model").addEventListener("change", modelChanged);
sel("compare").addEventListener("change", draw);
sel("level").addEventListener("change", draw);
regionChanged();
</script>
</body></html>
"""


_SCRIPT_JSON_ESCAPES = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026", 0x2028: "\\u2028",
                        0x2029: "\\u2029"}


def script_json(text: str) -> str:
    """JSON text made safe inside any ``<script>`` element: ``<``, ``>``, ``&``, U+2028, U+2029 as ``\\u``
    escapes. Outside strings JSON has none of these characters, so this only changes how strings are spelt."""
    return text.translate(_SCRIPT_JSON_ESCAPES)


def _text_properties(collection: dict) -> dict:
    """The observed events with properties as plain strings (shown with textContent: not escaped here)."""
    features = []
    for feature in collection.get("features", []):
        features.append({**feature, "properties": {str(k): str(v)
                                                   for k, v in (feature.get("properties") or {}).items()}})
    return {**collection, "features": features}


def _view(bounds) -> list | None:
    """[[south, west], [north, east]] as four numbers, or None (the map then fits the forecast's shapes)."""
    try:
        (s, w), (n, e) = bounds
        return [[float(s), float(w)], [float(n), float(e)]]
    except (TypeError, ValueError):
        return None


def riskmap_html(forecasts: list[dict]) -> str:
    """``forecasts``: dicts with ``region``, ``horizon``, ``model`` (the label the Model picker shows: one
    forecast per region, horizon and model), ``forecast_time``, ``expected_events``, ``frame`` ("geographic" or
    "pixel"), ``contours`` {level string: GeoJSON geometry or FeatureCollection}, ``observed`` (a GeoJSON
    FeatureCollection of points) and optionally ``view`` ([[south, west], [north, east]]: the catalog's region,
    where the map opens). Returns the page."""
    if not forecasts:
        raise ValueError("no forecasts to show: run `stforecast batch` first")
    clean = []
    for f in forecasts:
        clean.append({"region": str(f["region"]), "horizon": str(f["horizon"]),
                      "model": str(f.get("model") or "model"),
                      "forecast_time": str(f["forecast_time"]),
                      "expected_events": float(f["expected_events"]),
                      "frame": "pixel" if f.get("frame") == "pixel" else "geographic",
                      "contours": {str(k): v for k, v in f["contours"].items()},
                      "observed": _text_properties(f["observed"]),
                      "view": _view(f.get("view"))})
    # the bundled basemap is trusted and already GeoJSON: spliced in (first key, so first match) rather than
    # parsed and dumped again on every request
    data = json.dumps({"basemap": "__BASEMAP__", "forecasts": clean}, separators=(",", ":"))
    data = script_json(data.replace('"__BASEMAP__"', basemap_geojson(), 1))  # cannot end the <script> early
    levels = sorted({k for f in clean for k in f["contours"]}, key=float, reverse=True)
    colours = {lv: LEVEL_COLOURS[min(i, len(LEVEL_COLOURS) - 1)] for i, lv in enumerate(levels)}
    js, css = _leaflet_assets()
    page = PAGE.replace("__LEAFLET_CSS__", css).replace("__LEAFLET_JS__", js).replace("__SEA__", SEA_COLOUR)
    page = page.replace("__FILL_OPACITY__", json.dumps(FILL_OPACITY)).replace("__LAND__", json.dumps(LAND_STYLE))
    # data last, so nothing in it is ever rescanned for a placeholder
    return page.replace("__COLOURS__", script_json(json.dumps(colours))).replace("__DATA__", data)
