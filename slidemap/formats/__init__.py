"""Files on disk: scene and chip folders, bundles, prediction.json and GDAL/OGR access, with validated sidecars."""
