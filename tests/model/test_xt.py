import pytest
import torch

from napari_xt.model import XTModel, create_model, list_presets, preset_config
from napari_xt.model.heads import decode_detections

LARGE = [name for name in list_presets() if not name.startswith(("test_", "xt_"))]  # xt_*: tests/model/test_official.py


@pytest.mark.parametrize("kind", ["none", "xl", "hyper", "mamba"])
def test_tiny_presets_give_every_output(kind):
    model = create_model(f"test_tiny_{kind}").eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 128, 192) * 255)
    assert out["segmentation"].shape == (2, 3, 128, 192)
    assert out["detection"]["heatmap"].shape == (2, 1, 32, 48)
    assert out["detection"]["classes"].shape == (2, 2, 32, 48)
    assert (out["detection"]["size"] >= 0).all()
    assert out["detection"]["offset"].shape == (2, 2, 32, 48) and out["detection"]["offset"].abs().max() <= 0.5
    assert out["classification"].shape == (2, 2)
    assert out["region_classes"].shape == (2, 2, 3, 3)  # per region (2 × 3 of 64²), per segmentation class


@pytest.mark.parametrize("name", LARGE)
def test_every_preset_builds_and_runs_one_region(name):
    config = preset_config(name)
    model = XTModel(config).eval()
    size = config.region_size
    with torch.no_grad():
        out = model(torch.rand(1, config.in_channels, size, size) * 255)
    assert out["segmentation"].shape == (1, len(config.heads.segmentation_classes), size, size)


@pytest.mark.parametrize("kind", ["none", "xl", "hyper", "mamba"])
def test_far_away_region_changes_a_prediction_only_with_context(kind):
    torch.manual_seed(0)
    model = create_model(f"test_tiny_{kind}", context_encoder={"window": 16, "memory": 16}).eval()
    if kind == "mamba":  # a trained-like memory: slow decay and a unit step, so 16 regions away is reachable
        with torch.no_grad():
            for layer in model.context_encoder.layers:
                layer.mixer.A_log.fill_(torch.log(torch.tensor(0.01)))
                layer.mixer.dt_proj.bias.fill_(0.5413)
    image = torch.rand(1, 3, 256, 256) * 255  # 4 × 4 regions of 64²
    changed = image.clone()
    changed[:, :, 192:, 192:] = torch.rand(1, 3, 64, 64) * 255  # the region farthest from (0, 0)
    with torch.no_grad():
        first, second = model(image), model(changed)
    corner = (first["segmentation"][..., :64, :64] - second["segmentation"][..., :64, :64]).abs().max()
    if kind == "none":
        assert corner == 0
    else:
        assert corner > 1e-4


def test_grad_ratio_stops_gradients_through_some_regions():
    torch.manual_seed(0)
    model = create_model("test_tiny_xl", context_encoder={"grad_ratio": 0.25}).train()
    calls = []
    original = model.encode
    model.encode = lambda regions: calls.append(torch.is_grad_enabled()) or original(regions)
    out = model(torch.rand(1, 3, 128, 128) * 255)  # 4 regions: 1 with gradient, 3 without
    out["segmentation"].mean().backward()
    assert calls == [True, False]
    assert model.region_encoder.backbone.stem_0.weight.grad is not None


def test_channel_and_normalisation_settings_follow_in_channels():
    config = preset_config("test_tiny_xl", in_channels=2)
    assert config.mean == [0.485 * 255, 0.456 * 255] and len(config.std) == 2
    model = XTModel(config).eval()
    with torch.no_grad():
        image = torch.rand(1, 2, 64, 64)
        image[..., :10, :10] = float("nan")  # SAR nodata must not poison the output
        assert torch.isfinite(model(image)["segmentation"]).all()


