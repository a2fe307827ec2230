"""QGIS layer styles (``.qml``), so a map opens in QGIS with its legend and colours.

QGIS loads ``name.qml`` beside ``name.tif`` as the layer's default style when the raster is added. Two
raster renderers are written, as QGIS itself saves them: *paletted* (one colour and label per class value:
masks, error maps) and *single-band pseudocolour* (an interpolated ramp between labelled values:
probabilities; QGIS applies the band's scale and offset first, so a uint8 probability with scale 1/254 is
styled in 0-1). One vector style, a *single symbol* simple fill (:func:`write_fill_style`), colours polygon
layers such as landslides; it holds only the symbology, so loading it onto a layer (Layer Properties ->
Symbology -> Style -> Load Style) changes nothing else of that layer.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from slidemap.formats.files import atomic_file

QGIS_VERSION = "3.28.0-Firenze"
Entry = tuple[float, tuple[int, int, int], int, str]
"""(value, (r, g, b), alpha 0-255, label) of one class or ramp stop."""


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _value(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _renderer(kind: str, **attrs: str) -> tuple[ET.Element, ET.Element]:
    root = ET.Element("qgis", {"version": QGIS_VERSION, "styleCategories": "AllStyleCategories"})
    pipe = ET.SubElement(root, "pipe")
    r = ET.SubElement(pipe, "rasterrenderer", {"type": kind, "band": "1", "opacity": "1", "alphaBand": "-1",
                                               "nodataColor": "", **attrs})
    ET.SubElement(r, "rasterTransparency")
    origin = ET.SubElement(r, "minMaxOrigin")
    for tag, text in (("limits", "None"), ("extent", "WholeRaster"), ("statAccuracy", "Estimated"),
                      ("cumulativeCutLower", "0.02"), ("cumulativeCutUpper", "0.98"), ("stdDevFactor", "2")):
        ET.SubElement(origin, tag).text = text
    return root, r


def _finish(root: ET.Element, path: Path) -> Path:
    pipe = root.find("pipe")
    assert pipe is not None  # _renderer made it
    ET.SubElement(pipe, "brightnesscontrast", {"brightness": "0", "contrast": "0", "gamma": "1"})
    ET.SubElement(pipe, "huesaturation", {"saturation": "0", "grayscaleMode": "0", "colorizeOn": "0",
                                          "colorizeRed": "255", "colorizeGreen": "128", "colorizeBlue": "128",
                                          "colorizeStrength": "100"})
    ET.SubElement(pipe, "rasterresampler", {"maxOversampling": "2"})
    ET.SubElement(root, "blendMode").text = "0"
    ET.indent(root)
    text = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(root, "unicode") + "\n"
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def style_path(raster: str | Path) -> Path:
    """Where QGIS looks for a raster's default style: the same name with ``.qml``."""
    return Path(raster).with_suffix(".qml")


def write_paletted_style(raster: str | Path, entries: Sequence[Entry]) -> Path:
    """A paletted style (one colour and legend label per class value) beside ``raster``."""
    root, r = _renderer("paletted")
    palette = ET.SubElement(r, "colorPalette")
    for value, rgb, alpha, label in entries:
        ET.SubElement(palette, "paletteEntry", {"value": _value(value), "color": _hex(rgb), "alpha": str(alpha),
                                                "label": label})
    return _finish(root, style_path(raster))


def write_ramp_style(raster: str | Path, stops: Sequence[Entry], label_precision: int = 2) -> Path:
    """A single-band pseudocolour style (colours interpolated between ``stops``) beside ``raster``."""
    lo, hi = _value(stops[0][0]), _value(stops[-1][0])
    root, r = _renderer("singlebandpseudocolor", classificationMin=lo, classificationMax=hi)
    shader = ET.SubElement(ET.SubElement(r, "rastershader"), "colorrampshader", {
        "colorRampType": "INTERPOLATED", "classificationMode": "1", "clip": "0", "minimumValue": lo,
        "maximumValue": hi, "labelPrecision": str(label_precision)})
    for value, rgb, alpha, label in stops:
        ET.SubElement(shader, "item", {"value": _value(value), "color": _hex(rgb), "alpha": str(alpha),
                                       "label": label})
    return _finish(root, style_path(raster))


def _rgba(rgb: tuple[int, int, int], alpha: int) -> str:
    return ",".join(str(int(v)) for v in (*rgb, alpha))


def write_fill_style(path: str | Path, fill: tuple[int, int, int], alpha: int,
                     outline: tuple[int, int, int], outline_mm: float = 0.4) -> Path:
    """A polygon style at ``path`` (``.qml``): one simple fill, ``fill`` at ``alpha`` (0-255), a solid outline."""
    root = ET.Element("qgis", {"version": QGIS_VERSION, "styleCategories": "Symbology"})
    renderer = ET.SubElement(root, "renderer-v2", {"type": "singleSymbol", "symbollevels": "0",
                                                   "enableorderby": "0", "forceraster": "0"})
    symbol = ET.SubElement(ET.SubElement(renderer, "symbols"), "symbol", {
        "type": "fill", "name": "0", "alpha": "1", "clip_to_extent": "1", "force_rhr": "0"})
    layer = ET.SubElement(symbol, "layer", {"class": "SimpleFill", "enabled": "1", "locked": "0", "pass": "0"})
    options = ET.SubElement(layer, "Option", {"type": "Map"})
    for name, value in (("color", _rgba(fill, alpha)), ("style", "solid"), ("outline_color", _rgba(outline, 255)),
                        ("outline_style", "solid"), ("outline_width", f"{outline_mm:g}"),
                        ("outline_width_unit", "MM"), ("joinstyle", "bevel")):
        ET.SubElement(options, "Option", {"type": "QString", "name": name, "value": value})
    ET.SubElement(renderer, "rotation")
    ET.SubElement(renderer, "sizescale")
    ET.SubElement(root, "blendMode").text = "0"
    ET.SubElement(root, "featureBlendMode").text = "0"
    ET.SubElement(root, "layerGeometryType").text = "2"  # polygons
    ET.indent(root)
    text = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(root, "unicode") + "\n"
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
