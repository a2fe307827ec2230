"""Grid operations on numpy arrays and open rasters: alignment, tiling, terrain, components, polygons, metrics."""