def test_config_refuses_what_cannot_build():
    with pytest.raises(ValueError, match="must divide width"):
        preset_config("test_tiny_xl", context_encoder={"heads": 3})
    with pytest.raises(ValueError, match="unknown XTConfig setting 'colour'"):
        preset_config("test_tiny_xl", colour="red")
    with pytest.raises(KeyError, match="unknown preset"):
        preset_config("no_such_preset")


def test_detection_decoding_finds_peaks_at_pixel_centres():
    heat = torch.full((1, 1, 16, 16), -10.0)
    heat[0, 0, 3, 5] = 4.0  # strong peak
    heat[0, 0, 3, 6] = 2.0  # its neighbour: not a local maximum
    heat[0, 0, 12, 1] = 1.0
    classes = torch.zeros(1, 2, 16, 16)
    classes[0, 1, 12, 1] = 5.0
    size = torch.full((1, 1, 16, 16), 7.0)
    found = decode_detections({"heatmap": heat, "classes": classes, "size": size}, stride=4, threshold=0.5)
    pairs = sorted(zip(found.y.tolist(), found.x.tolist(), found.label.tolist()))
    assert pairs == [(13.5, 21.5, 0), (49.5, 5.5, 1)]  # cell i covers pixels 4i..4i+3: centre 4i + 1.5
    assert torch.allclose(found.size, torch.tensor([7.0, 7.0]))
    assert found.score.max() == pytest.approx(torch.sigmoid(torch.tensor(4.0)).item())
    offset = torch.zeros(1, 2, 16, 16)
    offset[0, :, 3, 5] = torch.tensor([0.25, -0.5])  # in cells
    moved = decode_detections({"heatmap": heat, "classes": classes, "size": size, "offset": offset}, 4, 0.5)
    assert (13.5 + 1.0, 21.5 - 2.0) in list(zip(moved.y.tolist(), moved.x.tolist()))


@pytest.mark.parametrize("kind", ["xl", "mamba"])
def test_context_does_not_depend_on_the_order_regions_arrive_in(kind):
    torch.manual_seed(0)
    model = create_model(f"test_tiny_{kind}").eval()
    tokens = torch.randn(1, 20, 4, 32)
    positions = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(5), indexing="ij"), -1).reshape(1, 20, 2) + 7
    shuffle = torch.randperm(20)
    with torch.no_grad():
        context = model.contextualise(tokens, positions)
        shuffled = model.contextualise(tokens[:, shuffle], positions[:, shuffle])
    torch.testing.assert_close(shuffled, context[:, shuffle])
    raster = create_model(f"test_tiny_{kind}", context_encoder={"order": "raster"}).eval()
    raster.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(raster.contextualise(tokens, positions), context)  # the order is a real choice


def test_regions_share_nothing_beyond_their_neighbours_in_training():
    """Without context, a region's output depends on the regions up to two away alone (its neighbours' features
    in its window, and its neighbours' windows in the blend), in training too: the decoder's normalisation
    must not pool statistics over the batch (the regions of one crop), and a region three away changes
    nothing; decoded without blending, two away changes nothing either."""
    torch.manual_seed(0)
    model = create_model("test_tiny_none").train()
    image = torch.rand(1, 3, 64, 256) * 255  # 1 × 4 regions
    far, two_away = image.clone(), image.clone()
    far[:, :, :, 192:] = torch.rand(1, 3, 64, 64) * 255
    two_away[:, :, :, 128:192] = torch.rand(1, 3, 64, 64) * 255
    first, second, third = model(image), model(far), model(two_away)
    torch.testing.assert_close(first["segmentation"][..., :64], second["segmentation"][..., :64])
    assert not torch.allclose(first["segmentation"][..., 64:128], second["segmentation"][..., 64:128])
    # the blend reaches two regions away, and only the band next to the neighbour it takes a window from
    band = model.halo
    assert not torch.allclose(first["segmentation"][..., 64 - band : 64], third["segmentation"][..., 64 - band : 64])
    torch.testing.assert_close(first["segmentation"][..., : 64 - band], third["segmentation"][..., : 64 - band])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(image)["segmentation"], first["segmentation"].detach())  # train = eval
        model.config.heads.decoder_blend = False
        cropped, cropped_two_away = model(image), model(two_away)
    torch.testing.assert_close(cropped["segmentation"][..., :64], cropped_two_away["segmentation"][..., :64])


