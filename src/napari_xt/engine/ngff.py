"""OME-Zarr 0.5 metadata of a run directory, built and validated with ``ome-zarr-models`` (the library that
defines the format), never as hand-written dicts.

A run directory is an OME-Zarr image: its root holds a small preview of the analysed image (so ome-zarr-py's
Reader and napari-ome-zarr find an image there), ``labels/segmentation`` the class labels as an image-label
with class names and colours, and ``probabilities`` the class probabilities as a second image. Every level
sits on level-0 physical coordinates: level k of a pyramid that halves the analysis level has scale
``analysis scale × 2**k`` and its pixel centres at the centres of 2**k × 2**k blocks of analysis pixels.
"""

from __future__ import annotations

from napari_xt.io.pyramid import ome_unit


def _axes(spec: dict, channel_axis: bool):
    from ome_zarr_models.v05.axes import Axis

    unit = ome_unit(spec.get("unit")) if spec.get("unit") else None
    space = [Axis(name=name, type="space", unit=unit) for name in ("y", "x")]
    return [Axis(name="c", type="channel"), *space] if channel_axis else space


def multiscale(name: str, spec: dict, factors: list[int], channel_axis: bool = False):
    """An ``ome_zarr_models`` Multiscale of levels ``0 .. len(factors)-1`` that are ``factors[k]`` times coarser
    than the analysis level, placed on level-0 physical coordinates."""
    from ome_zarr_models.v05.multiscales import Dataset, Multiscale

    scale, translate = spec["layer_scale"], spec["layer_translate"]
    lead_scale, lead_translate = ([1.0], [0.0]) if channel_axis else ([], [])
    datasets = []
    for k, factor in enumerate(factors):
        datasets.append(
            Dataset.build(
                path=str(k),
                scale=[*lead_scale, scale[0] * factor, scale[1] * factor],
                translation=[
                    *lead_translate,
                    translate[0] + (factor - 1) * scale[0] / 2,
                    translate[1] + (factor - 1) * scale[1] / 2,
                ],
            )
        )
    return Multiscale(axes=_axes(spec, channel_axis), datasets=datasets, name=name)


def _dump(model) -> dict:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def label_attrs(spec: dict, n_levels: int, rgba: list[list[int]]) -> dict:
    """``ome`` attributes of ``labels/segmentation``: multiscales plus ``image-label`` colours and the class
    names as properties (``class``)."""
    from ome_zarr_models.v05.image_label import ImageLabelAttrs, Label
    from ome_zarr_models.v05.image_label_types import Color

    classes = spec.get("segmentation_classes", [])
    label = Label(
        version="0.5",
        colors=[Color(label_value=i, rgba=rgba[i]) for i in range(len(classes))],
        properties=[{"label-value": i, "class": name} for i, name in enumerate(classes)],
        source={"image": "../../"},
    )
    factors = [2**k for k in range(n_levels)]
    attrs = ImageLabelAttrs(version="0.5", multiscales=[multiscale("segmentation", spec, factors)], image_label=label)
    return _dump(attrs)


def labels_group_attrs() -> dict:
    from ome_zarr_models.v05.labels import LabelsAttrs

    return _dump(LabelsAttrs(version="0.5", labels=["segmentation"]))


def image_attrs(name: str, spec: dict, factors: list[int], channel_names: list[str], window=None) -> dict:
    """``ome`` attributes of an image with a channel axis (the root preview, the probabilities), with ``omero``
    channel names (and a display ``window`` ``(start, end)`` when given) for viewers."""
    from ome_zarr_models.v05.image import ImageAttrs

    channels = []
    for channel in channel_names:
        entry = {"label": channel, "active": True}
        if window is not None:
            entry["window"] = {"start": window[0], "end": window[1], "min": window[0], "max": window[1]}
        channels.append(entry)
    attrs = ImageAttrs(
        version="0.5",
        multiscales=[multiscale(name, spec, factors, channel_axis=True)],
        omero={"channels": channels, "rdefs": {"model": "color" if len(channels) == 3 else "greyscale"}},
    )
    return _dump(attrs)
