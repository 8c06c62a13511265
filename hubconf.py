"""torch.hub entry point: ``torch.hub.load('<repo or local checkout>', 'radio_model', version=...)``."""

dependencies = ["torch", "timm", "einops"]

from openradio.formats.resolve import radio_model as _radio_model  # noqa: E402


def radio_model(version: str = "", progress: bool = True, adaptor_names=None, vitdet_window_size=None, **kwargs):
    """A RADIO model in eval mode: ``version`` is a released name ('radio_v2.5-b', 'radio_v2.5-l',
    ...) or a local checkpoint path; see ``openradio.radio_model``."""
    return _radio_model(
        version, progress=progress, adaptor_names=adaptor_names, vitdet_window_size=vitdet_window_size, **kwargs
    )