def test_context_field_is_continuous_across_region_borders():
    """The context added at every decoder stage is one field over the image: the windows of two neighbours
    give the same values where they overlap, so no step appears at the border between them."""
    from napari_xt.model.tokenization import context_neighbourhoods, neighbour_table

    torch.manual_seed(0)
    model = create_model("test_tiny_xl").eval()
    decoder, halo = model.decoder, model.halo
    tokens = torch.randn(2 * 3, 4, model.config.context_encoder.width)  # 2 × 3 regions
    grids = context_neighbourhoods(tokens, neighbour_table(2, 3))
    for stride in decoder.strides:
        m, h = model.config.region_size // stride, halo // stride
        zeros = torch.zeros(6, decoder.context_proj[str(stride)].out_channels, m + 2 * h, m + 2 * h)
        field = decoder._with_context(zeros, grids, stride, halo)
        left, right = field[0], field[1]  # regions (0, 0) and (0, 1)
        # columns of the image that both windows cover: left's window from m - h + ... , right's from -h
        torch.testing.assert_close(left[:, :, m : m + 2 * h], right[:, :, 0 : 2 * h], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        alone = model.decode([f[:1] for f in model.encode(torch.zeros(1, 3, 64, 64))], tokens[:1])
    assert alone["segmentation"].shape == (1, 3, 64, 64)  # a region alone (no halo) still decodes


def test_decoder_halo_must_fit_the_encoder_and_the_region():
    from napari_xt.model.xt import decoder_halo

    assert decoder_halo(None, 128, 32) == 32
    assert decoder_halo(None, 256, 32) == 32
    assert decoder_halo(None, 448, 32) == 64
    assert decoder_halo(None, 64, 32) == 0  # one deepest cell would be half the region
    assert decoder_halo(0, 256, 32) == 0
    for bad in (16, -32, 192):
        with pytest.raises(ValueError, match="decoder_halo"):
            decoder_halo(bad, 256, 32)


def test_window_interpolation_is_bilinear_upsampling_cut_to_the_window():
    import torch.nn.functional as F

    from napari_xt.model.heads import window_interpolation

    torch.manual_seed(0)
    grid = torch.randn(2, 5, 6, 6)
    for m, h in ((16, 8), (8, 2), (4, 1), (2, 0)):
        full = F.interpolate(grid, size=(3 * m, 3 * m), mode="bilinear")[..., m - h : 2 * m + h, m - h : 2 * m + h]
        weights = window_interpolation(6, 3 * m, m - h, m + 2 * h, grid.device, grid.dtype)
        torch.testing.assert_close(torch.einsum("ir,ncrs,js->ncij", weights, grid, weights), full)


def test_output_halos_are_the_cells_each_output_window_has_beyond_its_region():
    from napari_xt.model.tokenization import neighbour_table

    torch.manual_seed(0)
    model = create_model("test_tiny_xl").eval()
    stride, size = model.config.heads.detection_stride, model.config.region_size
    halos = model.output_halos()
    assert halos == {"segmentation": model.halo, "detection": model.halo // stride} and halos["detection"] > 0
    assert model.output_halos(0) == {"segmentation": 0, "detection": 0}
    features = model.encode(torch.rand(4, 3, size, size) * 255)
    with torch.no_grad():
        windows = model.decode_neighbourhoods(features, model.region_tokens(features), neighbour_table(2, 2), False)
    assert windows["segmentation"].shape[-1] == size + 2 * halos["segmentation"]
    for value in windows["detection"].values():
        assert value.shape[-1] == size // stride + 2 * halos["detection"]
