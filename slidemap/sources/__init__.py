"""Where scenes come from besides real imagery: the synthetic study area and Landslide4Sense patches."""
