"""The napari layer of napari-xt: reader, sample data, layer builders (the only place that imports napari)."""
