"""Source readers: the registry of sources and views, one module per family (english, korean), the hub, file readers."""
