"""Feature visualisation: robust-PCA colour pictures of RADIO's spatial features.

Notebook use::

    import openradio
    from openradio.inputs.imageio import load_image
    from openradio.viz import visualize_image, side_by_side

    model = openradio.radio_model("radio_v2.5-b")
    fi = visualize_image(model, load_image("cat.jpg"), resolution=768)
    side_by_side(fi.image, fi.rgb).image        # a PIL image

    from openradio.viz import visualize_video
    visualize_video(model, "in.mp4", "out.mp4", resolution=512, side_by_side=True)
"""

from openradio.viz.features import (
    FeatureImage,
    colour_maps,
    model_features,
    prepare_input,
    resolution_features,
    visualize_image,
)
from openradio.viz.pca import PCAStats, apply_pca, fit_pca_on_maps, get_robust_pca, pca_rgb, upsample_rgb
from openradio.viz.render import Cell, Panel, Rendered, compose, model_grid, resolution_strip, side_by_side
from openradio.viz.video import (
    Video,
    VideoInfo,
    VideoSummary,
    VideoWriter,
    iter_video_batches,
    key_frame_indices,
    probe_video,
    read_video_frames,
    visualize_video,
    write_video,
)

__all__ = [
    "PCAStats",
    "get_robust_pca",
    "apply_pca",
    "pca_rgb",
    "upsample_rgb",
    "fit_pca_on_maps",
    "Cell",
    "Panel",
    "Rendered",
    "compose",
    "side_by_side",
    "resolution_strip",
    "model_grid",
    "FeatureImage",
    "visualize_image",
    "model_features",
    "prepare_input",
    "resolution_features",
    "colour_maps",
    "Video",
    "VideoInfo",
    "VideoSummary",
    "VideoWriter",
    "probe_video",
    "read_video_frames",
    "iter_video_batches",
    "write_video",
    "key_frame_indices",
    "visualize_video",
]
